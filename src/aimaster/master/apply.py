"""The loop's hands: observe a reaped worker for the supervisor, and carry out what it decided.

:mod:`aimaster.master.supervisor` decides from observations; this module builds those observations
from the master's fleet and watch, and applies the returned :mod:`aimaster.master.actions` through the
fleet and its launcher (:mod:`aimaster.master.launchers`) and the datasets in etcd. Every function
takes the :class:`~aimaster.master.master.Master` it acts for.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Optional

from aimaster.errors import EtcdDataError
from aimaster.master import actions as act
from aimaster.master import hopeless, preempted
from aimaster.master.job_state import JobState
from aimaster.master.last_claims import last_claimed_by
from aimaster.master.launcher import Worker
from aimaster.master.supervisor import JobFacts, Running, WorkerExit


def uptime(w: Worker) -> float:
    return (w.ended or time.time()) - w.started


def running(w: Worker) -> Running:
    return Running(w.worker_id, w.slot, w.pid, w.launched, w.stop_reason, w.adopted, w.local)


def observe_exit(m, w: Worker) -> WorkerExit:
    info = m.watch.get(w.worker_id)
    held = set(info.held) if info is not None else set()
    if not m.supervisor.crashes.off:
        # Nothing committed yet, so the hopeless-crash rule still judges: what the worker claimed
        # last counts as held even if no heartbeat of it holding the slice was ever seen.
        held |= set(last_claimed_by(m.store, m._monitor().dataset_ids(), m._dataset, w.worker_id, m._warn_once))
    return WorkerExit(w.worker_id, w.slot, w.pid, w.returncode, uptime(w), adopted=w.adopted,
                      stop_reason=w.stop_reason, preempted=preempted.seen(m.store, w),
                      oom=None if w.adopted else w.oom_killed(), held=tuple(sorted(held)),
                      stderr=w.stderr_tail)


def on_exit(m, w: Worker, complete: bool) -> Optional[int]:
    """A worker ended: record it, give its slices back, then relaunch it or fail the job (an exit code)."""
    entry: Dict[str, Any] = {"worker": w.worker_id, "slot": w.slot, "pid": w.pid, "exit": w.returncode,
                             "started": w.started, "ended": w.ended}
    m.history.append(entry)
    ours = {h.get("worker") for h in m.history} | {x.worker_id for x in m.fleet.all()}
    facts = JobFacts(complete, m.stop_requested.is_set(), hopeless.committed_by(m.watch, ours))
    outcome = m.supervisor.on_exit(observe_exit(m, w), facts)
    entry.update(outcome.entry)
    return apply(m, outcome.actions, w)


def apply(m, actions: Iterable[Any], worker: Optional[Worker] = None) -> Optional[int]:
    """Carry out ``actions`` in order (``worker``: the reaped worker they are about); an exit code ends the run."""
    for a in actions:
        if isinstance(a, act.Log):
            m._log(a.message)
        elif isinstance(a, act.GiveBack):
            give_back(m, worker, a.error)
        elif isinstance(a, act.RestartAll):
            epoch = m.sync.bump(a.cause)
            if a.announce:
                m._log(f"--job-execution-mode=Sync: restarting every worker of the job (restart {epoch})")
            m._restart_all(a.cause)
        elif isinstance(a, act.Relaunch):
            m.relaunches[a.cause] = m.relaunches.get(a.cause, 0) + 1
            if a.delay is None:
                m.fleet.schedule_relaunch(a.slot, a.cause, a.uptime)
            else:
                m.fleet.schedule(a.slot, a.delay, a.cause)
        elif isinstance(a, act.FailJob):
            m.fail_reason = a.reason
            m._stop_workers()
            return m._finish(JobState.FAILED)
        elif isinstance(a, act.KillWorker):
            if a.message:
                m._log(a.message)
            m.fleet.kill(m.fleet.find(a.worker_id), a.reason)
        elif isinstance(a, act.RecordSliceError):
            on_slice(m, a.ds_id, a.slice_id, lambda ds, a=a: ds.record_error(a.slice_id, a.worker_id, a.error))
        elif isinstance(a, act.TerminateWorker):
            m.fleet.terminate(m.fleet.find(a.worker_id), a.reason, grace=a.grace)
        elif isinstance(a, act.ReplaceWorker):
            slow, used = m.fleet.find(a.worker_id), m.fleet.spares_used
            new = m.warm.replace(slow) if m.warm is not None else m.fleet.replace(slow)
            m.relaunches["slow"] = m.relaunches.get("slow", 0) + 1
            m.replaced.append(a.worker_id)
            how = f"warm spare (pid {new.pid}) took its place as {new.worker_id}" if m.fleet.spares_used > used \
                else f"started {new.worker_id} to replace it"
            m._log(f"worker {a.worker_id} is slow ({a.pace:.2f}s per slice, its peers' median is {a.typical:.2f}s): "
                   + how)
        elif isinstance(a, act.CancelPending):
            m._log(f"all slices are committed: {a.count} pending worker start(s) cancelled")
            m.fleet.pending.clear()
        else:
            raise TypeError(f"not a supervisor action: {a!r:.80}")
    return None


def give_back(m, w: Worker, error: Optional[str]) -> None:
    """Record why a dead worker failed against the slices it held, then return them to the pool now.

    Its lease would free them after the TTL anyway; revoking it here (the process is gone) saves
    that wait, which is most of a crashed worker's cost to the job.
    """
    info = m.watch.get(w.worker_id)
    held = info.held if info is not None else []
    if error:
        for ref in held:
            ds_id, sid = ref.split("/", 1)
            on_slice(m, ds_id, sid, lambda ds, sid=sid: ds.record_error(sid, w.worker_id, error))
    if not w.adopted:
        w.kill_leftovers()  # whatever the worker forked (DataLoader workers) goes with it
    gone = not w.adopted or w.local
    lease = info.record.get("lease") if info is not None and info.registered else None
    if gone and isinstance(lease, int):
        try:
            m.store.revoke_lease(lease)
        except Exception:  # noqa: BLE001 - already expired, or etcd away: the TTL frees it anyway
            pass
    give_back_held(m, held)


def give_back_held(m, held: List[str]) -> None:
    for ref in held:
        ds_id, sid = ref.split("/", 1)
        on_slice(m, ds_id, sid, lambda ds, sid=sid: ds.requeue(sid))


def on_slice(m, ds_id: str, sid: str, action) -> None:
    """Record an error against a slice or hand it back: a dead worker's slices come back by their
    lease anyway, so a malformed record of that slice is warned about, never fatal here."""
    try:
        ds = m._dataset(ds_id)
        if ds is not None:
            action(ds)
    except EtcdDataError as e:
        m._warn_once(f"slice {ds_id}/{sid}: {e}")


def requeue_lost(m, view) -> None:
    """Give lost slices back (a sweep, about every 2 s; dead workers' slices are normally given back at once)."""
    if time.monotonic() - m._last_requeue < 2.0:
        return
    m._last_requeue = time.monotonic()
    for d in view.datasets:
        if d.complete or d.todo > 0:
            continue
        try:
            ds = m._dataset(d.ds_id)
            if ds is not None:
                ds.requeue_lost()
        except EtcdDataError as e:  # a malformed slice record; waiting workers sweep too
            m._warn_once(f"requeueing lost slices of dataset {d.ds_id}: {e}")
