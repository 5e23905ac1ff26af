"""A worker's presence in a job: an etcd lease kept alive by a background thread.

Everything a worker holds (its registration, its heartbeat, its slice claims) is bound to this
lease, so when the process dies, etcd deletes those keys after ``ttl`` seconds and the slices become
free again without anybody having to notice the death. A lease that expired anyway (the process was
stopped with SIGSTOP, or etcd was down longer than the TTL) is replaced by a new one; the slices
claimed under the old lease may have been handed out again, which is safe because only one attempt
can commit.

On SIGTERM (a preemption) the session gives everything back at once and never takes a lease again
(see :mod:`aimaster.data.preemption`): ``datasets`` lists what this process coordinates, and
``preempted`` says when it left.

The session also keeps what the control plane needs to see about this worker: the attempts it holds
(so an uncaught exception can hand them back with its error, and the master knows which slices a
dead worker had), a heartbeat (so a hung worker can be told from a busy one) and its counters.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, TypeVar

import grpc

from aimaster.data import keys
from aimaster.data.store import Store
from aimaster.settings import JobSettings

if TYPE_CHECKING:
    from aimaster.data.coordinator import Claim

log = logging.getLogger(__name__)

RECENT = 8  # slice durations kept per worker for the control plane's robust statistics
BEAT_EVERY = 1.0  # at most one stand-alone heartbeat write per second (claims and commits carry one anyway)
# Commits carry the worker's counters (stats/<worker>) at most this often: a worker committing
# hundreds of slices a second would otherwise rewrite them in every commit, a tenth of its cost in
# etcd. The first commit always carries them (the master's hopeless rule asks "committed anything?"),
# and counters left unwritten go out with the next heartbeat a wait writes, or at close.
STATS_EVERY = 0.5
T = TypeVar("T")


def lease_not_found(error: BaseException) -> bool:
    """etcd's answer to a write bound to a lease that has expired (or was revoked) meanwhile."""
    return isinstance(error, grpc.RpcError) and hasattr(error, "code") \
        and error.code() == grpc.StatusCode.NOT_FOUND and "lease" in str(error.details() or "")


class WorkerSession:
    """One per process (see :func:`aimaster.data.runtime.current_session`)."""

    def __init__(self, store: Store, worker_id: str, ttl: Optional[int] = None, register: bool = True,
                 settings: Optional[JobSettings] = None):
        # The job's settings as this process was launched with them (its environment), read once,
        # at start-up: a bad value fails here, never later in a signal handler (preemption).
        self.settings = settings if settings is not None else JobSettings.from_env()
        self.store = store
        self.worker_id = worker_id
        self.ttl = max(2, int(ttl if ttl is not None else self.settings.lease_ttl))
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.started = time.time()
        self.registered = register  # False: a reader child or a tool, with no registration nor heartbeat
        # The session's one lock, re-entrant: it guards the lease (renewed by the keep-alive thread or
        # by whichever thread met it expired) and the attempts held (tracked from the DataLoader
        # prefetch thread, the background committer, the heartbeat), and the frameworks layer holds it
        # across a claim or a commit (aimaster.frameworks.claims.session_lock).
        self.lock = threading.RLock()
        self._closed = threading.Event()
        self._on_new_lease: List[Callable[[], None]] = []  # run after a lease is replaced (join_setup)
        self.lease = None
        self.lease_generation = 0
        # Counters published with each commit (stats/<worker>) for status, throughput and the report.
        self.slices_committed = 0
        self.items_committed = 0
        self.first_commit: Optional[float] = None
        self.recent: Deque[float] = collections.deque(maxlen=RECENT)
        self.busy = 0.0
        self.copies_started = 0
        self.copies_won = 0
        self.copies_lost = 0
        self.primaries_lost = 0
        self.last_commit_latency: Optional[float] = None  # seconds the previous commit took (histograms)
        self._stats_at: Optional[float] = None  # when stats/<worker> was last written (monotonic)
        self.stats_dirty = False  # counters changed since they were last written
        self.standalone = False
        # Attempts this process holds, by (dataset, slice, attempt): handed back if the program dies
        # of an exception, and listed in the heartbeat so the master knows what a dead worker had.
        self.claims: Dict[Tuple[str, str, str], Claim] = {}
        self.state = "working"
        self._last_beat = 0.0
        # Datasets this process coordinates, by id: on SIGTERM their claims are given back
        # (aimaster.data.preemption); set when it happened, and no lease is ever taken again.
        self.datasets: Dict[str, Any] = {}
        self.preempted: Optional[float] = None
        # Who launched us (a master's slot or an `aimaster join`): a restarted master adopts the
        # workers its predecessor launched instead of starting as many again.
        own = os.environ.get("AIMASTER_WORKER_ID") == worker_id
        self.slot = _int_env("AIMASTER_WORKER_SLOT") if own else None
        self.incarnation = _int_env("AIMASTER_WORKER_INCARNATION") if own else None
        self.launcher = os.environ.get("AIMASTER_LAUNCHER") if own else None
        self._new_lease()
        self._thread = threading.Thread(target=self._keepalive, name="aimaster-lease", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # A fresh lease after expiry; registration follows it so the master sees us again.
    def _new_lease(self) -> None:
        with self.lock:
            self.lease = self.store.grant_lease(self.ttl)
            self.lease_generation += 1
            if self.registered:
                record: Dict[str, Any] = {"host": self.host, "pid": self.pid, "started": self.started,
                                          "ttl": self.ttl, "lease": self.lease.id}
                if self.slot is not None:
                    record.update(slot=self.slot, incarnation=self.incarnation or 0, launcher=self.launcher)
                self.store.put(keys.worker(self.worker_id), record, lease=self.lease)
        for callback in list(self._on_new_lease):
            callback()

    def renew_lease(self, generation: int) -> None:
        """Replace the lease, unless another thread already did since ``generation``."""
        with self.lock:
            if self.preempted is not None:
                # Leaving on SIGTERM, slices given back: a new lease would let this process claim
                # or commit again. The thread that wanted one ends instead.
                from aimaster.data.preemption import Preempted

                raise Preempted()
            if self.lease_generation == generation:
                log.warning("aimaster: worker %s lost its etcd lease; taking a new one", self.worker_id)
                self._new_lease()

    def leased(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(lease)`` (a write bound to our lease), renewing the lease once if it had expired.

        A worker stopped for longer than its TTL (SIGSTOP, a long GC or swap storm, etcd down) comes
        back with a dead lease; its next claim must not fail the program for that.
        """
        generation, lease = self.lease_generation, self.lease
        try:
            return fn(lease)
        except grpc.RpcError as e:
            if not lease_not_found(e):
                raise
        self.renew_lease(generation)
        return fn(self.lease)

    def on_new_lease(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` whenever the lease is replaced: keys bound to the old one are gone (an
        ``aimaster join`` supervisor announces itself again)."""
        self._on_new_lease.append(callback)

    def _keepalive(self) -> None:
        interval = self.ttl / 3.0
        while not self._closed.wait(interval):
            try:
                generation = self.lease_generation
                remaining = self.store.refresh_lease(self.lease)
                if remaining <= 0:
                    self.renew_lease(generation)
            except Exception as e:  # noqa: BLE001 - the keep-alive thread must never die
                log.warning("aimaster: lease keep-alive failed (%s); retrying", e)

    # ------------------------------------------------------------------ what the master sees
    def track(self, claim: Claim) -> None:
        with self.lock:
            self.claims[(claim.dataset.ds_id, claim.slice_id, claim.attempt)] = claim

    def untrack(self, claim: Claim) -> None:
        with self.lock:
            self.claims.pop((claim.dataset.ds_id, claim.slice_id, claim.attempt), None)

    def beat_value(self, state: Optional[str] = None, also: Sequence[str] = ()) -> Dict[str, Any]:
        """The heartbeat: ``held`` lists every attempt tracked, plus ``also`` (claims being taken)."""
        if state is not None:
            self.state = state
        self._last_beat = time.monotonic()
        with self.lock:
            held = sorted({f"{ds}/{sid}" for ds, sid, _ in self.claims} | set(also))
        return {"t": time.time(), "state": self.state, "held": held, "slices": self.slices_committed}

    def beat(self, state: Optional[str] = None, force: bool = False) -> None:
        """Publish a heartbeat (throttled): the master's hang detection watches these."""
        if self.preempted is not None:
            return  # leaving: the lease (and with it the heartbeat) is gone or about to be
        changed = state is not None and state != self.state
        if not (force or changed) and time.monotonic() - self._last_beat < BEAT_EVERY:
            return
        if self.registered:
            value = self.beat_value(state)
            self.leased(lambda lease: self.store.put(keys.beat(self.worker_id), value, lease=lease))
        if self.stats_dirty:
            self.publish_stats()

    def stats_due(self) -> bool:
        """Whether the next commit should carry the counters (see STATS_EVERY)."""
        return self.slices_committed == 0 or self._stats_at is None \
            or time.monotonic() - self._stats_at >= STATS_EVERY

    def stats_written(self) -> None:
        self._stats_at = time.monotonic()
        self.stats_dirty = False

    def stats_value(self) -> Dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "slices": self.slices_committed,
                "items": self.items_committed, "first": self.first_commit, "last": time.time(),
                "started": self.started, "recent": [round(x, 4) for x in self.recent],
                "busy": round(self.busy, 3), "copies": self.copies_started, "copies_won": self.copies_won,
                "copies_lost": self.copies_lost, "primaries_lost": self.primaries_lost,
                **({"preempted": self.preempted} if self.preempted is not None else {})}

    def publish_stats(self, once: bool = False) -> None:
        """Write the counters now; ``once``: a single try (a process leaving, see :meth:`close`)."""
        put = self.store.put_once if once else self.store.put
        put(keys.stats(self.worker_id), self.stats_value())
        self.stats_written()

    def close(self) -> None:
        """Release the lease now, so our claims come back at once instead of after the TTL."""
        if self._closed.is_set() or os.getpid() != self.pid:
            return
        self._closed.set()
        if self.stats_dirty:
            try:  # one try: a process leaving must not wait out the retries on an etcd that is gone
                self.publish_stats(once=True)
            except Exception as e:  # noqa: BLE001 - closing must not fail; the commits themselves are safe
                log.warning("aimaster: could not write worker %s's last counters (%s)", self.worker_id, e)
        if self.lease is not None:
            self.store.revoke_lease(self.lease)
        self.store.close()


def _int_env(name: str) -> Optional[int]:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None
