"""``aimaster status``: a job's state from etcd, from any machine that can reach it.

With no ``--etcd``, the job's embedded etcd is used: the running one if the job is live, otherwise
it is started briefly on the job's state directory to read the final state (holding the job's etcd
lock meanwhile, so that a master starting at that moment waits instead of starting a second etcd on
the same data).

Values are validated as the master validates them (:mod:`aimaster.master.readback`): a malformed
per-worker record or plan is listed under ``ignored`` and left out (the job's own state, which says
why it failed, still shows); a malformed job record is a one-line error naming its key.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from typing import Any, Dict, Optional, Tuple

from aimaster.data.connect import connect
from aimaster.data.etcd_server import EmbeddedEtcd
from aimaster.data.store import EtcdConfig
from aimaster.errors import EtcdUnavailableError, JobError
from aimaster.master import job_index
from aimaster.master.failed_slices import failed_rows, item_summary
from aimaster.master.job_state import JobState
from aimaster.master.monitor import JobMonitor
from aimaster.master.progress import format_duration
from aimaster.master.state_dir import JobStateDir, default_root
from aimaster.master.stop_requests import how_workers_left
from aimaster.settings import DEFAULTS


def latest_job(root: str) -> str:
    jobs = os.path.join(root, "jobs")
    try:
        entries = [e for e in os.scandir(jobs) if e.is_dir()]
    except OSError:
        entries = []
    if not entries:
        raise JobError(f"no jobs in state directory {os.path.abspath(root)}; pass --job-id (and --etcd for a "
                       f"remote job) or --state-dir")
    return max(entries, key=lambda e: e.stat().st_mtime).name


def locate(job_id: Optional[str], root: str) -> Tuple[str, str]:
    """``(job id, state root)`` of the job to show: in ``root``, else -- when ``root`` is only the
    default ``./.aimaster`` -- wherever the user's job index (:mod:`.job_index`) last saw it, so
    ``aimaster status`` works from any directory. Errors say everywhere that was looked."""
    explicit = os.path.abspath(root) != os.path.abspath(default_root()) or bool(os.environ.get("AIMASTER_STATE_DIR"))
    if job_id:
        if JobStateDir(root, job_id).exists() or explicit:
            return job_id, root
        found = job_index.find(job_id)
        if found is None:
            raise JobError(f"no job {job_id} in state directory {os.path.abspath(root)}, nor in the job index "
                           f"{job_index.index_dir()}; pass --state-dir (or --etcd for a remote job)")
        return job_id, found
    try:
        return latest_job(root), root
    except JobError:
        hit = None if explicit else job_index.latest()
        if hit is None:
            raise JobError(f"no jobs in state directory {os.path.abspath(root)}"
                           + ("" if explicit else f" nor in the job index {job_index.index_dir()}")
                           + "; pass --job-id and --state-dir (or --etcd for a remote job)")
        return hit


def pending(job_id: str) -> Dict[str, Any]:
    """The view of a job that is starting: its state directory exists, its record is not written yet."""
    return {"job_id": job_id, "state": JobState.PENDING.value, "job": {}, "time": time.time(), "datasets": [],
            "workers": [], "slices": {"total": 0, "done": 0, "failed": 0, "running": 0}, "failed_slices": []}


LOCAL_RETRY_SECONDS = 5.0  # the job's own etcd, on this host: gone for longer means it was shut down


def job_status(job_id: Optional[str], cfg: Optional[EtcdConfig], root: str, failed_slices: bool = True
               ) -> Dict[str, Any]:
    """The job's view as ``aimaster status --json`` prints it (``failed_slices``: also read their errors).

    Read from the job's own embedded etcd, a job that ends while we read shuts that etcd down under us:
    then we read again, from the etcd data it left (a read-only etcd of our own on it), once or twice.
    """
    for attempt in range(3):
        try:
            return _job_status(job_id, cfg, root, failed_slices)
        except EtcdUnavailableError:
            if cfg is not None or attempt == 2:
                raise


def _job_status(job_id: Optional[str], cfg: Optional[EtcdConfig], root: str, failed_slices: bool
                ) -> Dict[str, Any]:
    with contextlib.ExitStack() as stack:
        starting = False
        state = None
        if cfg is None:
            job_id, root = locate(job_id, root)
            state = JobStateDir(root, job_id)
            if not state.exists():
                raise JobError(f"no job {job_id} in state directory {root}")
            endpoint = state.running_etcd()
            if endpoint is None and not os.path.exists(state.etcd_info) and not os.path.exists(state.report):
                # Neither a running etcd nor the trace of one (etcd.json stays when everything was killed,
                # report.json is written at the end): the job is starting. Starting an etcd of our own on
                # its data directory now would race the master's.
                return pending(job_id)
            starting = True
            if endpoint is None:
                stack.enter_context(state.etcd_lock())
                endpoint = state.running_etcd()  # a master may have started it while we waited
            if endpoint is None:
                if not os.path.isdir(state.etcd_dir):
                    raise JobError(f"job {job_id} has no etcd data in {state.path}")
                temp = EmbeddedEtcd(data_dir=state.etcd_dir, log_path=os.path.join(state.path, "etcd-status.log"),
                                    tls=state.security().server_tls())
                temp.start()
                stack.callback(temp.stop)
                endpoint = temp.endpoint
            cfg = state.client_config(endpoint, retry_seconds=LOCAL_RETRY_SECONDS)
        elif not job_id:
            raise JobError("--etcd needs --job-id")
        store = connect(cfg, job_id)
        stack.callback(store.close)
        # Slice counts come from the datasets' own validated completion, as the master's do.
        datasets = _Datasets(store)
        stack.callback(datasets.close)
        monitor = JobMonitor(store, job_id, dataset=datasets.get)
        monitor.job_record()  # a malformed job record is the one-line error; a malformed plan is listed
        view = monitor.view(strict=False)
        if not view.job and not view.datasets:
            if starting:  # the job's own etcd, its master not yet at the point of writing the record
                return pending(job_id)
            raise JobError(f"no job {job_id} in etcd at {','.join(cfg.endpoints)}")
        out = view.to_json()
        if state is not None:
            out["state_dir"] = state.root
        left = how_workers_left(store)
        for row in out["workers"]:
            m = re.search(r"-r(\d+)(?:g\d+)?$", row["worker_id"])
            row["restarts"] = int(m.group(1)) if m else 0
            row["left"] = None if row.get("alive") else left.get(row["worker_id"])  # preempted, stopped (why)
        out["failed_slices"] = []
        if view.failed and failed_slices:
            for d in view.datasets:
                ds = datasets.get(d.ds_id)
                if ds is not None:
                    out["failed_slices"] += failed_rows(ds)
        return out


class _Datasets:
    """The job's datasets, attached read-only (a session without registration, made when needed)."""

    def __init__(self, store):
        self.store = store
        self.session = None
        self.attached: Dict[str, Any] = {}

    def get(self, ds_id: str):
        from aimaster.data.coordinator import Dataset
        from aimaster.data.session import WorkerSession

        if ds_id not in self.attached:
            if self.session is None:
                self.session = WorkerSession(self.store, f"status-{os.getpid()}", register=False,
                                             settings=DEFAULTS)  # only reads: a bad $AIMASTER_* cannot break it
            ds = Dataset(self.session, ds_id)
            self.attached[ds_id] = ds if ds.load_plan() is not None else None
        return self.attached[ds_id]

    def close(self) -> None:
        if self.session is not None:
            self.session.close()  # revokes its lease (and closes the store, which we are done with)


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
        now = view.get("time") or time.time()
        lines.append(f"  {'worker':<16} {'alive':<6} {'host':<20} {'pid':>8} {'slices':>7} {'items':>9} "
                     f"{'slices/s':>9} {'last commit':>12} {'restarts':>8}")
        for w in view["workers"]:
            last = w.get("last")
            ago = f"{format_duration(max(0.0, now - last))} ago" if isinstance(last, (int, float)) else "-"
            lines.append(f"  {w['worker_id']:<16} {'yes' if w['alive'] else 'no':<6} {w['host'][:20]:<20} "
                         f"{w['pid']:>8} {w['slices']:>7} {w['items']:>9} {w['rate']:>9.2f} {ago:>12} "
                         f"{w.get('restarts', 0):>8}" + (f"  {w['left']}" if w.get("left") else ""))
    for why in view.get("ignored", [])[:10]:
        lines.append(f"  warning: ignoring {why}")
    failed = view.get("failed_slices", [])
    for f in failed[:20]:
        lines.append(f"  failed slice {f['dataset']}/{f['slice']}: {f['error']}")
    if len(failed) > 20:
        lines.append(f"  ... {len(failed) - 20} more failed slice(s): aimaster status --failed")
    return "\n".join(lines)


def format_failed(view: Dict[str, Any]) -> str:
    """``aimaster status --failed``: every failed slice with its last error."""
    failed = view.get("failed_slices", [])
    if not failed:
        return f"job {view['job_id']}: no failed slices"
    lines = [f"job {view['job_id']}: {len(failed)} failed slice(s) (aimaster retry --job-id {view['job_id']} "
             f"runs them again)"]
    for f in failed:
        lines.append(f"{f['dataset']}/{f['slice']}: {f['error']}")
        if f.get("items"):
            lines.append(f"  items: {item_summary(f)}")
    return "\n".join(lines)
