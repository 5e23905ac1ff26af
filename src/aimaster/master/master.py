"""The master: launches and relaunches workers, requeues lost slices, decides when the job is over.

All job state is in etcd, so the master can die at any moment: workers keep claiming and
committing without it, and a master started again for the same job id (on the same state directory,
or the same ``--etcd``) picks up where the old one was. The master's own key is bound to its lease,
so two masters never run one job.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from aimaster.data import keys
from aimaster.data.coordinator import Dataset
from aimaster.data.etcd_server import EmbeddedEtcd
from aimaster.data.runtime import USER_ERROR_EXIT
from aimaster.data.session import WorkerSession
from aimaster.data.store import EtcdConfig, Store, dumps, job_prefix
from aimaster.errors import JobError
from aimaster.master.launcher import WorkerProcess, stop_all
from aimaster.master.monitor import JobMonitor, JobView
from aimaster.master.policy import Failure, FaultPolicy, classify_exit
from aimaster.master.progress import ProgressDisplay, format_duration
from aimaster.master.state_dir import JobStateDir

SUCCEEDED, FAILED, STOPPED, RUNNING = "Succeeded", "Failed", "Stopped", "Running"
EXIT_CODES = {SUCCEEDED: 0, FAILED: 1, STOPPED: 130}


@dataclass
class RunOptions:
    command: List[str]
    job_id: str
    workers: int = 1
    etcd: Optional[EtcdConfig] = None  # None: the job's embedded etcd in the state directory
    state_root: str = ".aimaster"
    min_workers: int = 1
    policy: FaultPolicy = field(default_factory=FaultPolicy)
    hang_detection: bool = False
    hang_interval: float = 600.0
    lease_ttl: int = 10
    max_slice_attempts: int = 4
    progress: bool = True
    poll_interval: float = 0.5
    stop_grace: float = 10.0
    join_only: bool = False  # `aimaster join`: supervise local workers, no master duties


def connect(cfg: EtcdConfig, job_id: str, probe_seconds: float = 5.0) -> Store:
    """A store for the job, failing fast (one line) when etcd is unreachable or refuses us."""
    probe = EtcdConfig(**{**cfg.__dict__, "retry_seconds": probe_seconds})
    store = Store(probe, job_prefix(job_id))
    store.get(keys.JOB)  # raises EtcdUnavailableError naming the endpoints
    store.cfg = cfg
    return store


class Master:
    def __init__(self, opts: RunOptions, out=sys.stderr):
        self.opts = opts
        self.out = out
        self.state = JobStateDir(opts.state_root, opts.job_id)
        self.etcd: Optional[EmbeddedEtcd] = None
        self.store: Optional[Store] = None
        self.session: Optional[WorkerSession] = None
        self.workers: Dict[int, WorkerProcess] = {}
        self.pending: Dict[int, Tuple[float, int]] = {}  # slot -> (when to relaunch, incarnation)
        self.finished_slots: Dict[int, int] = {}
        self.history: List[Dict[str, Any]] = []
        self.relaunches: Dict[str, int] = {}
        self.generation = 1
        self.stop_requested = threading.Event()
        self.fail_reason: Optional[str] = None
        self.started = time.time()
        self.display: Optional[ProgressDisplay] = None
        self._datasets: Dict[str, Dataset] = {}
        self._last_requeue = 0.0

    # ------------------------------------------------------------------ setup
    def _start_etcd(self) -> EtcdConfig:
        if self.opts.etcd is not None:
            return self.opts.etcd
        endpoint = self.state.running_etcd()
        if endpoint is None:
            self.etcd = self.state.start_etcd()
            endpoint = self.etcd.endpoint
        else:
            self._log(f"reusing the job's embedded etcd still running at {endpoint}")
        return EtcdConfig([endpoint])

    def _take_master_key(self) -> None:
        """Become the job's only master.

        A master record left by a dead master (its lease outlives it by up to a TTL, and etcd
        restores leases with a fresh TTL after a restart) is taken over: at once when it names a
        dead process on this host, otherwise once its lease expires.
        """
        st, tx = self.store, self.store.tx
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": self.started}
        deadline = time.monotonic() + self.opts.lease_ttl * 2 + 2
        while True:
            ok, resp = st.txn("take master", [tx.version(st.key(keys.MASTER)) == 0],
                              [tx.put(st.key(keys.MASTER), dumps(record), lease=self.session.lease)],
                              [tx.get(st.key(keys.MASTER))])
            if ok:
                return
            other = st.get_value(keys.MASTER) or {}
            if other.get("host") == record["host"] and isinstance(other.get("pid"), int) \
                    and not _pid_alive(other["pid"]):
                st.delete(keys.MASTER)
                continue
            if time.monotonic() > deadline:
                raise JobError(f"job {self.opts.job_id} already has a running master (pid {other.get('pid')} "
                               f"on {other.get('host')}); add workers with "
                               f"'aimaster join --job-id {self.opts.job_id}'")
            time.sleep(0.5)

    def _write_job(self, state: str, **extra: Any) -> None:
        record = dict(self.store.get_value(keys.JOB) or {})
        record.update({"state": state, "updated": time.time()}, **extra)
        self.store.put(keys.JOB, record)

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        self.state.create()
        cfg = self._start_etcd()
        self.store = connect(cfg, self.opts.job_id)
        self.session = WorkerSession(self.store, f"master-{socket.gethostname()}-{os.getpid()}",
                                     ttl=self.opts.lease_ttl, register=False)
        self._install_signal_handlers()
        try:
            if not self.opts.join_only:
                self._take_master_key()
                previous = self.store.get_value(keys.JOB) or {}
                if previous.get("state") == SUCCEEDED:
                    self._log(f"job {self.opts.job_id} already succeeded; nothing to do")
                    return 0
                self.generation = int(previous.get("generation", 0) or 0) + 1
                self._write_job(RUNNING, command=self.opts.command, workers=self.opts.workers,
                                generation=self.generation, resumed=bool(previous),
                                created=previous.get("created", self.started), ended=None,
                                min_workers=self.opts.min_workers)
                if previous:
                    self._log(f"resuming job {self.opts.job_id} (run {self.generation})")
            else:
                self.generation = int(time.time()) % 100000
            self.display = ProgressDisplay(self.out, enabled=self.opts.progress)
            return self._loop()
        finally:
            if self.display is not None:
                self.display.close()
            self._shutdown()

    def _etcd_env(self, cfg: EtcdConfig) -> Dict[str, str]:
        env = dict(os.environ)
        for k in [k for k in env if k.startswith("AIMASTER_")]:
            if k not in ("AIMASTER_STATE_DIR",):
                env.pop(k)
        env.update(cfg.to_env())
        env["AIMASTER_JOB_ID"] = self.opts.job_id
        env["AIMASTER_LEASE_TTL"] = str(self.opts.lease_ttl)
        env["AIMASTER_MAX_SLICE_ATTEMPTS"] = str(self.opts.max_slice_attempts)
        return env

    def _launch(self, slot: int, incarnation: int) -> WorkerProcess:
        env = self._etcd_env(self.store.cfg)
        # Worker ids stay unique across master restarts and joins (stats are kept per worker id).
        suffix = f"g{self.generation}" if self.generation > 1 or self.opts.join_only else ""
        w = WorkerProcess(slot, self.opts.command, env, self.state.logs, incarnation, suffix)
        self.workers[slot] = w
        return w

    def _loop(self) -> int:
        opts = self.opts
        job_done_early = self._view().all_complete
        if job_done_early:
            self._log("all slices are already committed; no worker is started")
        else:
            for slot in range(opts.workers):
                self._launch(slot, 0)
        incarnations = {slot: 0 for slot in range(opts.workers)}
        while True:
            if self.stop_requested.is_set():
                self._log("stopping: terminating workers (the job can be resumed with the same --job-id)")
                stop_all(list(self.workers.values()), opts.stop_grace)
                return self._finish(STOPPED)
            view = self._view()
            self._requeue_lost(view)
            for slot, w in list(self.workers.items()):
                rc = w.poll()
                if rc is None:
                    continue
                del self.workers[slot]
                self.history.append({"worker": w.worker_id, "slot": slot, "pid": w.pid, "exit": rc,
                                     "started": w.started, "ended": w.ended})
                if rc == 0:
                    self.finished_slots[slot] = 0
                    continue
                failure = classify_exit(rc, w.last_error_line())
                self.history[-1]["error"] = failure.describe()
                self.history[-1]["stderr_tail"] = w.stderr_tail(10)
                if view.all_complete:
                    self.finished_slots[slot] = rc
                    continue
                if rc == USER_ERROR_EXIT and failure.message.startswith("aimaster: error:"):
                    # Bad input or configuration: every relaunch would fail the same way.
                    self.fail_reason = failure.message[len("aimaster: error: "):]
                    self._log(f"worker {w.worker_id}: {failure.message}")
                    stop_all(list(self.workers.values()), opts.stop_grace)
                    return self._finish(FAILED)
                reason = opts.policy.record(failure)
                self._log(f"worker {w.worker_id} (pid {w.pid}) {failure.describe()}")
                if reason is not None:
                    self.fail_reason = reason
                    stop_all(list(self.workers.values()), opts.stop_grace)
                    return self._finish(FAILED)
                self._relaunch(slot, failure, incarnations)
            self._launch_due(view)
            if self.display:
                self.display.update(view, len(self.workers), sum(self.relaunches.values()))
            if not self.workers and not self.pending:
                return self._finish(self._final_state(view))
            time.sleep(opts.poll_interval)

    def _relaunch(self, slot: int, failure: Failure, incarnations: Dict[int, int]) -> None:
        """Schedule a relaunch, backing off when a slot keeps failing so a crash loop stays cheap."""
        cause = f"{failure.kind}:{failure.code}"
        self.relaunches[cause] = self.relaunches.get(cause, 0) + 1
        slots = [slot]
        if self.opts.policy.execution_mode == "Sync":
            # Sync: the job's workers run as one group; a failure restarts all of them.
            stop_all(list(self.workers.values()), self.opts.stop_grace)
            slots += list(self.workers)
            self.workers.clear()
        for s in slots:
            incarnations[s] += 1
            self.pending[s] = (time.monotonic() + min(0.25 * 2 ** (incarnations[s] - 1), 15.0), incarnations[s])

    def _launch_due(self, view: JobView) -> None:
        if view.all_complete:
            # Early stop: once the data is done, nothing is started again.
            self.pending.clear()
            return
        now = time.monotonic()
        for slot, (due, incarnation) in list(self.pending.items()):
            if due <= now:
                del self.pending[slot]
                self._launch(slot, incarnation)

    def _view(self) -> JobView:
        return JobMonitor(self.store, self.opts.job_id).view()

    def _requeue_lost(self, view: JobView) -> None:
        """Give lost slices back promptly (workers would too, but only once they run out of work)."""
        if time.monotonic() - self._last_requeue < 2.0:
            return
        self._last_requeue = time.monotonic()
        for d in view.datasets:
            if d.complete or d.todo > 0:
                continue
            ds = self._dataset(d.ds_id)
            if ds is not None:
                ds.requeue_lost()

    def _dataset(self, ds_id: str) -> Optional[Dataset]:
        if ds_id not in self._datasets:
            ds = Dataset(self.session, ds_id, self.opts.max_slice_attempts)
            if ds.load_plan() is None:
                return None
            self._datasets[ds_id] = ds
        return self._datasets[ds_id]

    def _final_state(self, view: JobView) -> str:
        if view.failed:
            self.fail_reason = f"{view.failed} slice(s) failed"
            return FAILED
        if view.datasets and not view.all_complete:
            self.fail_reason = (f"all workers exited but {view.total - view.done} slice(s) are not committed "
                                f"(re-run with --job-id {self.opts.job_id} to resume)")
            return FAILED
        bad = [h for h in self.history if h["exit"] != 0]
        if not view.datasets and bad:
            self.fail_reason = f"worker {bad[-1]['worker']} {bad[-1].get('error', 'failed')}"
            return FAILED
        return SUCCEEDED

    # ------------------------------------------------------------------ the end
    def _finish(self, state: str) -> int:
        view = self._view()
        if state == SUCCEEDED or (state == FAILED and view.all_complete):
            for d in view.datasets:
                ds = self._dataset(d.ds_id)
                if ds is not None:
                    ds.finalize()
        report = self._report(state, view)
        self.state.write_json(self.state.report, report)
        if not self.opts.join_only:
            self._write_job(state, ended=time.time(), reason=self.fail_reason)
        self._print_summary(report)
        return EXIT_CODES[state]

    def _report(self, state: str, view: JobView) -> Dict[str, Any]:
        failed = []
        for d in view.datasets:
            ds = self._dataset(d.ds_id)
            if ds is None:
                continue
            for sid, rec in ds.failed():
                failed.append({"dataset": d.ds_id, "slice": sid, "error": rec.get("e"), "attempts": rec.get("a")})
        ended = time.time()
        return {
            "job_id": self.opts.job_id,
            "state": state,
            "reason": self.fail_reason,
            "command": self.opts.command,
            "started": self.started,
            "ended": ended,
            "duration_s": round(ended - self.started, 3),
            "slices": {"total": view.total, "committed": view.done, "failed": view.failed},
            "datasets": view.to_json()["datasets"],
            "failed_slices": failed,
            "relaunches": dict(self.relaunches),
            "worker_exits": self.history,
            "workers": view.to_json()["workers"],
        }

    def _print_summary(self, report: Dict[str, Any]) -> None:
        s = report["slices"]
        lines = [f"job {report['job_id']} {report['state']} in {format_duration(report['duration_s'])}: "
                 f"{s['committed']}/{s['total']} slices committed, {s['failed']} failed, "
                 f"{sum(report['relaunches'].values())} worker relaunch(es)"]
        if report["reason"]:
            lines.append(f"  reason: {report['reason']}")
        for f in report["failed_slices"][:20]:
            lines.append(f"  failed slice {f['dataset']}/{f['slice']}: {f['error']}")
        lines.append(f"  report: {self.state.report}")
        for line in lines:
            print(line, file=self.out, flush=True)

    def _log(self, message: str) -> None:
        if self.display is not None:
            self.display.log(message)
        else:
            print(message, file=self.out, flush=True)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def request_stop(signum, frame):
            if self.stop_requested.is_set():
                raise KeyboardInterrupt
            self.stop_requested.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

    def _shutdown(self) -> None:
        if self.workers:
            stop_all(list(self.workers.values()), self.opts.stop_grace)
        if self.session is not None:
            if not self.opts.join_only and self.store is not None:
                try:
                    self.store.delete(keys.MASTER)
                except Exception:  # etcd already gone: the lease expiry removes the key anyway
                    pass
            self.session.close()
        if self.etcd is not None:
            self.etcd.stop()
            try:
                os.unlink(self.state.etcd_info)
            except OSError:
                pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True
