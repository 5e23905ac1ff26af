"""Control of a job from anywhere that reaches its etcd: stop it, list the jobs an etcd holds.

Stopping is a request, not a signal: ``aimaster stop`` writes ``control`` under the job's prefix and
the master, which polls it, stops its workers cleanly (SIGTERM, then SIGKILL after the grace period)
and marks the job Stopped. Nothing is lost: a stopped job resumes with the same job id.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from aimaster.data import keys
from aimaster.data.connect import connect
from aimaster.data.store import ROOT, EtcdConfig, Store, dumps, job_prefix, loads
from aimaster.errors import AimasterError, EtcdDataError, JobError
from aimaster.master.job_state import TERMINAL
from aimaster.master.state_dir import JobStateDir

CONTROL = "control"


def _store(job_id: str, cfg: Optional[EtcdConfig], state_root: str) -> Store:
    if cfg is None:
        state = JobStateDir(state_root, job_id)
        endpoint = state.running_etcd()
        if endpoint is None:
            raise JobError(f"job {job_id} is not running (no live etcd in {state.path}); pass --etcd for a "
                           f"job on an external etcd")
        cfg = state.client_config(endpoint)
    return connect(cfg, job_id)


def request_stop(job_id: str, cfg: Optional[EtcdConfig], state_root: str) -> Dict[str, Any]:
    """Ask the job's master to stop the job; returns the job record as it was."""
    store = _store(job_id, cfg, state_root)
    try:
        record = store.get_value(keys.JOB)
        if record is None:
            raise JobError(f"no job {job_id} in etcd at {','.join(store.cfg.endpoints)}")
        if record.get("state") in TERMINAL:
            raise JobError(f"job {job_id} is already {record.get('state')}")
        store.put(CONTROL, {"stop": True, "t": time.time()})
        return record
    finally:
        store.close()


def stop_requested(store: Store) -> bool:
    value = store.get_value(CONTROL)
    return bool(value and value.get("stop") is True)


def request_fail(store: Store, reason: str, by: str) -> None:
    """An `aimaster join` whose fault policy ended the job (a user error, the same error too often):
    tell the job's master, which may run no worker of its own (``-n 0``) and would otherwise wait for
    joiners that will never come back."""
    store.put(CONTROL, {"fail": str(reason)[:2000], "by": str(by), "t": time.time()})


def fail_requested(store: Store) -> Optional[str]:
    """The reason a joiner's policy failed the job, if one did; "" for a malformed request."""
    value = store.get_value(CONTROL)
    if not value or "fail" not in value:
        return None
    reason, by = value.get("fail"), value.get("by")
    if not isinstance(reason, str) or not isinstance(by, str):
        return ""
    return f"{reason} (decided by {by})"


def check(m) -> None:
    """For the master ``m``: ``aimaster stop`` from anywhere is handled like Ctrl-C, and a joiner's
    failing the job ends it (a request in etcd, checked about once a second)."""
    if m.opts.join_only or m.stop_requested.is_set():
        return
    now = time.monotonic()
    if now - m._last_control_check < 1.0:
        return
    m._last_control_check = now
    try:
        if stop_requested(m.store):
            m._log(f"stop requested for job {m.opts.job_id} (aimaster stop)")
            m.stop_requested.set()
        failed = fail_requested(m.store)
        if failed:
            m._log(f"an `aimaster join` ended job {m.opts.job_id}: {failed}")
            m.joiner_failed = failed
    except AimasterError as e:  # a malformed control value: report it, do not stop on it
        m._log(f"warning: ignoring the job's control key: {e}")


def clear_stop(store: Store) -> None:
    store.delete(CONTROL)


INDEX = f"{ROOT}index/"  # one small key per job, so listing jobs never reads their slices


def index_job(store: Store, job_id: str, record: Dict[str, Any]) -> None:
    """Record a job in the etcd-wide index (the master calls this on every state change)."""
    entry = {k: record.get(k) for k in ("state", "created", "updated", "workers")}
    store.call("index job", lambda c: c.put(f"{INDEX}{job_id}", dumps(entry)))


def list_jobs(cfg: EtcdConfig) -> List[Dict[str, Any]]:
    """Every job in an etcd: id, state, created, updated, workers."""
    store = connect(cfg, "_")  # the job prefix is irrelevant here; the index is etcd-wide
    try:
        out = []
        for raw, meta in store.call("list jobs", lambda c: list(c.get_prefix(INDEX))):
            key = meta.key.decode("utf-8", "replace")
            try:
                entry = loads(raw, key)
            except EtcdDataError as e:  # one bad entry hides no other job
                entry = {"state": "Unknown", "error": str(e)}
            created = entry.get("created")
            entry["created"] = created if isinstance(created, (int, float)) and not isinstance(created, bool) else None
            out.append(dict(entry, job_id=key[len(INDEX):]))
        return sorted(out, key=lambda j: j["created"] or 0)
    finally:
        store.close()


def jobs_in_state_dir(state_root: str) -> List[str]:
    import os

    try:
        return sorted(e.name for e in os.scandir(os.path.join(state_root, "jobs")) if e.is_dir())
    except OSError:
        return []


__all__ = ["request_stop", "stop_requested", "check", "request_fail", "fail_requested", "clear_stop", "index_job",
           "list_jobs", "jobs_in_state_dir", "job_prefix"]
