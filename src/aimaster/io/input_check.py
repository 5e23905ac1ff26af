"""A resumed job refuses an input that changed since it was planned: checked once per run.

A plan is a snapshot of the input. Within one run that is the point (files appearing while the job
runs are not part of it), but a job id run again after a crash, a Ctrl-C or a failure reuses its old
plan: files added meanwhile would never be processed and files removed would fail, and the job
could end Succeeded without ever having seen the new ones. So the first process of a new run that
adopts a plan made earlier lists the input again and compares it with the plan's fingerprint (see
:mod:`aimaster.io.file_plan`); on any difference every process of the run refuses, with one line
saying what changed. Any way of "processing the change" would renumber slices already committed.

*Once per run, by one process.* The verdict is stored at ``ds/<ds>/inputcheck`` with the run it is
valid for; whoever holds ``ds/<ds>/inputchecker`` (create-if-absent, bound to its lease) lists,
everybody else of the run waits for the verdict. The planner writes the verdict of its own listing
before it writes the plan, so a peer that adopts a plan made moments ago never lists anything.

*What a run is.* Under a master (``aimaster run``, and the workers it launches, relaunches or that
``aimaster join`` adds), the run is the master's tenure: its record at the job's ``master`` key
(host, pid, start time), which a new ``aimaster run`` of the job replaces before launching a worker.
Without a master (workers started by hand on a shared etcd, or standalone), a run lasts as long as
some process that checked is alive: the verdict is bound to that process's lease, so once the last
one is gone, the next process checks again. (A standalone program's etcd is private and new, so its
plan is always its own.)
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, Dict, List, Optional

from aimaster.data import keys
from aimaster.data.session import WorkerSession
from aimaster.data.store import Compare, Op
from aimaster.errors import EtcdDataError, JobError
from aimaster.io import file_plan, listing

EXAMPLES = 3


def run_marker(session: WorkerSession) -> Optional[str]:
    """The identity of the current run: the master's tenure, or None without a master."""
    store = session.store
    value = store.get_value(keys.MASTER)
    if value is None:
        return None
    host, pid, started = value.get("host"), value.get("pid"), value.get("started")
    if not (isinstance(host, str) and isinstance(pid, int) and not isinstance(pid, bool)
            and isinstance(started, (int, float)) and not isinstance(started, bool)):
        raise EtcdDataError(f"value at {store.key(keys.MASTER)} is not a master record: {value!r:.160}")
    return f"master {host}:{pid}:{started!r}"


def _keys(ds_base: str):
    return ds_base + "inputcheck", ds_base + "inputchecker"


def _plan_id(plan: Dict[str, Any]) -> Any:
    return plan.get("created")


def vouch(session: WorkerSession, ds_base: str) -> None:
    """The planner's verdict on its own listing, written before its plan so no peer ever sees the
    plan without one. It names no plan (there is none yet); :func:`_valid` accepts that."""
    _put_verdict(session, ds_base, {"run": run_marker(session), "plan": None, "ok": True})


def _put_verdict(session: WorkerSession, ds_base: str, verdict: Dict[str, Any]) -> None:
    st = session.store
    key = _keys(ds_base)[0]
    if verdict["run"] is None:  # no master: valid while this process lives
        verdict = dict(verdict, host=socket.gethostname(), pid=os.getpid())
        session.leased(lambda lease: st.put(key, verdict, lease=lease))
    else:
        st.put(key, verdict)


def _verdict(session: WorkerSession, ds_base: str) -> Optional[Dict[str, Any]]:
    st = session.store
    key = _keys(ds_base)[0]
    value = st.get_value(key)
    if value is None:
        return None
    if not ((value.get("run") is None or isinstance(value.get("run"), str))
            and isinstance(value.get("ok"), bool)
            and (value["ok"] or isinstance(value.get("error"), str))):
        raise EtcdDataError(f"value at {st.key(key)} is not an input check verdict: {value!r:.160}")
    return value


def _valid(verdict: Optional[Dict[str, Any]], plan: Dict[str, Any], marker: Optional[str]) -> bool:
    if verdict is None or verdict.get("run") != marker:
        return False
    if marker is None and _dead_here(verdict):
        return False  # its process was killed moments ago: its lease outlives it by up to the TTL
    # The planner's own verdict predates its plan (plan None); any other is about one plan.
    return verdict.get("plan") in (None, _plan_id(plan))


def ensure_unchanged(session: WorkerSession, ds_base: str, plan: Dict[str, Any], job_id: str,
                     list_now: Callable[[], List[str]], planned_names: Callable[[], List[str]],
                     poll: float = 0.2) -> None:
    """Return if this run's input is the one ``plan`` was made from; raise :class:`JobError` if not.

    ``list_now`` lists the input as it is (a worker lists it from its own configuration; a process
    without one can use :func:`aimaster.io.file_plan.relist`). ``planned_names`` reads the plan's
    file list back, only when the input differs (to say how) or for a plan older than fingerprints.
    """
    st = session.store
    lock_key = _keys(ds_base)[1]
    where = st.key(ds_base + "plan")
    while True:
        marker = run_marker(session)
        verdict = _verdict(session, ds_base)
        if _valid(verdict, plan, marker):
            if not verdict["ok"]:
                raise JobError(verdict["error"])
            return
        ok, _ = session.leased(lambda lease: st.txn(
            "take input checker", [Compare.version(lock_key) == 0],
            [Op.put(lock_key, {"w": session.worker_id}, lease=lease)]))
        if not ok:
            session.beat("waiting")  # another process of this run is listing; its lease ends it if it dies
            time.sleep(poll)
            continue
        try:
            verdict = _verdict(session, ds_base)
            if not _valid(verdict, plan, marker):
                error = difference(plan, list_now(), planned_names, job_id, where)
                verdict = {"run": marker, "plan": _plan_id(plan), "ok": error is None}
                if error is not None:
                    verdict["error"] = error
                _put_verdict(session, ds_base, verdict)
        finally:
            st.delete(lock_key)
        if not verdict["ok"]:
            raise JobError(verdict["error"])
        return


def _dead_here(verdict: Dict[str, Any]) -> bool:
    pid = verdict.get("pid")
    if verdict.get("host") != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool) \
            or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def difference(plan: Dict[str, Any], names: List[str], planned_names: Callable[[], List[str]], job_id: str,
               where: str) -> Optional[str]:
    """None if ``names`` (a fresh listing) is the planned input, else the one line saying how not."""
    now = file_plan.fingerprint(names)
    planned = file_plan.planned_fingerprint(plan["source"], where)
    if planned is not None and planned == now:
        return None
    old = planned_names()
    if len(old) != plan["num_items"]:
        raise EtcdDataError(f"the file list of the plan at {where} has {len(old)} names; the plan says "
                            f"{plan['num_items']}")
    if planned is None and file_plan.fingerprint(old) == now:
        return None
    before, after = set(old), set(names)
    added = sorted(after - before)
    removed = sorted(before - after)
    if added or removed:
        what = f"{_count(added, 'added')}, {_count(removed, 'removed')}"
    else:
        what = "the same files, in another order"
    return (f"input of job {job_id} changed since it was planned: {what}; use a new --job-id "
            "(or restore the input as it was)")


def _count(names: List[str], verb: str) -> str:
    text = f"{len(names)} file{'' if len(names) == 1 else 's'} {verb}"
    if names:
        text += " (e.g. " + ", ".join(listing.shown(n) for n in names[:EXAMPLES]) + ")"
    return text


def ensure_unchanged_from_plan(session: WorkerSession, dataset, job_id: str) -> bool:
    """:func:`ensure_unchanged` for a process without the program's configuration (the master).

    The input is listed again as the plan's own ``source.listing`` says. Returns False (checks
    nothing) for a dataset that is not a file dataset or whose plan predates that record.
    """
    plan = dataset.plan if dataset.plan is not None else dataset.load_plan()
    if plan is None or plan.get("kind") != "files" or "listing" not in plan["source"]:
        return False
    where = session.store.key(dataset.k.plan)

    def planned_names() -> List[str]:
        return [name for index in range(dataset.num_slices) for name in dataset.items(index)]

    ensure_unchanged(session, dataset.k.base, plan, job_id, lambda: file_plan.relist(plan["source"], where),
                     planned_names)
    return True
