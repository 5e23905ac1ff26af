"""The master: launches and relaunches workers, watches their progress, decides when the job is over.

All job state is in etcd, so the master can die at any moment: workers keep claiming and
committing without it (they run in sessions of their own), and a master started again for the same
job id -- or a standby waiting for the master key -- picks up where the old one was: it reuses the
job's still-running embedded etcd, *adopts* the workers its predecessor launched (watching them
through their etcd registration, since they are not its children) and only tops the count up to
``-n``. The master's own key is bound to its lease, so two masters never run one job.

Each round of the control loop (every ``poll_interval`` seconds):

1. read the job (slice counts) and every worker's registration, heartbeat and counters
   (:class:`~aimaster.master.watch.WorkerWatch`);
2. handle workers that ended: classify the failure, record it against the slices the worker held,
   revoke its lease so those slices come back now instead of after the TTL, then relaunch it or
   fail the job, as the fault policy says (:mod:`aimaster.master.policy`);
3. kill hung workers (:mod:`aimaster.master.hang`) and replace slow ones
   (:mod:`aimaster.master.slowness`);
4. once every slice is committed, start nothing more (early stop), and stop workers still busy
   with attempts that can no longer win;
5. launch what is due (the initial ramp, relaunches after back-off).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from aimaster.data import keys
from aimaster.data.coordinator import Dataset
from aimaster.data.etcd_server import EmbeddedEtcd
from aimaster.data.runtime import USER_ERROR_EXIT
from aimaster.data.session import WorkerSession
from aimaster.data.store import EtcdConfig, Store, job_prefix
from aimaster.errors import AimasterError, JobError
from aimaster.master import control
from aimaster.master import report as reporting
from aimaster.master.election import MasterKey
from aimaster.master.etcd_guard import EtcdGuard
from aimaster.master.fleet import Fleet
from aimaster.master.hang import HangDetector
from aimaster.master.launcher import AdoptedWorker, LogOptions, Worker, stop_all
from aimaster.master.monitor import JobMonitor, JobView
from aimaster.master.policy import Failure, FaultPolicy, classify_exit
from aimaster.master.progress import ProgressDisplay, progress_interval
from aimaster.master.slowness import SlowWorkerPolicy
from aimaster.master.state_dir import JobStateDir
from aimaster.master.watch import WorkerWatch

SUCCEEDED, FAILED, STOPPED, RUNNING, PENDING = "Succeeded", "Failed", "Stopped", "Running", "Pending"
TERMINAL = (SUCCEEDED, FAILED, STOPPED)
EXIT_CODES = {SUCCEEDED: 0, FAILED: 1, STOPPED: 130}
STEPPED_DOWN_EXIT = 3


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
    launch_interval: float = 0.0  # seconds between worker starts (a ramp; nothing starts once done)
    standby: bool = False  # wait for the master key instead of failing when another master holds it
    speculation: bool = True
    speculation_multiplier: float = 1.5
    max_slice_copies: int = 1
    slow_multiplier: float = 3.0  # 0: never replace slow workers
    slow_min_samples: int = 5
    completion_grace: float = 1.0  # after the last commit, how long moot attempts may still run
    metrics_port: Optional[int] = None  # serve Prometheus metrics on this port (None: off)
    log_max_bytes: int = 50 * 1024 * 1024  # per worker log file, before it is rotated
    log_backups: int = 3  # rotated files kept per worker log (worker-N.out.1 ...)
    tee: bool = False  # also print workers' output on the console, each line prefixed with its worker


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
        self.guard: Optional[EtcdGuard] = None
        self.store: Optional[Store] = None
        self.session: Optional[WorkerSession] = None
        self.key: Optional[MasterKey] = None
        self.fleet: Optional[Fleet] = None
        self.watch: Optional[WorkerWatch] = None
        self.hang = HangDetector(opts.hang_interval) if opts.hang_detection else None
        self.slow = SlowWorkerPolicy(opts.slow_multiplier, opts.slow_min_samples)
        self.history: List[Dict[str, Any]] = []
        self.relaunches: Dict[str, int] = {}
        self.replaced: List[str] = []
        self.adopted: List[str] = []
        self.generation = 1
        self.job_state: Optional[str] = None
        self.stop_requested = threading.Event()
        self.fail_reason: Optional[str] = None
        self.started = time.time()
        self.display: Optional[ProgressDisplay] = None
        self.stepped_down = False
        self._datasets: Dict[str, Dataset] = {}
        self._last_requeue = 0.0
        self._complete_since: Optional[float] = None
        self.metrics = None  # aimaster.metrics.JobMetrics with --metrics-port
        self._commit_revs: Dict[str, int] = {}  # dataset -> highest done/ mod revision fed to the metrics
        self._last_control_check = 0.0

    # ------------------------------------------------------------------ setup
    def run(self) -> int:
        self._install_signal_handlers()
        self.state.create()
        cfg = self._etcd_config()
        if cfg is None:
            return EXIT_CODES[STOPPED]
        self.store = connect(cfg, self.opts.job_id)
        self.session = WorkerSession(self.store, f"master-{socket.gethostname()}-{os.getpid()}",
                                     ttl=self.opts.lease_ttl, register=False)
        try:
            if self.opts.join_only:
                self._join_setup()
            else:
                code = self._become_master()
                if code is not None:
                    return code
            self.display = ProgressDisplay(self.out, interval=progress_interval(), enabled=self.opts.progress)
            if self.opts.metrics_port is not None and not self.opts.join_only:
                from aimaster.metrics import JobMetrics

                self.metrics = JobMetrics(self.opts.job_id, self.opts.metrics_port)
                self._log(f"metrics: http://0.0.0.0:{self.opts.metrics_port}/metrics")
            return self._loop()
        finally:
            if self.display is not None:
                self.display.close()
            if self.metrics is not None:
                self.metrics.close()
            self._shutdown()

    def _etcd_config(self) -> Optional[EtcdConfig]:
        if self.opts.etcd is not None:
            return self.opts.etcd
        endpoint = self.state.running_etcd()
        if endpoint is None and self.opts.standby:
            self._log(f"standby: waiting for job {self.opts.job_id}'s embedded etcd to start")
            while endpoint is None:
                if self.stop_requested.wait(0.5):
                    return None
                endpoint = self.state.running_etcd()
        if endpoint is None:
            self.etcd = self.state.start_etcd()
            endpoint = self.etcd.endpoint
        else:
            self._log(f"reusing the job's embedded etcd still running at {endpoint}")
        return EtcdConfig([endpoint])

    def _become_master(self) -> Optional[int]:
        """Take the master key (or stand by for it), then write the job record. An exit code ends the run."""
        self.key = MasterKey(self.session)
        if self.opts.standby:
            code = self._stand_by()
            if code is not None:
                return code
        elif not self.key.take(patience=self.opts.lease_ttl * 2 + 2):
            other = self.key.holder() or {}
            raise JobError(f"job {self.opts.job_id} already has a running master (pid {other.get('pid')} "
                           f"on {other.get('host')}); add workers with "
                           f"'aimaster join --job-id {self.opts.job_id}', or wait with 'aimaster run --standby'")
        if self.opts.etcd is None:
            # The job's embedded etcd is ours now, whether we started it or inherited it from a
            # master that died: keep it alive, and stop it when the job ends.
            self.guard = EtcdGuard(self.state, self.etcd, self._log).start()
        previous = self.store.get_value(keys.JOB) or {}
        if previous.get("state") == SUCCEEDED:
            self._log(f"job {self.opts.job_id} already succeeded; nothing to do")
            return 0
        self.generation = int(previous.get("generation", 0) or 0) + 1
        # A stop request was for the run it stopped; this run starts afresh.
        control.clear_stop(self.store)
        # With --min-workers above 1 the job is Pending until that many workers are registered.
        self.job_state = PENDING if self.opts.min_workers > 1 else RUNNING
        self._write_job(self.job_state, command=self.opts.command, workers=self.opts.workers,
                        generation=self.generation, resumed=bool(previous),
                        created=previous.get("created", self.started), ended=None, reason=None,
                        min_workers=self.opts.min_workers, options=self._job_options())
        if previous:
            self._log(f"resuming job {self.opts.job_id} (run {self.generation})")
        return None

    def _stand_by(self) -> Optional[int]:
        st = self.store
        me = f"{socket.gethostname()}-{os.getpid()}"
        self.session.leased(lambda lease: st.put(keys.standby(me), {"pid": os.getpid(), "t": time.time()},
                                                 lease=lease))
        self._log(f"standby: waiting to take over as master of job {self.opts.job_id}")
        try:
            while True:
                if self.stop_requested.is_set():
                    return EXIT_CODES[STOPPED]
                if self.key.try_take():
                    break
                if self.key.clear_dead_local_holder():
                    continue
                job = st.get_value(keys.JOB) or {}
                ended = job.get("ended")
                if job.get("state") in TERMINAL and isinstance(ended, (int, float)) and ended > self.started:
                    self._log(f"standby: job {self.opts.job_id} ended ({job['state']}) under the active master")
                    return EXIT_CODES[job["state"]]
                time.sleep(0.5)
        finally:
            st.delete(keys.standby(me))
        self._log(f"standby: the master of job {self.opts.job_id} is gone; taking over")
        return None

    def _join_setup(self) -> None:
        """`aimaster join`: follow the job's own settings (hang detection, speculation) for our workers."""
        options = (self.store.get_value(keys.JOB) or {}).get("options") or {}
        o = self.opts
        if isinstance(options.get("hang_detection"), bool) and not o.hang_detection:
            o.hang_detection = options["hang_detection"]
            if isinstance(options.get("hang_interval"), (int, float)):
                o.hang_interval = float(options["hang_interval"])
            self.hang = HangDetector(o.hang_interval) if o.hang_detection else None
        for name in ("speculation", "speculation_multiplier", "max_slice_copies", "max_slice_attempts"):
            if name in options and isinstance(options[name], type(getattr(o, name))):
                setattr(o, name, options[name])
        self.generation = int(time.time()) % 100000

    def _job_options(self) -> Dict[str, Any]:
        o = self.opts
        return {"hang_detection": o.hang_detection, "hang_interval": o.hang_interval, "lease_ttl": o.lease_ttl,
                "max_slice_attempts": o.max_slice_attempts, "speculation": o.speculation,
                "speculation_multiplier": o.speculation_multiplier, "max_slice_copies": o.max_slice_copies,
                "slow_worker_multiplier": o.slow_multiplier, "execution_mode": o.policy.execution_mode,
                "fault_tolerant_policy": o.policy.policy, "max_num_of_same_error": o.policy.max_same_error}

    def _write_job(self, state: str, **extra: Any) -> None:
        record = dict(self.store.get_value(keys.JOB) or {})
        record.update({"state": state, "updated": time.time()}, **extra)
        self.store.put(keys.JOB, record)
        try:
            control.index_job(self.store, self.opts.job_id, record)
        except Exception as e:  # noqa: BLE001 - the index is for listing jobs; the job itself goes on
            self._log(f"warning: could not update the job index: {e}")

    def _etcd_env(self) -> Dict[str, str]:
        env = dict(os.environ)
        # Drop the job coordinates this process may itself have inherited (a job started from inside
        # a worker); user settings such as AIMASTER_ODPS_WAREHOUSE pass through.
        for k in [k for k in env if k.startswith(("AIMASTER_ETCD_", "AIMASTER_JOB_", "AIMASTER_WORKER_"))
                  or k == "AIMASTER_STANDALONE"]:
            env.pop(k)
        o = self.opts
        env.update(self.store.cfg.to_env())
        env["AIMASTER_JOB_ID"] = o.job_id
        env["AIMASTER_LEASE_TTL"] = str(o.lease_ttl)
        env["AIMASTER_MAX_SLICE_ATTEMPTS"] = str(o.max_slice_attempts)
        env["AIMASTER_SPECULATION"] = "1" if o.speculation else "0"
        env["AIMASTER_SPECULATION_MULTIPLIER"] = str(o.speculation_multiplier)
        env["AIMASTER_MAX_SLICE_COPIES"] = str(o.max_slice_copies)
        env["AIMASTER_LAUNCHER"] = f"join:{socket.gethostname()}:{os.getpid()}" if o.join_only else "master"
        return env

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> int:
        opts = self.opts
        self.watch = WorkerWatch(self.store)
        # Worker ids stay unique across master restarts and joins (stats are kept per worker id).
        suffix = f"g{self.generation}" if self.generation > 1 or opts.join_only else ""
        self.fleet = Fleet(opts.command, self._etcd_env, self.state.logs, suffix,
                           logs=LogOptions(opts.log_max_bytes, opts.log_backups, opts.tee))
        view = self._view()
        self.watch.refresh(self._ds_ids(view))
        if not opts.join_only:
            self._adopt()
        if view.all_complete:
            self._log("all slices are already committed; no worker is started")
        else:
            free = [s for s in range(opts.workers) if s not in self.fleet.slots]
            for i, slot in enumerate(free):
                self.fleet.schedule(slot, i * opts.launch_interval, "start")
        while True:
            self._check_control()
            if self.stop_requested.is_set():
                self._log("stopping: terminating workers (the job can be resumed with the same --job-id)")
                self.fleet.stop_all(opts.stop_grace, "stopped")
                self._reap(False)
                return self._finish(STOPPED)
            if self.key is not None and self.key.still_ours() is False:
                self.stepped_down = True
                self._log(f"another master took over job {opts.job_id}; stepping down (the workers keep running)")
                return STEPPED_DOWN_EXIT
            view = self._view()
            departed = self.watch.refresh(self._ds_ids(view))
            complete = view.all_complete
            self._note_job_state(view)
            code = self._reap(complete)
            if code is not None:
                return code
            for info in departed:
                self._give_back_held(info.held)
            if not complete:
                self._detect_hangs()
                self._replace_slow(view)
            self._retire_replaced()
            if complete:
                self._stop_moot()
            self._requeue_lost(view)
            self._launch_due(complete)
            self.fleet.tick()
            self._show(view)
            if self._over(view):
                return self._finish(self._final_state(view))
            time.sleep(opts.poll_interval)

    def _check_control(self) -> None:
        """``aimaster stop`` from anywhere: a request in etcd, handled like Ctrl-C (checked about once a second)."""
        if self.opts.join_only or self.stop_requested.is_set():
            return
        now = time.monotonic()
        if now - self._last_control_check < 1.0:
            return
        self._last_control_check = now
        try:
            if control.stop_requested(self.store):
                self._log(f"stop requested for job {self.opts.job_id} (aimaster stop)")
                self.stop_requested.set()
        except AimasterError as e:  # a malformed control value: report it, do not stop on it
            self._log(f"warning: ignoring the job's control key: {e}")

    def _show(self, view: JobView) -> None:
        """Feed the progress display and the metrics endpoint from this round's view."""
        live = self.fleet.live()
        starting = sum(1 for w in live if not self.watch.registered(w.worker_id))
        backups = self._backups_in_flight(view)
        if self.display:
            self.display.update(view, len(live), sum(self.relaunches.values()), starting=starting,
                                failed_workers=sum(1 for h in self.history if h.get("error")), backups=backups)
        if self.metrics is not None:
            meter = self.display.meter if self.display else None
            rate = meter.rate if meter else 0.0
            items_per_slice = (sum(d.items for d in view.datasets) / view.total) if view.total else 0.0
            stats = [info.stats for info in self.watch.workers.values()]
            self.metrics.update(view, rates={"slices_per_second": rate,
                                             "items_per_second": rate * items_per_slice},
                                relaunches=self.relaunches,
                                backups={"in_flight": backups,
                                         "started": sum(int(s.get("copies") or 0) for s in stats),
                                         "won": sum(int(s.get("copies_won") or 0) for s in stats),
                                         "lost": sum(int(s.get("copies_lost") or 0) for s in stats)})
            self.metrics.observe_commits(self._new_commits(view))

    def _backups_in_flight(self, view: JobView) -> int:
        try:
            return sum(self.store.count(keys.DatasetKeys(d.ds_id).backup) for d in view.datasets
                       if not d.complete)
        except Exception:  # noqa: BLE001 - a display detail; never worth failing a round for
            return 0

    def _new_commits(self, view: JobView) -> List[Dict[str, Any]]:
        """Commit records written since the last call: a range from the last seen mod revision on."""
        from aimaster.data.store import loads

        out: List[Dict[str, Any]] = []
        for d in view.datasets:
            prefix = self.store.key(keys.DatasetKeys(d.ds_id).done)
            since = self._commit_revs.get(d.ds_id, 0)
            items = self.store.call(f"range {prefix}", lambda c, p=prefix, r=since: list(
                c.get_prefix(p, min_mod_revision=r + 1) if r else c.get_prefix(p)))
            for raw, meta in items:
                self._commit_revs[d.ds_id] = max(self._commit_revs.get(d.ds_id, 0), meta.mod_revision)
                try:
                    out.append(loads(raw, meta.key.decode("utf-8", "replace")))
                except AimasterError:
                    continue
        return out

    def _reap(self, complete: bool) -> Optional[int]:
        for w in self.fleet.reap():
            code = self._on_exit(w, complete)
            if code is not None:
                return code
        return None

    def _on_exit(self, w: Worker, complete: bool) -> Optional[int]:
        """A worker ended: record it, give its slices back, then relaunch it or fail the job."""
        opts = self.opts
        rc = w.returncode
        entry: Dict[str, Any] = {"worker": w.worker_id, "slot": w.slot, "pid": w.pid, "exit": rc,
                                 "started": w.started, "ended": w.ended}
        self.history.append(entry)
        failure: Optional[Failure] = None
        if w.adopted:
            entry.update(adopted=True, exit=None)
        if w.stop_reason == "hang":
            failure = Failure("hang", int(opts.hang_interval), w.last_error_line())
        elif w.stop_reason:
            entry["stopped"] = w.stop_reason  # the master's own doing: slow, moot, sync, stopped
        elif w.adopted:
            if not complete:
                failure = Failure("lost", 0, w.last_error_line())
        elif rc != 0:
            failure = classify_exit(rc, w.last_error_line(), w.oom_killed())
        if failure is not None:
            entry["error"] = failure.describe()
            entry["stderr_tail"] = w.stderr_tail(10)
        self._give_back(w, failure.describe() if failure else None)
        if failure is None or complete:
            return None
        if failure.kind == "exit" and rc == USER_ERROR_EXIT and failure.message.startswith("aimaster: error:"):
            # Bad input or configuration: every relaunch would fail the same way.
            self.fail_reason = failure.message[len("aimaster: error: "):]
            self._log(f"worker {w.worker_id}: {failure.message}")
            self.fleet.stop_all(opts.stop_grace, "stopped")
            self._reap(True)
            return self._finish(FAILED)
        self._log(f"worker {w.worker_id} (pid {w.pid}) {failure.describe()}")
        reason = opts.policy.record(failure)
        if reason is not None:
            self.fail_reason = reason
            self.fleet.stop_all(opts.stop_grace, "stopped")
            self._reap(True)
            return self._finish(FAILED)
        self._relaunch(w, failure)
        return None

    def _give_back(self, w: Worker, error: Optional[str]) -> None:
        """Record why a dead worker failed against the slices it held, then return them to the pool now.

        Its lease would free them after the TTL anyway; revoking it here (the process is gone) saves
        that wait, which is most of a crashed worker's cost to the job.
        """
        info = self.watch.get(w.worker_id)
        held = info.held if info is not None else []
        if error:
            for ref in held:
                ds_id, sid = ref.split("/", 1)
                ds = self._dataset(ds_id)
                if ds is not None:
                    ds.record_error(sid, w.worker_id, error)
        if not w.adopted:
            try:  # whatever the worker forked (DataLoader workers) goes with it
                os.killpg(w.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        gone = not w.adopted or getattr(w, "local", False)
        lease = info.record.get("lease") if info is not None and info.registered else None
        if gone and isinstance(lease, int):
            try:
                self.store.client.revoke_lease(lease)
            except Exception:  # noqa: BLE001 - already expired, or etcd away: the TTL frees it anyway
                pass
        self._give_back_held(held)

    def _give_back_held(self, held: List[str]) -> None:
        for ref in held:
            ds_id, sid = ref.split("/", 1)
            ds = self._dataset(ds_id)
            if ds is not None:
                ds.requeue(sid)

    def _relaunch(self, w: Worker, failure: Failure) -> None:
        cause = failure.cause
        self.relaunches[cause] = self.relaunches.get(cause, 0) + 1
        uptime = (w.ended or time.time()) - w.started
        if self.opts.policy.execution_mode == "Sync":
            # Sync: the job's workers run as one group; a failure restarts all of them.
            others = self.fleet.live()
            self.fleet.stop_all(self.opts.stop_grace, "sync")
            self._reap(False)
            for other in others:
                self.fleet.schedule_relaunch(other.slot, cause, uptime)
        self.fleet.schedule_relaunch(w.slot, cause, uptime)

    def _adopt(self) -> None:
        """Take over the workers a previous master of this job launched and that still run."""
        for wid, info in sorted(self.watch.workers.items()):
            rec = info.record
            if not info.registered or rec.get("launcher") != "master" or not isinstance(rec.get("slot"), int):
                continue
            w = AdoptedWorker(wid, rec, self.state.logs, self.watch.registered)
            if w.poll() is not None:  # died with the old master; its lease just has not expired yet
                self._give_back(w, None)
                continue
            if w.slot in self.fleet.slots:
                self.fleet.extra.append(w)
            else:
                self.fleet.adopt(w)
            self.adopted.append(wid)
        if self.adopted:
            self._log(f"adopted {len(self.adopted)} worker(s) still running from the previous master: "
                      f"{', '.join(self.adopted)}")

    def _detect_hangs(self) -> None:
        if self.hang is None:
            return
        for w in self.fleet.live():
            idle = self.hang.hung(w, self.watch.get(w.worker_id))
            if idle is not None:
                self._log(f"worker {w.worker_id} (pid {w.pid}) made no progress for {idle:.0f}s: killing it "
                          f"(--job-hang-interval={self.opts.hang_interval:g})")
                self.fleet.kill(w, "hang")

    def _replace_slow(self, view: JobView) -> None:
        if not self.slow.enabled:
            return
        live = self.fleet.live()
        # With little left to hand out, a replacement would arrive too late; speculation covers the tail.
        if sum(d.todo for d in view.datasets) < len(live):
            return
        if sum(self.fleet.replacements.values()) >= max(1, self.opts.workers):
            return
        candidates = [w for w in self.fleet.slots.values()
                      if w.poll() is None and not w.stop_reason and (not w.adopted or getattr(w, "local", False))
                      and self.fleet.replacements.get(w.slot, 0) < 2]
        inflight = {w.worker_id: self.watch.oldest_inflight(w.worker_id) for w in candidates}
        found = self.slow.find([w.worker_id for w in candidates], self.watch.durations(), inflight)
        for wid, pace, typical in found[:1]:
            w = self.fleet.find(wid)
            new = self.fleet.replace(w)
            self.relaunches["slow"] = self.relaunches.get("slow", 0) + 1
            self.replaced.append(wid)
            self._log(f"worker {wid} is slow ({pace:.2f}s per slice, its peers' median is {typical:.2f}s): "
                      f"started {new.worker_id} to replace it")

    def _retire_replaced(self) -> None:
        for w in list(self.fleet.extra):
            if w.stop_reason != "slow" or w.poll() is not None or not w.replaced_by:
                continue
            new = self.fleet.find(w.replaced_by)
            if self.watch.registered(w.replaced_by) or new is None or new.poll() is not None:
                self._log(f"retiring slow worker {w.worker_id}: {w.replaced_by} runs in its place")
                self.fleet.terminate(w, "slow", grace=5.0)

    def _stop_moot(self) -> None:
        """Every slice is committed: stop workers still busy with attempts that can no longer win.

        A worker whose lease lapsed (stopped, hung, cut off) is killed at once; one still working on
        a moot attempt gets ``completion_grace`` to notice by itself (its commit returns False, its
        next get_next_slice ends it), then SIGTERM, which unwinds it cleanly (staged output aborted,
        lease revoked), then SIGKILL.
        """
        now = time.monotonic()
        if self._complete_since is None:
            self._complete_since = now
        for w in self.fleet.live():
            info = self.watch.get(w.worker_id)
            if info is not None and info.registered:
                if info.held and now - self._complete_since >= self.opts.completion_grace:
                    self.fleet.terminate(w, "moot", grace=5.0)
            elif info is not None and info.departed_at is not None:
                # A worker exits right after revoking its lease; one still there seconds later is not exiting.
                if now - info.departed_at > 3.0:
                    self.fleet.kill(w, "moot")
            elif now - w.launched > self.opts.lease_ttl + 3:
                self.fleet.kill(w, "moot")  # never registered at all

    def _launch_due(self, complete: bool) -> None:
        # Early stop: once the data is done, nothing is started again. Checked afresh right before
        # starting anything, so a worker is not started in the instant after the last commit.
        if self.fleet.pending and (complete or (self.fleet.due() and self._complete_now())):
            self._log(f"all slices are committed: {len(self.fleet.pending)} pending worker start(s) cancelled")
            self.fleet.pending.clear()
            return
        if not self.fleet.due():
            return
        for w, cause in self.fleet.start_due():
            if cause != "start":
                self._log(f"relaunched slot {w.slot} as {w.worker_id} (pid {w.pid})")

    def _complete_now(self) -> bool:
        datasets = JobMonitor(self.store, self.opts.job_id).datasets()
        return bool(datasets) and all(d.complete for d in datasets)

    def _over(self, view: JobView) -> bool:
        if self.fleet.live() or self.fleet.pending:
            return False
        if self.opts.join_only or view.all_complete:
            return True
        if self.opts.workers == 0:
            return False  # a master for workers that join from elsewhere waits for them
        ours = {w.worker_id for w in self.fleet.all()}
        return not any(info.registered for wid, info in self.watch.workers.items() if wid not in ours)

    def _note_job_state(self, view: JobView) -> None:
        if self.opts.join_only or self.job_state != PENDING:
            return
        if view.alive_workers >= self.opts.min_workers:
            self.job_state = RUNNING
            self._write_job(RUNNING, running_since=time.time())
            if self.opts.min_workers > 1:
                self._log(f"{view.alive_workers} workers registered (--min-workers {self.opts.min_workers}): "
                          f"job running")

    def _view(self) -> JobView:
        return JobMonitor(self.store, self.opts.job_id).view()

    @staticmethod
    def _ds_ids(view: JobView) -> List[str]:
        return [d.ds_id for d in view.datasets]

    def _requeue_lost(self, view: JobView) -> None:
        """Give lost slices back (a sweep; dead workers' slices are normally given back at once)."""
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
        bad = [h for h in self.history if h.get("error")]
        if not view.datasets and bad:
            self.fail_reason = f"worker {bad[-1]['worker']} {bad[-1]['error']}"
            return FAILED
        return SUCCEEDED

    # ------------------------------------------------------------------ the end
    def _finish(self, state: str) -> int:
        view = self._view()
        if state == SUCCEEDED or (state == FAILED and view.all_complete):
            _import_sinks()
            for d in view.datasets:
                ds = self._dataset(d.ds_id)
                if ds is not None:
                    ds.finalize()
        report = self._report(state, view)
        self.state.write_json(self.state.report, report)
        if not self.opts.join_only:
            self._write_job(state, ended=time.time(), reason=self.fail_reason)
        for line in reporting.summary_lines(report, self.state.report):
            print(line, file=self.out, flush=True)
        return EXIT_CODES[state]

    def _report(self, state: str, view: JobView) -> Dict[str, Any]:
        failed, committed = [], []
        for d in view.datasets:
            ds = self._dataset(d.ds_id)
            if ds is None:
                continue
            committed += list(ds.committed())
            for sid, rec in ds.failed():
                failed.append({"dataset": d.ds_id, "slice": sid, "error": rec.get("e"), "attempts": rec.get("a")})
        stats = {wid: info.stats for wid, info in self.watch.workers.items()} if self.watch else {}
        workers = reporting.worker_rows(view, stats)
        attempts = reporting.attempts_summary(committed)
        ended = time.time()
        return {
            "job_id": self.opts.job_id,
            "state": state,
            "reason": self.fail_reason,
            "command": self.opts.command,
            "started": self.started,
            "ended": ended,
            "duration_s": round(ended - self.started, 3),
            "generation": self.generation,
            "slices": {"total": view.total, "committed": view.done, "failed": view.failed},
            "attempts": attempts,
            "speculation": reporting.speculation_summary(workers, attempts["copies_won_slices"]),
            "datasets": view.to_json()["datasets"],
            "failed_slices": failed,
            "relaunches": dict(self.relaunches),
            "replaced_slow": list(self.replaced),
            "adopted": list(self.adopted),
            "launched": self.fleet.launched if self.fleet else 0,
            "etcd_restarts": self.guard.restarts if self.guard else 0,
            "worker_exits": self.history,
            "workers": workers,
        }

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
        if self.stepped_down:
            return  # the workers and etcd belong to the master that took over
        if self.fleet is not None and self.fleet.live():
            stop_all(self.fleet.live(), self.opts.stop_grace)
        if self.key is not None and self.store is not None:
            self.key.release()
        if self.guard is not None and self.store is not None:
            # A standby polls the job record; let it see the end before its etcd goes away.
            deadline = time.monotonic() + 3.0
            try:
                while self.store.count(keys.STANDBY) and time.monotonic() < deadline:
                    time.sleep(0.1)
            except Exception:  # noqa: BLE001 - etcd already gone
                pass
        if self.session is not None:
            self.session.close()
        if self.guard is not None:
            self.guard.stop()
        elif self.etcd is not None:
            self.etcd.stop()
            try:
                os.unlink(self.state.etcd_info)
            except OSError:
                pass


def _import_sinks() -> None:
    """Make every output sink kind rebuildable here: the master may be the one to finalize a dataset
    (when the last slice ended by failing, no worker saw the dataset complete)."""
    import importlib

    for module in ("aimaster.io.files", "aimaster.io.tables"):
        try:
            importlib.import_module(module)
        except ImportError:  # an optional dependency missing: that kind cannot be in this job either
            pass
