"""The consuming side: see every batch, commit each slice once it is consumed and written.

:class:`SliceStream` wraps the user's batch iterable (a ``DataLoader``, a ``tf.data.Dataset``) and
reads each batch's slice tags (:mod:`aimaster.frameworks.tags`). A slice is committed when

1. every input unit of it (file, row) has been seen in a batch, and
2. the user has come back for the next batch (or the loop ended): the loop body, which wrote the
   slice's outputs, is done with the batch that held its last item.

The commit itself (closing and fsyncing the outputs, the etcd transaction) then runs in a background
thread, in order, so the loop never waits for it; the stream waits for all of them before it ends.

So the at-least-once window is the batch in hand plus what the pipeline prefetched: a crash there
sends those slices back to be processed again, and their staged outputs are never published. Leaving
the loop early (``break``, an exception) gives back every slice not yet committed, including those
whose last batch was in hand, since nothing says their outputs were written.

The readers end their stream when no slice is free; then the stream waits, as ``get_next_slice()``
does, until the job is complete or a slice comes back (a dead worker's), and iterates again.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import aimaster.frameworks.claims as claims_module
from aimaster.data.coordinator import Claim
from aimaster.errors import ConfigError
from aimaster.frameworks.bindings import Binding
from aimaster.frameworks.lent import LentClaims, lending_for
from aimaster.frameworks.tags import Tag, tags_of

log = logging.getLogger(__name__)

_tracked: Dict[str, int] = collections.Counter()
_tracked_lock = threading.Lock()


def is_tracked(ds_id: str) -> bool:
    """Whether a stream of this process is consuming the dataset (readers refuse to claim otherwise)."""
    return _tracked.get(ds_id, 0) > 0


@dataclass
class _Held:
    claim: Claim
    owned: bool  # the claim key is bound to our lease (ours from the start, or adopted)
    total: int
    seen: int = 0


class SliceStream:
    """Iterate ``batches``; commit each slice when consumed and written. See the module docstring."""

    def __init__(self, binding: Binding, batches: Iterable, on_slice_done: Optional[Callable[[str], None]] = None):
        if getattr(batches, "drop_last", False):
            raise ConfigError("a DataLoader with drop_last=True drops items, so their slices could never "
                              "be committed: use drop_last=False")
        spec = getattr(getattr(batches, "dataset", None), "_spec", None)
        self._lent: Optional[LentClaims] = None
        if isinstance(spec, claims_module.SliceSpec):
            spec.tracked = True  # a DataLoader over one of our datasets: its workers may claim now
            if spec.owner_pid == os.getpid():
                # Its workers read (num_workers > 0): our commits claim for them. The readers of
                # this loader find the queue in the spec they are started with.
                self._lent = lending_for(batches, spec.lent)
                if self._lent is not None:
                    spec.lent = self._lent
        self._binding = binding
        self._dataset = binding.dataset
        self._lock = claims_module.session_lock(binding.dataset.session)
        self._batches = batches
        self._on_slice_done = on_slice_done
        self._held: Dict[Tuple[str, str], _Held] = {}
        self._current: List[Tuple[_Held, int]] = []
        self._committer = _Committer(binding, self._lock, self._count, self._lent)
        self.committed = 0  # slices whose commit this stream won
        self.lost = 0  # slices another attempt had committed first (their outputs were discarded)

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[Any]:
        ds_id = self._dataset.ds_id
        with _tracked_lock:
            _tracked[ds_id] += 1
        finished = False
        try:
            while True:
                if self._lent is not None:
                    self._lent.begin_pass()
                # Held in a local, so that a loop left early (an exception, a break) reaches the
                # finally below, which tells the readers that nothing more is adopted, before the
                # loader's iterator goes and shuts its workers down (they wait for that word).
                batches = iter(self._batches)
                for batch in batches:
                    self._settle()
                    self._observe(batch)
                    yield batch
                self._settle()
                self._current = []
                self._committer.drain()
                claims_module.give_back_banked(ds_id)
                self._give_back_lent()
                self._give_back_all("the pipeline ended before all of its items reached the consumer")
                if not self._more_coming():
                    finished = True
                    return
        finally:
            with _tracked_lock:
                _tracked[ds_id] -= 1
            try:
                # Slices settled before the loop ended were consumed and written: their commits stand.
                self._committer.drain()
            finally:
                claims_module.give_back_banked(ds_id)
                self._give_back_lent()
                if not finished:
                    self._give_back_all("the consuming loop ended early")

    # ------------------------------------------------------------------ per batch
    @property
    def slice_ids(self) -> List[str]:
        """The slice id of each item of the batch in hand, in order."""
        return [held.claim.slice_id for held, _ in self._current]

    def output(self, slice_id: str, name: Optional[str] = None, suffix: str = "", mode: str = "w", **kwargs: Any):
        """The output file of a slice in flight, opened on first use and published when it commits.

        Files: through the client's atomic output helper (``open_slice_output``); the same handle is
        returned for the same slice and name until the slice commits, which closes it.
        """
        return self._binding.output(self._find(slice_id).claim, name, suffix, mode, **kwargs)

    def write(self, values: Any, col_indices: Optional[Sequence[int]] = None, slice_id: Optional[str] = None) -> None:
        """Write output rows for the batch in hand (tables); staged per slice, committed with it.

        Rows go to the batch's slice when it has one; when the batch spans several slices they are
        attributed in item order, one output row per input row or one per item.
        Anything else would mix slices, so it is an error: pass ``slice_id`` and write per slice.
        """
        from aimaster.io.tables.rows import normalize_rows

        rows = list(normalize_rows(values))
        if slice_id is not None:
            self._binding.write(self._find(slice_id).claim, rows, col_indices)
            return
        runs = self._runs()
        if not runs:
            raise ConfigError("stream.write() before the first batch: there is no slice to write rows for")
        if len(runs) == 1:
            self._binding.write(runs[0][0].claim, rows, col_indices)
            return
        sizes = item_sizes(len(rows), [u for _, u in self._current], [h.claim.slice_id for h, _ in runs])
        per_slice: Dict[int, List[Any]] = {id(h): [] for h, _ in runs}
        start = 0
        for (held, _), size in zip(self._current, sizes):
            per_slice[id(held)].extend(rows[start:start + size])
            start += size
        for held, _ in runs:
            if per_slice[id(held)]:
                self._binding.write(held.claim, per_slice[id(held)], col_indices)

    # ------------------------------------------------------------------ bookkeeping
    def _runs(self) -> List[Tuple[_Held, int]]:
        """The batch in hand as (slice, item count) runs, in first-appearance order."""
        order: Dict[int, List[Any]] = {}
        for held, _ in self._current:
            entry = order.setdefault(id(held), [held, 0])
            entry[1] += 1
        return [(h, n) for h, n in order.values()]

    def _find(self, slice_id: str) -> _Held:
        for held, _ in self._current:
            if held.claim.slice_id == slice_id:
                return held
        for held in self._held.values():
            if held.claim.slice_id == slice_id:
                return held
        raise ConfigError(f"slice {slice_id!r} is not in flight in this stream (already committed, or never read)")

    def _observe(self, batch: Any) -> None:
        tags = tags_of(batch)
        if tags is None:
            raise ConfigError(
                "a batch carries no slice ids, so its slices cannot be committed: keep the items' 'slice_id' "
                "(and 'claim') keys, or the (values, slice_id) structure, through your transforms")
        self._current = []
        beat = getattr(self._dataset.session, "beat", None)
        if callable(beat):
            with self._lock:
                beat()
        for tag in tags:
            held = self._hold(tag)
            held.seen += tag[2]
            if held.seen > held.total:
                raise RuntimeError(f"slice {held.claim.slice_id} delivered {held.seen} units but has {held.total}")
            self._current.append((held, tag[2]))

    def _hold(self, tag: Tag) -> _Held:
        sid, token, _ = tag
        if token is None:
            local = claims_module.local_claim(self._dataset.ds_id, sid)
            if local is None:
                held = next((h for (s, _), h in self._held.items() if s == sid), None)
                if held is None:
                    raise ConfigError(f"slice {sid!r} was not read in this process and its items carry no claim")
                return held
            token = claims_module.token_of(local)
        number, attempt = claims_module.parse_token(token)
        held = self._held.get((sid, attempt))
        if held is None:
            index = self._dataset.slice_index(sid)
            lo, hi = self._dataset.item_range(index)
            with self._lock:
                claim, owned = claims_module.adopt(self._dataset, sid, token, hi - lo)
            if self._lent is not None:
                self._lent.reached(attempt)
            self._binding.hold(claim)
            held = self._held[(sid, attempt)] = _Held(claim, owned, hi - lo)
        return held

    def _settle(self) -> None:
        """Commit every slice that is fully consumed (the caller is done with the batch in hand)."""
        self._committer.check()
        for key, held in list(self._held.items()):
            if held.seen < held.total:
                continue
            if self._on_slice_done is not None:
                self._on_slice_done(held.claim.slice_id)
            del self._held[key]
            self._committer.submit(held.claim, self._binding.seal(held.claim))

    def _count(self, won: bool) -> None:
        if won:
            self.committed += 1
        else:
            self.lost += 1

    def _give_back_lent(self) -> None:
        """The claims our commits lent to the readers and that never reached us go back, uncounted
        (those a reader gave back itself are found gone); the heartbeat then stops listing them."""
        if self._lent is None:
            return
        taken = self._lent.take_back_all()
        for claim in taken:
            claims_module.give_back_unstarted_claim(self._dataset, claim)
        if taken:
            beat = getattr(self._dataset.session, "beat", None)
            try:
                with self._lock:
                    beat(force=True)
            except Exception:  # noqa: BLE001 - a heartbeat is advisory; the next one lists the same
                pass

    def _give_back_all(self, reason: str) -> None:
        for key, held in list(self._held.items()):
            del self._held[key]
            try:
                with self._lock:
                    self._binding.release(held.claim, f"{reason} (slice {held.claim.slice_id})" if held.owned else None)
            except Exception as e:  # noqa: BLE001 - the lease gives it back anyway
                log.warning("aimaster: could not give slice %s back (%s)", held.claim.slice_id, e)

    def _more_coming(self, poll: float = 0.05) -> bool:
        """Wait until a slice is free or worth a speculative copy (True: the readers will take it) or
        none can come to us any more (False), like ``next_claim``: every slice is done, or the rest
        are held by workers that have finished them."""
        ds = self._dataset
        delay, last_reconcile = poll, 0.0
        while True:
            if ds.finished():
                ds.finalize_unless_mastered()
                return False
            if ds.store.count(ds.k.todo) > 0:
                return True
            with self._lock:
                if ds.copy_worth_taking():
                    return True
                ds.session.beat("waiting")  # peers see that what we hold is finished
            if ds.nothing_left_for_me():
                return False
            if time.monotonic() - last_reconcile > 1.0:
                last_reconcile = time.monotonic()
                if ds.requeue_lost():
                    continue
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


class _Committer:
    """Commits settled slices in a background thread, in order, so that the etcd transaction and
    the outputs' fsync never sit in the consumer's loop. An error is raised in the consumer at its
    next batch (or at the end); the slices not committed after it come back with the lease."""

    def __init__(self, binding: Binding, lock: threading.RLock, count: Callable[[bool], None],
                 lent: Optional[LentClaims] = None):
        self._binding = binding
        self._lock = lock
        self._count = count
        self._lent = lent
        self._queue: queue.Queue = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def submit(self, claim: Claim, sealed: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="aimaster-commit", daemon=True)
            self._thread.start()
        self._queue.put((claim, sealed))

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            if self._error is not None:
                continue  # after a failure, later slices are left to come back with the lease
            claim, sealed = entry
            try:
                with self._lock:
                    # Readers take the next slice from this very transaction: those in this process
                    # from the bank, DataLoader workers as a lent claim (frameworks.lent).
                    ahead = claims_module.wants_claim_ahead(claim.dataset.ds_id)
                    lend = not ahead and self._lent is not None and self._lent.wants()
                    self._count(self._binding.commit(claim, sealed, claim_next=ahead or lend))
                    if ahead or lend:
                        claimed = self._binding.dataset.take_claimed_ahead()
                        if claimed is not None:
                            if ahead:
                                claims_module.bank(claimed)
                            else:
                                self._lent.lend(claimed)
            except BaseException as e:  # noqa: BLE001 - raised in the consumer by check()
                self._error = e

    def check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def drain(self) -> None:
        """Wait until every submitted slice is committed; raise the first error."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self.check()


def item_sizes(n_rows: int, units: Sequence[int], slice_ids: Sequence[str]) -> List[int]:
    """How many of ``n_rows`` output rows belong to each item of a batch spanning ``slice_ids``.

    The rows are taken to be in item order, one per input row (``units[i]`` for item ``i``) or one
    per item; any other count cannot be attributed without mixing slices, so it is an error.
    """
    if n_rows == sum(units):
        return list(units)
    if n_rows == len(units):
        return [1] * len(units)
    raise ConfigError(
        f"this batch spans slices {', '.join(slice_ids)} ({len(units)} items, {sum(units)} input rows) and "
        f"{n_rows} rows were written: they cannot be attributed to slices. Write one row per input row or "
        "per item, or call write(rows, slice_id=...) for each slice")


def binding_for(client, filter_value: Any = None) -> Binding:
    """The client's own binding (see :mod:`aimaster.frameworks.bindings`): this layer knows no client class."""
    make = getattr(client, "framework_binding", None)
    if not callable(make):
        raise ConfigError(f"expected a PosixFileClient or MaxComputeTableClient, got {type(client).__name__}")
    return make(filter_value)


def track(client, batches: Iterable, on_slice_done: Optional[Callable[[str], None]] = None,
          filter_value: Any = None) -> SliceStream:
    """Consume ``batches`` of ``client``'s dataset, committing each slice once consumed and written.

    ``on_slice_done(slice_id)`` runs just before a slice commits (flush or close what you keep per
    slice). ``filter_value``: output rows containing it are dropped (tables, like the table writer).
    """
    return SliceStream(binding_for(client, filter_value), batches, on_slice_done)
