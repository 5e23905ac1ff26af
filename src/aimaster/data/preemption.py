"""Preemption: a worker told to leave (SIGTERM) gives its slices back at once and exits 0.

Spot VMs, Kubernetes evictions and Slurm preemption all say "leave now" with SIGTERM and kill the
process a little later. Waiting for the lease TTL to free the worker's slices would waste that TTL
on every slice it held; dying with a signal would count as a failure against
``--max-num-of-same-error``. So on SIGTERM a worker (:func:`preempt`, run by the signal handler):

1. stops renewing its lease: from now on, a write that finds the lease gone ends the thread
   making it (:class:`Preempted`) instead of taking a new lease, so the process can never claim or
   commit again under a fresh one;
2. gives back every claim and speculative copy held by itself or by its reader children (torch
   ``DataLoader`` workers claim under ``<worker>.<pid>``): each claim key is deleted and its slice
   put back to ``todo`` in one transaction that compares the claim's revision (a slice meanwhile
   committed, or taken by someone else, is left alone). The preempted attempt is not counted
   against ``--max-slice-attempts``: it did not fail;
3. marks itself preempted in its ``stats/<worker>`` record (which outlives it), so the supervisor
   relaunches it like a clean exit and does not count it as a failure, and ``status`` and the
   report say "preempted";
4. revokes its lease: everything else bound to it (registration, heartbeat, a claim taken by
   another thread in the meantime) goes at once; at exit, once the program (and its data loader)
   has unwound, slices a reader child claimed after the give-back are swept back to todo;
5. raises :class:`Preempted` (a ``SystemExit(0)``) in the main thread, which unwinds the program:
   staged outputs of uncommitted slices are discarded by their context managers.

An attempt that was not committed before the give-back can never commit after it: the commit
transaction compares the attempt's own claim key (see ``Dataset.commit``), which is gone, and no
new lease can be taken. A commit that won before the give-back is a commit like any other.

A program still running ``grace`` seconds later (stuck in native code, a non-daemon thread) is
ended with ``os._exit(0)``: its slices are already back.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from aimaster.data import keys
from aimaster.data.records import ClaimRecord
from aimaster.data.store import Compare, Op
from aimaster.errors import EtcdDataError

if TYPE_CHECKING:
    from aimaster.data.coordinator import Dataset
    from aimaster.data.session import WorkerSession

log = logging.getLogger(__name__)

PREEMPTED_FIELD = "preempted"  # in stats/<worker>: when the worker gave its slices back on SIGTERM


class Preempted(SystemExit):
    """The process is leaving on SIGTERM; exit status 0 (preemption is not a failure)."""

    def __init__(self) -> None:
        super().__init__(0)


def in_family(holder: Any, worker_id: str) -> bool:
    """Whether ``holder`` is ``worker_id`` or one of its reader children (``<worker>.<pid>``, nested)."""
    if not isinstance(holder, str):
        return False
    if holder == worker_id:
        return True
    rest = holder[len(worker_id) + 1:] if holder.startswith(worker_id + ".") else ""
    return bool(rest) and all(part.isdigit() for part in rest.split("."))


def preempt(session: WorkerSession) -> List[str]:
    """Give everything ``session``'s process family holds back now; returns ``"<ds>/<slice>"`` given back.

    Idempotent: a second SIGTERM while the first is handled does nothing more.
    """
    if session.preempted is not None:  # signal handlers run in the main thread only: no race here
        return []
    # First ($AIMASTER_PREEMPT_GRACE): what follows may wait on etcd, or on a lock another thread holds.
    watchdog(session.settings.preempt_grace)
    quiet_child_handler()
    with session.lock:
        session.preempted = time.time()
        session._closed.set()  # the keep-alive thread stops: the lease is about to be revoked
    given: List[str] = []
    for ds in list(session.datasets.values()):
        try:
            given += [f"{ds.ds_id}/{sid}" for sid in give_back_dataset(ds, session.worker_id)]
        except Exception as e:  # noqa: BLE001 - leaving anyway: the lease revocation frees the rest
            log.warning("aimaster: giving back the slices of dataset %s failed: %s", ds.ds_id, e)
    with session.lock:
        session.claims.clear()
    try:
        if session.registered:
            session.publish_stats()  # carries the preempted mark (stats_value)
    except Exception as e:  # noqa: BLE001 - the mark is advisory; the slices are what matters
        log.warning("aimaster: could not mark worker %s preempted: %s", session.worker_id, e)
    try:
        if session.lease is not None:
            session.store.revoke_lease(session.lease)
    except Exception as e:  # noqa: BLE001 - the TTL frees whatever the revocation did not
        log.warning("aimaster: revoking the lease of worker %s failed: %s", session.worker_id, e)
    print(f"aimaster: worker {session.worker_id} preempted (SIGTERM): gave back {len(given)} slice(s)",
          file=sys.stderr, flush=True)
    atexit.register(_sweep_lost, session)
    return given


def quiet_child_handler() -> None:
    """No SIGCHLD handler of the program's may interrupt the give-back or the unwinding.

    A SIGTERM to the worker's process group reaches its ``DataLoader`` workers too; they die, and
    PyTorch's SIGCHLD handler raises "DataLoader worker ... is killed by signal" in the main thread
    -- in the middle of the give-back, or replacing the clean ``SystemExit(0)`` with an error exit.
    The children are gone or going either way: their claims are given back here.
    """
    if threading.current_thread() is threading.main_thread():
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        except (ValueError, OSError):  # not the main interpreter, or no SIGCHLD on this platform
            pass


def _sweep_lost(session: WorkerSession) -> None:
    """At exit, after the program unwound: requeue slices left in no state.

    A reader child (a ``DataLoader`` worker) may claim one more slice between the give-back and its
    own exit, which then frees the claim with its lease; by the time our atexit handlers run the
    loader has shut its workers down, so what they held is lost, not held, and goes back to todo
    here rather than waiting for the master's sweep or a waiting peer.
    """
    for ds in list(session.datasets.values()):
        try:
            ds.requeue_lost()
        except Exception as e:  # noqa: BLE001 - the master and waiting workers sweep too
            log.warning("aimaster: requeueing lost slices of dataset %s failed: %s", ds.ds_id, e)


def give_back_dataset(ds: Dataset, worker_id: str) -> List[str]:
    """Delete the family's claims and copies of one dataset; put the primaries' slices back to todo.

    A primary goes back uncounted (:meth:`Dataset.give_back_uncounted`: the preempted attempt did not
    fail); when a copy of its slice still runs, or its records moved meanwhile, only the claim is
    dropped (a requeue sweep brings the slice back if the copy dies).
    """
    st = ds.store
    given = []
    for prefix in (ds.k.claim, ds.k.backup):
        for rel, raw, meta in list(st.iter_prefix_chunks(prefix)):
            try:
                record = ClaimRecord.from_json(raw, st.key(rel))
            except EtcdDataError:
                continue
            if not in_family(record.worker, worker_id):
                continue
            sid = rel[len(prefix):].split("/", 1)[0]
            if prefix == ds.k.claim and ds.give_back_uncounted(sid, rel, meta, record):
                given.append(sid)
                continue
            ok, _ = st.txn(f"give back {st.key(rel)}", [Compare.mod(rel) == meta.mod_revision], [Op.delete(rel)])
            if ok:
                given.append(sid)
    return given


def watchdog(grace: float) -> None:
    """End the process with status 0 if it has not exited ``grace`` seconds from now."""
    def expire() -> None:
        time.sleep(grace)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)

    threading.Thread(target=expire, name="aimaster-preempt-grace", daemon=True).start()


def preempted_at(stats: Optional[Dict[str, Any]]) -> Optional[float]:
    """When a worker's ``stats/<worker>`` record says it was preempted (None: it was not, or the
    value is not a time: a hand-written mark is not believed)."""
    if not isinstance(stats, dict):
        return None
    value = stats.get(PREEMPTED_FIELD)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def read_preempted(store, worker_id: str) -> Optional[float]:
    """Read a worker's preempted mark from etcd now (a supervisor reaping an exit cannot wait for
    the next round's refresh, which may predate the mark)."""
    try:
        return preempted_at(store.get_value(keys.stats(worker_id)))
    except EtcdDataError:
        return None
