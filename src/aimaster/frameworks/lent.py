"""Claims a consumer's commits make for its ``DataLoader`` worker processes: one round trip a slice.

A reading process that claims its own slices costs three round trips a slice besides the commit's
read: its claim transaction, the consumer's read of that claim and its adoption transaction (which
re-binds the claim key to the consumer's lease, see :mod:`aimaster.frameworks.claims`). Instead, the
consumer's commit of a slice claims the next free one in the same transaction
(``Dataset.commit(claim_next=True)``), bound to the consumer's own lease from the start, and *lends*
it to the readers through a queue they inherited with the dataset. A reader takes a lent claim
before claiming itself; its items reach the consumer, which finds the claim as its own: nothing to
adopt. In steady state a slice is then one transaction, as with ``num_workers=0``.

No more is lent than one claim per reader at a time, so at most that many slices wait here beyond
what the readers claim ahead themselves. Nothing is hoarded at the tail: a reader that learns that
no slice is free (the dataset's ``drained`` marker) stops the lending for good and gives back what
waits in the queue, uncounted; when the pipeline ends the consumer gives back whatever was lent and
never reached it (still queued, or taken by a reader that died before handing it on).

Only a worker process started with the queue may use it (``multiprocessing`` shares queues by
inheritance): anywhere else the dataset pickles without it and its readers claim for themselves.
"""

from __future__ import annotations

import logging
import multiprocessing.context
import os
import queue as queue_module
import threading
from typing import Any, Dict, List, Optional

from aimaster.data.coordinator import Claim, Dataset
from aimaster.data.records import ClaimRecord
from aimaster.errors import EtcdDataError

log = logging.getLogger(__name__)

# A lent claim just put may still be on its way through the queue's pipe: how long to wait for one
# the queue counts, when taking one (another reader may take it first) and when emptying the queue.
_TAKE_WAIT_S = 0.05
_DRAIN_WAIT_S = 0.2


class LentClaims:
    """The queue of claims lent to the reading processes of one dataset's ``DataLoader``."""

    def __init__(self, context: Any, readers: int):
        self.readers = max(1, int(readers))
        self.start_method = context.get_start_method()
        self.owner_pid = os.getpid()
        self._queue = context.Queue()
        self._stopped = context.Event()  # set by a reader that found no slice free: lend no more
        self._ended = context.Event()  # set by the consumer when a pipeline ends: it adopts no more
        self._lent: Dict[str, Claim] = {}  # the consumer's side: attempt -> claim not yet back
        self._lock = threading.Lock()

    def __getstate__(self) -> Dict[str, Any]:
        # A queue crosses only into a process being started (a DataLoader worker); pickled anywhere
        # else (by a user, to a spawned pool) the copy has none, and its readers claim themselves.
        spawning = multiprocessing.context.get_spawning_popen() is not None
        return {"readers": self.readers, "start_method": self.start_method, "owner_pid": self.owner_pid,
                "_queue": self._queue if spawning else None, "_stopped": self._stopped if spawning else None,
                "_ended": self._ended if spawning else None}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lent = {}
        self._lock = threading.Lock()

    @property
    def usable(self) -> bool:
        return self._queue is not None and self._stopped is not None and self._ended is not None

    # ------------------------------------------------------------------ the consumer's side
    def wants(self) -> bool:
        """Whether the next commit should claim a slice to lend: lending is on and fewer than one
        claim per reader waits in the queue."""
        if not self.usable or os.getpid() != self.owner_pid or self._stopped.is_set():
            return False
        try:
            return self._queue.qsize() < self.readers
        except NotImplementedError:  # no sem_getvalue (macOS): readers claim themselves
            return False

    def lend(self, claim: Claim) -> None:
        """Put a claim the consumer's commit took (bound to its lease) where a reader takes it."""
        from aimaster.frameworks.claims import remember

        record = claim.record.to_json() if claim.record is not None else None
        with self._lock:
            self._lent[claim.attempt] = claim
        remember(claim)  # its items find it as the consumer's own: nothing to adopt
        self._queue.put((claim.slice_id, claim.attempt, claim.attempt_no, record))

    def begin_pass(self) -> None:
        """A pipeline over the loader starts: its readers' claims will be adopted again."""
        if self.usable:
            self._ended.clear()

    def reached(self, attempt: str) -> None:
        """A lent claim's items reached the consumer: the stream holds it now."""
        with self._lock:
            self._lent.pop(attempt, None)

    def take_back_all(self) -> List[Claim]:
        """At the end of a pipeline: every lent claim that never reached the consumer, no longer lent
        (the caller gives them back). The queue is emptied first, so no reader of a later pipeline
        gets one of them. Readers still waiting for their last claims to be adopted stop waiting."""
        if self.usable:
            self._ended.set()
        self.drain_queue()
        with self._lock:
            taken, self._lent = list(self._lent.values()), {}
        return taken

    # ------------------------------------------------------------------ the readers' side
    def consumer_ended(self) -> bool:
        """Whether the consumer's pipeline has ended, so that nothing more of ours will be adopted."""
        return self.usable and self._ended.is_set()

    def take(self, dataset: Dataset, wait: float = _TAKE_WAIT_S) -> Optional[Claim]:
        """A lent claim, as a claim of ``dataset`` (the reader's view), or None if none waits
        (one the queue counts is waited for up to ``wait`` seconds)."""
        if not self.usable or self._stopped.is_set():
            return None
        entry = self._get(wait)
        return None if entry is None else _claim_of(dataset, entry)

    def waiting(self) -> int:
        """Entries the queue counts (0 where it cannot count them: macOS has no sem_getvalue)."""
        if not self.usable:
            return 0
        try:
            return self._queue.qsize()
        except NotImplementedError:
            return 0

    def stop(self, dataset: Dataset) -> List[Claim]:
        """No slice is free: lend no more, and return what waits in the queue (the caller gives it
        back, uncounted)."""
        if not self.usable:
            return []
        self._stopped.set()
        return [c for c in (_claim_of(dataset, e) for e in self.drain_queue()) if c is not None]

    def drain_queue(self) -> List[Any]:
        entries: List[Any] = []
        while self.usable:
            entry = self._get(_DRAIN_WAIT_S)
            if entry is None:
                break
            entries.append(entry)
        return entries

    def _get(self, wait: float) -> Any:
        """One entry, or None. An entry counted in the queue may still be on its way through the
        pipe (the putting process's feeder thread writes it): that one is waited for, briefly."""
        try:
            return self._queue.get(timeout=wait) if self.waiting() else self._queue.get_nowait()
        except queue_module.Empty:
            return None


def _claim_of(dataset: Dataset, entry: Any) -> Optional[Claim]:
    """The claim a queue entry describes; None (warned) for one that is not a lent claim."""
    try:
        sid, attempt, attempt_no, record = entry
        claim_record = ClaimRecord.from_json(record, f"lent claim of slice {sid}")
        if not isinstance(sid, str) or not isinstance(attempt_no, int) or claim_record.attempt != attempt:
            raise ValueError("fields disagree")
        index = dataset.slice_index(sid)
    except (EtcdDataError, TypeError, ValueError) as e:
        log.warning("aimaster: ignoring a malformed lent claim %r (%s)", entry, e)
        return None
    return Claim(dataset=dataset, slice_id=sid, index=index, attempt=attempt, attempt_no=attempt_no,
                 lease_generation=dataset.session.lease_generation, record=claim_record)


def lending_for(loader: Any, current: Optional[LentClaims]) -> Optional[LentClaims]:
    """The lending queue for a ``DataLoader`` whose workers read (None for ``num_workers=0``): the
    dataset's ``current`` one if it fits, else a new one, made in the loader's own multiprocessing
    context (a queue must be of the start method of the processes it reaches)."""
    readers = getattr(loader, "num_workers", 0)
    if not isinstance(readers, int) or isinstance(readers, bool) or readers <= 0:
        return None
    import multiprocessing

    try:
        context = getattr(loader, "multiprocessing_context", None) or multiprocessing.get_context()
        if current is not None and current.usable and current.owner_pid == os.getpid() \
                and (current.start_method, current.readers) == (context.get_start_method(), readers):
            return current
        return LentClaims(context, readers)
    except (OSError, ValueError, AttributeError) as e:  # no semaphores here: readers claim themselves
        log.debug("aimaster: cannot lend claims to DataLoader workers (%s)", e)
        return None
