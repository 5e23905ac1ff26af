"""The reading side: claim slices lazily, load the next one while the current one is consumed.

:class:`SliceFeed` yields ``(claim, content)`` pairs in the process that reads (a ``DataLoader``
worker, the main process, TensorFlow's generator thread). A background thread claims the next slice
and loads its content (the file list, the table rows) so that neither the etcd round trip nor the
read sits between two slices; at most ``prefetch`` slices are claimed beyond the one being consumed.

Near the end nothing may be hoarded: once a worker finds no free slice (the dataset's ``drained``
marker, :meth:`~aimaster.data.coordinator.Dataset.drained`), the slices queued here and not yet
handed out go straight back to todo, uncounted, for whichever worker is free first, and from then on
the feed claims only when its reader asks. When nothing is free it starts a speculative copy of a
slice that another worker has been on for too long, as ``get_next_slice()`` does.

The feed never waits for slices that other workers hold: when nothing is free it ends. Waiting
there would deadlock, because the reader may still hold items of its last slice in a half-built batch
that only reaches the consumer, and so gets committed, once the reader's stream ends. The consumer
(:mod:`aimaster.frameworks.stream`) waits instead, and starts the pipeline again if slices come back
or a copy is worth starting.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple

import aimaster.frameworks.claims as claims_module
from aimaster.data.coordinator import Claim, Dataset
from aimaster.errors import ConfigError
from aimaster.frameworks.claims import SliceSpec
from aimaster.frameworks.lent import LentClaims

log = logging.getLogger(__name__)

Loader = Callable[[Dataset, Claim], Any]
_END = object()
_JOIN_S = 10.0
CHECK_S = 0.5  # how often a feed with slices queued asks whether any worker found none free
LENT_AT_END_S = 2.0  # how long a feed that found nothing free waits for a lent claim the queue counts


class UnusableSlice(Exception):
    """Raised by a loader: this slice cannot be read here (its message says why); give it back with
    that error, so that it fails for good after its attempts, and go on with the next one."""


def load_file_slice(dataset: Dataset, claim: Claim) -> List[str]:
    """The loader of file datasets: the slice's input paths, checked as ``get_next_slice()`` does."""
    from aimaster.io.file_plan import slice_inputs

    paths, problem = slice_inputs(dataset, claim.index)
    if problem is not None:
        raise UnusableSlice(problem)
    claim.items = len(paths)
    return paths


def check_tracked(spec: SliceSpec) -> None:
    """Refuse to claim for a pipeline nobody commits: its slices would come back forever."""
    from aimaster.frameworks.stream import is_tracked

    if not (spec.tracked or is_tracked(spec.ds_id)):
        raise ConfigError(
            f"slices of dataset {spec.ds_id} are read but nothing commits them: iterate the data through "
            "dataset.track(loader) (PyTorch) or aimaster.frameworks.track(client, dataset) (TensorFlow)")


def check_prefetch(prefetch: int) -> int:
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0:
        raise ConfigError(f"prefetch_slices must be a non-negative integer, got {prefetch!r}")
    return prefetch


class SliceFeed:
    """Iterate ``(claim, content)`` over free slices; ``load(dataset, claim)`` makes the content."""

    def __init__(self, spec: SliceSpec, load: Loader, prefetch: int = 1):
        self.spec = spec
        self.load = load
        self.prefetch = check_prefetch(prefetch)

    def __iter__(self) -> Iterator[Tuple[Claim, Any]]:
        check_tracked(self.spec)
        dataset = claims_module.reading_dataset(self.spec)
        queue = _Queue(self.prefetch)
        # In the consuming process, the consumer's commits claim this feed's next slices (claims.bank).
        queue.banks = os.getpid() == self.spec.owner_pid
        if queue.banks:
            claims_module.start_feeding(dataset.ds_id, self.prefetch + 1)
        thread = threading.Thread(target=self._fill, args=(dataset, queue), name="aimaster-slice-prefetch",
                                  daemon=True)
        thread.start()
        try:
            while True:
                entry = queue.take()
                if entry is _END:
                    return
                if isinstance(entry, BaseException):
                    raise entry
                yield entry
        finally:
            queue.stop()
            thread.join(_JOIN_S)
            self._stop_banking(dataset, queue)
            for claim, _ in queue.take_back():
                claims_module.give_back_unstarted_claim(dataset, claim)  # never handed out: uncounted

    @staticmethod
    def _stop_banking(dataset: Dataset, queue: _Queue) -> None:
        """No more claims from the consumer's commits; those banked go back (never started)."""
        if queue.banks:
            queue.banks = False
            claims_module.stop_feeding(dataset.ds_id, queue.depth)
            claims_module.give_back_banked(dataset.ds_id)

    def _lent(self) -> Optional[LentClaims]:
        """The claims the consumer's commits lend to this reading process (a DataLoader worker)."""
        lent = self.spec.lent
        usable = isinstance(lent, LentClaims) and lent.usable and os.getpid() != self.spec.owner_pid
        return lent if usable else None

    def _fill(self, dataset: Dataset, queue: _Queue) -> None:
        last_check = 0.0
        lent = self._lent()
        try:
            while True:
                wanted = queue.wait_for_demand(CHECK_S)
                if wanted is None:
                    return  # stopped
                if not wanted:
                    held = queue.queued() or (queue.banks and claims_module.banked(dataset.ds_id)) \
                        or (lent is not None and lent.waiting())
                    if held and time.monotonic() - last_check >= CHECK_S:
                        last_check = time.monotonic()
                        with claims_module.session_lock(dataset.session):
                            drained = dataset.drained()
                        if drained:
                            self._stop_banking(dataset, queue)
                            for claim in lent.stop(dataset) if lent is not None else ():
                                log.debug("aimaster: no slice is free; giving back lent slice %s", claim.slice_id)
                                claims_module.give_back_unstarted_claim(dataset, claim)
                            for claim, _ in queue.take_back(on_demand=True):
                                log.debug("aimaster: no slice is free; giving back slice %s claimed ahead",
                                          claim.slice_id)
                                claims_module.give_back_unstarted_claim(dataset, claim)
                    continue
                with claims_module.session_lock(dataset.session):
                    claim = claims_module.take_banked(dataset.ds_id) if queue.banks else None
                    if claim is None and lent is not None and not queue.on_demand:
                        claim = lent.take(dataset)
                    claim = _handed(claim) if claim is not None else dataset.try_claim()
                    if claim is None and lent is not None and lent.waiting():
                        # Nothing free, but a claim lent to us is on its way through the queue
                        # (a loaded machine delays the consumer's feeder thread): ending now would
                        # leave it until the pass ends, and the consumer would start another pass.
                        claim = _handed(lent.take(dataset, wait=LENT_AT_END_S))
                    if claim is None:
                        claim = dataset.try_copy()
                if claim is None:
                    queue.put(_END)
                    return
                claims_module.remember(claim)
                try:
                    content = self.load(dataset, claim)
                except UnusableSlice as e:
                    log.warning("aimaster: slice %s: %s; giving it back", claim.slice_id, e)
                    _release(dataset, claim, str(e))
                    continue
                except BaseException as e:
                    _release(dataset, claim, f"{type(e).__name__}: {e}")
                    queue.put(e)
                    return
                if not queue.put((claim, content)):
                    claims_module.give_back_unstarted_claim(dataset, claim)  # stopped meanwhile
                    return
        except BaseException as e:  # noqa: BLE001 - surfaced in the reading thread
            queue.put(e)


class _Queue:
    """The slices one feed claimed ahead, between its claiming thread and its reader.

    The reader takes entries in order; the claiming thread adds one whenever fewer than
    ``prefetch + 1`` are out (queued, or the one being read: the reader coming back for more means
    that one is fully read), or, once ``on_demand`` is set, only when the reader waits with nothing
    queued. :meth:`take_back` empties the queue: whatever the reader did not take is the caller's.
    """

    def __init__(self, prefetch: int):
        self._cv = threading.Condition()
        self._entries: collections.deque = collections.deque()
        self._slots = self.depth = prefetch + 1
        self._reading = False  # the reader holds an entry it has not come back from
        self._waiting = False  # the reader waits for an entry
        self._stopped = False
        self.on_demand = False
        self.banks = False  # the consumer's commits claim for this feed (same process)

    def take(self) -> Any:
        with self._cv:
            self._reading = False
            self._waiting = True
            self._cv.notify_all()
            while not self._entries:
                self._cv.wait()
            self._waiting = False
            entry = self._entries.popleft()
            self._reading = isinstance(entry, tuple)
            return entry

    def put(self, entry: Any) -> bool:
        """Queue an entry; False (not queued) once stopped, except for the end marker and errors."""
        with self._cv:
            if self._stopped and isinstance(entry, tuple):
                return False
            self._entries.append(entry)
            self._cv.notify_all()
            return True

    def _demand(self) -> bool:
        if self.on_demand:
            return self._waiting and not self._entries
        return len(self._entries) + (1 if self._reading else 0) < self._slots

    def wait_for_demand(self, timeout: float) -> Optional[bool]:
        """True when an entry is wanted now, False after ``timeout`` without demand, None once stopped."""
        with self._cv:
            if not self._stopped and not self._demand():
                self._cv.wait(timeout)
            if self._stopped:
                return None
            return self._demand()

    def queued(self) -> int:
        with self._cv:
            return sum(1 for e in self._entries if isinstance(e, tuple))

    def take_back(self, on_demand: bool = False) -> List[Tuple[Claim, Any]]:
        """Every queued slice, no longer queued; ``on_demand``: claim only when asked from now on."""
        with self._cv:
            if on_demand:
                self.on_demand = True
            taken = [e for e in self._entries if isinstance(e, tuple)]
            kept = [e for e in self._entries if not isinstance(e, tuple)]
            self._entries.clear()
            self._entries.extend(kept)
            self._cv.notify_all()
            return taken

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()


def _handed(claim: Optional[Claim]) -> Optional[Claim]:
    """A claim this reader did not take itself (banked, or lent by the consumer's commit): its
    duration runs from now, when the reader starts it, as that of a claim from ``try_claim``."""
    if claim is not None:
        claim.claimed_at = time.time()
    return claim


def _release(dataset: Dataset, claim: Claim, error: Optional[str] = None) -> None:
    claims_module.forget(claim)
    try:
        with claims_module.session_lock(dataset.session):
            dataset.release(claim, error)
    except Exception as e:  # noqa: BLE001 - the lease returns it anyway
        log.warning("aimaster: could not give slice %s back (%s); it returns when the lease expires",
                    claim.slice_id, e)
