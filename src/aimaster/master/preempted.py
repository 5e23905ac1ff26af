"""A supervisor's view of a preempted worker: not a failure, relaunched like a clean exit.

A worker that got SIGTERM from outside (a spot VM reclaimed, a Kubernetes eviction, Slurm
preemption, ``kill PID``) gives its slices back at once, marks itself preempted in
``stats/<worker>`` and exits 0 (:mod:`aimaster.data.preemption`). Its supervisor (the master, or
the ``aimaster join`` that launched it) reads that mark when it reaps the exit -- from etcd, now:
the round's refresh may predate the mark -- and then

* does not classify the exit as a failure: nothing reaches ``--fault-tolerant-policy``,
  ``--max-num-of-same-error`` or the relaunch back-off;
* relaunches the slot at once if the data is not done (in Sync mode, with the job's other
  workers: the group lost a member), counted under ``relaunches["preempted"]``;
* records ``"preempted": true`` in the worker's exit in the report.

A worker the supervisor stopped itself (``stop_reason``: hang, slow, moot, sync, stopped) is the
supervisor's own doing and is handled as such, whatever the worker marked.
"""

from __future__ import annotations

from typing import Any, Dict

from aimaster.data.preemption import read_preempted
from aimaster.master.launcher import Worker

CAUSE = "preempted"
RELAUNCH_DELAY = 0.25


def handle(master, w: Worker, entry: Dict[str, Any], complete: bool) -> bool:
    """True if ``w``'s exit was a preemption (and is now dealt with)."""
    if w.stop_reason or w.slot < 0:
        return False
    try:
        when = read_preempted(master.store, w.worker_id)
    except Exception:  # noqa: BLE001 - etcd away: judge the exit by its status, as before
        when = None
    if when is None:
        return False
    entry["preempted"] = True
    master._log(f"worker {w.worker_id} (pid {w.pid}) was preempted (SIGTERM): its slices went back at once"
                + ("" if complete else "; relaunching it"))
    master._give_back(w, None)
    if complete:
        return True
    master.relaunches[CAUSE] = master.relaunches.get(CAUSE, 0) + 1
    if master.sync is not None:
        master.sync.bump(CAUSE)
        master._restart_all(CAUSE)
    master.fleet.schedule(w.slot, RELAUNCH_DELAY, CAUSE)
    return True
