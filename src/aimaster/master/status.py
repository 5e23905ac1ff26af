"""``aimaster status``: a job's state from etcd, from any machine that can reach it.

With no ``--etcd``, the job's embedded etcd is used: the running one if the job is live, otherwise
it is started briefly on the job's state directory to read the final state.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

from aimaster.data.etcd_server import EmbeddedEtcd
from aimaster.data.store import EtcdConfig
from aimaster.errors import JobError
from aimaster.master.master import connect
from aimaster.master.monitor import JobMonitor
from aimaster.master.progress import format_duration
from aimaster.master.state_dir import JobStateDir


def latest_job(root: str) -> str:
    jobs = os.path.join(root, "jobs")
    try:
        entries = [e for e in os.scandir(jobs) if e.is_dir()]
    except OSError:
        entries = []
    if not entries:
        raise JobError(f"no jobs in state directory {root}; pass --job-id (and --etcd for a remote job)")
    return max(entries, key=lambda e: e.stat().st_mtime).name


def job_status(job_id: Optional[str], cfg: Optional[EtcdConfig], root: str) -> Dict[str, Any]:
    temp: Optional[EmbeddedEtcd] = None
    if cfg is None:
        job_id = job_id or latest_job(root)
        state = JobStateDir(root, job_id)
        if not state.exists():
            raise JobError(f"no job {job_id} in state directory {root}")
        endpoint = state.running_etcd()
        if endpoint is None:
            if not os.path.isdir(state.etcd_dir):
                raise JobError(f"job {job_id} has no etcd data in {state.path}")
            temp = EmbeddedEtcd(data_dir=state.etcd_dir, log_path=os.path.join(state.path, "etcd-status.log"))
            temp.start()
            endpoint = temp.endpoint
        cfg = EtcdConfig([endpoint])
    elif not job_id:
        raise JobError("--etcd needs --job-id")
    try:
        store = connect(cfg, job_id)
        view = JobMonitor(store, job_id).view()
        if not view.job and not view.datasets:
            raise JobError(f"no job {job_id} in etcd at {','.join(cfg.endpoints)}")
        out = view.to_json()
        failed = []
        from aimaster.data.coordinator import Dataset
        from aimaster.data.session import WorkerSession

        if view.failed:
            session = WorkerSession(store, f"status-{os.getpid()}", register=False)
            try:
                for d in view.datasets:
                    ds = Dataset(session, d.ds_id)
                    if ds.load_plan() is not None:
                        failed += [{"dataset": d.ds_id, "slice": sid, "error": rec.get("e")}
                                   for sid, rec in ds.failed()]
            finally:
                session.close()
        out["failed_slices"] = failed
        store.close()
        return out
    finally:
        if temp is not None:
            temp.stop()


def format_status(view: Dict[str, Any]) -> str:
    job = view.get("job") or {}
    s = view["slices"]
    lines = [f"job {view['job_id']}: {view['state']}"]
    if job.get("reason"):
        lines.append(f"  reason: {job['reason']}")
    created = job.get("created")
    if isinstance(created, (int, float)):
        end = job.get("ended") if isinstance(job.get("ended"), (int, float)) else time.time()
        lines.append(f"  elapsed: {format_duration(end - created)}")
    lines.append(f"  slices: {s['done']}/{s['total']} committed, {s['running']} in flight, {s['failed']} failed")
    for d in view["datasets"]:
        lines.append(f"  dataset {d['ds_id']} ({d['kind']}, {d['items']} items): {d['done']}/{d['total']} "
                     f"committed, {d['running']} in flight, {d['todo']} waiting, {d['failed']} failed")
    if view["workers"]:
        lines.append(f"  {'worker':<16} {'alive':<6} {'host':<20} {'pid':>8} {'slices':>8} "
                     f"{'items':>9} {'slices/s':>9}")
        for w in view["workers"]:
            lines.append(f"  {w['worker_id']:<16} {'yes' if w['alive'] else 'no':<6} {w['host'][:20]:<20} "
                         f"{w['pid']:>8} {w['slices']:>8} {w['items']:>9} {w['rate']:>9.2f}")
    for f in view.get("failed_slices", [])[:50]:
        lines.append(f"  failed slice {f['dataset']}/{f['slice']}: {f['error']}")
    return "\n".join(lines)
