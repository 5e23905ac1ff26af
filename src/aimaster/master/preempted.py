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

from aimaster.data.preemption import read_preempted
from aimaster.master.launcher import Worker

CAUSE = "preempted"
RELAUNCH_DELAY = 0.25


def seen(store, w: Worker) -> bool:
    """Whether reaped worker ``w`` marked itself preempted before exiting (read from etcd now: the
    round's refresh may predate the mark). What follows is decided by
    :meth:`aimaster.master.supervisor.Supervisor.on_exit`."""
    if w.stop_reason or w.slot < 0:
        return False
    try:
        return read_preempted(store, w.worker_id) is not None
    except Exception:  # noqa: BLE001 - etcd away: judge the exit by its status, as before
        return False
