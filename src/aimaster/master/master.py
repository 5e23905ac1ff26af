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

Whatever the master reads back from etcd is validated (:mod:`aimaster.master.readback`): a malformed
per-worker record is ignored with a warning; a malformed job record, master key or plan ends the
job Failed, with the key named in the reason and a report, as does any other error that would stop
the master: a job is never left "Running" by a master that has gone.
"""

from __future__ import annotations

import os
import secrets
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
from aimaster.data.store import EtcdConfig, Store, job_prefix, retry_seconds_from_env
from aimaster.errors import AimasterError, EtcdDataError, EtcdUnavailableError, JobError
from aimaster.master import control, hopeless, preempted, readback, remote, retry, slice_timeout, stop_requests
from aimaster.master.election import MasterKey
from aimaster.master.ending import EXIT_CODES, FAILED, PENDING, RUNNING, STOPPED, SUCCEEDED, TERMINAL, JobEnd
from aimaster.master.etcd_guard import EtcdGuard
from aimaster.master.fleet import Fleet
from aimaster.master.hang import HangDetector
from aimaster.master.join_supervisor import StopRequestFollower
from aimaster.master.launcher import AdoptedWorker, LogOptions, Worker, runs_worker, stop_all
from aimaster.master.monitor import JobMonitor, JobView
from aimaster.master.policy import Failure, FaultPolicy, classify_exit
from aimaster.master.progress import ProgressDisplay, progress_interval
from aimaster.master.remote import JoinedWorkers
from aimaster.master.slice_timeout import SliceTimeout
from aimaster.master.slowness import SlowWorkerPolicy
from aimaster.master.state_dir import JobStateDir
from aimaster.master.sync import SyncRestarts
from aimaster.master.watch import WorkerWatch

STEPPED_DOWN_EXIT = 3
# An `aimaster join` supervisor, bound to its lease: the master waits for these to leave at the end,
# so that it does not stop the job's etcd under a joiner still writing its own report.
JOINERS = "joiners/"


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
    metrics_grace: float = 0.0  # seconds the endpoint serves the final values after the job ended
    log_max_bytes: int = 50 * 1024 * 1024  # per worker log file, before it is rotated
    log_backups: int = 3  # rotated files kept per worker log (worker-N.out.1 ...)
    tee: bool = False  # also print workers' output on the console, each line prefixed with its worker
    slice_timeout: Optional[float] = None  # abandon attempts running longer (aimaster.master.slice_timeout)
    retry_failed: bool = False  # `aimaster retry`: put the failed slices back first (aimaster.master.retry)
    listen: Optional[Any] = None  # --listen: aimaster.security.listen.Listen (None: loopback only)
    launcher: Optional[Any] = None  # --launcher: aimaster.master.launchers.Launcher (None: local processes)


def connect(cfg: EtcdConfig, job_id: str, probe_seconds: float = 5.0) -> Store:
    """A store for the job, failing fast (one line) when etcd is unreachable or refuses us."""
    from aimaster.security.diagnose import check_client_cert, refine

    check_client_cert(cfg)  # an expired certificate: one line now, not after the probe
    # A shorter retry window ($AIMASTER_ETCD_RETRY_SECONDS) shortens the probe too.
    probe = EtcdConfig(**{**cfg.__dict__, "retry_seconds": min(probe_seconds, cfg.retry_seconds)})
    store = Store(probe, job_prefix(job_id))
    key = store.key(keys.JOB)
    # Raises EtcdUnavailableError naming the endpoints. The value is not decoded here: what a
    # malformed job record means is for the caller to say (the master ends the job, naming it).
    try:
        store.call(f"get {key}", lambda c: c.get(key))
    except EtcdUnavailableError as e:
        raise refine(cfg, e)  # a refused TLS handshake looks like a dead server to gRPC: say which
    store.cfg = cfg
    return store


class Master(JobEnd):
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
        self.slice_timeout = SliceTimeout(opts.slice_timeout) if opts.slice_timeout else None
        self.stop_cause = "stopped"  # "preempted" once SIGTERM asked us to stop
        self.joiner_failed: Optional[str] = None  # an `aimaster join`'s policy failed the job: why
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
        self.warnings = readback.Warnings(self._log)
        self.job_record: Dict[str, Any] = {}  # what we last wrote to `job` (never read back to write)
        self.is_master = False  # we hold the master key and wrote the job record: the job's end is ours
        self.sync: Optional[SyncRestarts] = None
        self._notes: List[str] = []  # said once we know we run the job
        self._last_sync_check = 0.0
        self._warned: set = set()

    # ------------------------------------------------------------------ setup
    def run(self) -> int:
        self._install_signal_handlers()
        self.state.create()
        try:
            cfg = self._etcd_config()
            if cfg is None:
                return EXIT_CODES[STOPPED]
            self.store = connect(cfg, self.opts.job_id)
            self.session = WorkerSession(self.store, f"master-{socket.gethostname()}-{os.getpid()}",
                                         ttl=self.opts.lease_ttl, register=False)
            if self.opts.join_only:
                self._join_setup()
            else:
                code = self._become_master()
                if code is not None:
                    return code
            for note in self._notes:
                self._log(note)
            self.display = ProgressDisplay(self.out, interval=progress_interval(), enabled=self.opts.progress)
            if self.opts.metrics_port is not None and not self.opts.join_only:
                from aimaster.metrics import JobMetrics

                self.metrics = JobMetrics(self.opts.job_id, self.opts.metrics_port)
                self._log(f"metrics: http://0.0.0.0:{self.opts.metrics_port}/metrics")
            return self._loop()
        except Exception as e:
            self._end_after_crash(e)
            raise
        finally:
            if self.display is not None:
                self.display.close()
            try:
                self._shutdown()
            finally:
                if self.metrics is not None:  # the final values stay scrapable a while (--metrics-grace)
                    self.metrics.linger(self.opts.metrics_grace, self.job_state, self.stop_requested, self._log)
                    self.metrics.close()

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
            # Under the lock, so that two runs of one job started at once share one etcd: the
            # second finds the first's running instead of starting another on the same data.
            with self.state.etcd_lock():
                endpoint = self.state.running_etcd()
                if endpoint is None:
                    self.state.security().set_listen(self.opts.listen)  # TLS material made here, kept
                    self.etcd = self.state.start_etcd()
                    endpoint = self.etcd.endpoint
        if self.etcd is None:
            self._notes.append(f"reusing the job's embedded etcd still running at {endpoint}")
        if not self.opts.join_only:
            from aimaster.security.publish import publish_bundle

            self._notes += publish_bundle(self.state, endpoint, self.opts.workers, self.opts.command,
                                          ignored_listen=self.opts.listen if self.etcd is None else None)
        return self.state.client_config(endpoint, retry_seconds=retry_seconds_from_env())

    def _become_master(self) -> Optional[int]:
        """Take the master key (or stand by for it), then write the job record. An exit code ends the run."""
        self.key = MasterKey(self.session)
        if self.opts.standby:
            code = self._stand_by()
            if code is not None:
                return code
        elif not self.key.take(patience=self.opts.lease_ttl * 2 + 2, give_up=self.key.running_here):
            other = self.key.holder() or {}
            # The embedded etcd, if we started it, serves that master now: it stops it at the end.
            self.etcd = None
            raise JobError(f"job {self.opts.job_id} is already running: its master is pid {other.get('pid')} "
                           f"on {other.get('host')}; add workers with 'aimaster join --job-id {self.opts.job_id}', "
                           f"or wait with 'aimaster run --standby'")
        if self.opts.etcd is None:
            # The job's embedded etcd is ours now, whether we started it or inherited it from a
            # master that died: keep it alive, and stop it when the job ends.
            self.guard = EtcdGuard(self.state, self.etcd, self._log).start()
        try:
            previous = readback.check_job(self.store.get_value(keys.JOB), self.store.key(keys.JOB)) or {}
        except EtcdDataError as e:
            previous, bad_record = {}, e
        else:
            bad_record = None
        if previous.get("state") == SUCCEEDED:
            self._check_inputs_unchanged()  # new files in its input would otherwise go unprocessed, silently
            self._log(f"job {self.opts.job_id} already succeeded; nothing to do")
            return 0
        self.generation = previous.get("generation", 0) + 1
        # A stop request was for the run it stopped; this run starts afresh.
        control.clear_stop(self.store)
        # With --min-workers above 1 the job is Pending until that many workers are registered.
        self.job_state = PENDING if self.opts.min_workers > 1 else RUNNING
        self.job_record = dict(previous)
        self.is_master = True
        self._write_job(self.job_state, command=self.opts.command, workers=self.opts.workers,
                        generation=self.generation, resumed=bool(previous),
                        created=previous.get("created", self.started), ended=None, reason=None,
                        min_workers=self.opts.min_workers, options=self._job_options())
        if bad_record is not None:
            return self._fail_on_bad_record(bad_record)
        if self.opts.retry_failed:
            retry.reset_failed(self.session, self._notes.append)
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
                try:
                    job = readback.check_job(st.get_value(keys.JOB), st.key(keys.JOB)) or {}
                except EtcdDataError as e:
                    self.warnings.note([(st.key(keys.JOB), 0, str(e))])
                    job = {}
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
        """`aimaster join`: follow the job's own settings (hang detection, speculation, fault policy)."""
        me = f"{JOINERS}{socket.gethostname()}-{os.getpid()}"

        def announce() -> None:
            self.session.leased(lambda lease: self.store.put(me, {"pid": os.getpid(), "t": time.time()}, lease=lease))

        announce()
        # Cut off from etcd past the TTL, our key went with the old lease: the master would no longer
        # wait for us at the end and could stop the job's etcd under our workers. Announce again.
        self.session.on_new_lease(announce)
        try:
            record = self.store.get_value(keys.JOB)
            options = (readback.check_job(record, self.store.key(keys.JOB)) or {}).get("options") or {}
        except EtcdDataError as e:
            self._log(f"warning: ignoring {e}; following this command's own settings")
            options = {}
        o = self.opts
        if isinstance(options.get("hang_detection"), bool) and not o.hang_detection:
            o.hang_detection = options["hang_detection"]
            if isinstance(options.get("hang_interval"), (int, float)):
                o.hang_interval = float(options["hang_interval"])
            self.hang = HangDetector(o.hang_interval) if o.hang_detection else None
        for name in ("speculation", "speculation_multiplier", "max_slice_copies", "max_slice_attempts"):
            if name in options and isinstance(options[name], type(getattr(o, name))):
                setattr(o, name, options[name])
        if isinstance(options.get("slice_timeout"), (int, float)) and options["slice_timeout"] > 0:
            self.slice_timeout = SliceTimeout(options["slice_timeout"])  # each supervisor times its own workers
        try:  # Sync mode restarts every machine's workers: a joiner must know the job runs in it
            o.policy = FaultPolicy(options.get("execution_mode", o.policy.execution_mode),
                                   options.get("fault_tolerant_policy", o.policy.policy),
                                   options.get("max_num_of_same_error", o.policy.max_same_error))
        except (AimasterError, TypeError):
            self._log("warning: ignoring the job's malformed fault policy options")
        if isinstance(options.get("fail_fast"), bool):
            o.policy.fail_fast = options["fail_fast"]
        for name, attr in (("slow_worker_multiplier", "slow_multiplier"),
                           ("slow_worker_min_samples", "slow_min_samples"), ("completion_grace", "completion_grace")):
            value = options.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                setattr(o, attr, type(getattr(o, attr))(value))
        self.slow = SlowWorkerPolicy(o.slow_multiplier, max(1, int(o.slow_min_samples)))
        # Our workers' ids end in g<this>: random, so that joiners started in the same second (all the
        # pods of a Kubernetes Job) never share worker ids, which key their stats, beats and stop requests.
        self.generation = 2 + secrets.randbelow(10**9)

    def _record_stop(self, w: Worker, signal_name: str, reason: str) -> None:
        """Say in etcd why a worker is stopped (a joined worker's supervisor acts on it)."""
        try:
            stop_requests.request(self.store, w.worker_id, signal_name, reason, self.session.worker_id)
        except AimasterError as e:  # etcd away: a local worker is signalled anyway
            self._warn_once(f"could not record the stop of worker {w.worker_id}: {e}")

    def _job_options(self) -> Dict[str, Any]:
        o = self.opts
        return {"hang_detection": o.hang_detection, "hang_interval": o.hang_interval, "lease_ttl": o.lease_ttl,
                "max_slice_attempts": o.max_slice_attempts, "speculation": o.speculation,
                "speculation_multiplier": o.speculation_multiplier, "max_slice_copies": o.max_slice_copies,
                "slow_worker_multiplier": o.slow_multiplier, "slow_worker_min_samples": o.slow_min_samples,
                "completion_grace": o.completion_grace, "fail_fast": getattr(o.policy, "fail_fast", True),
                "execution_mode": o.policy.execution_mode,
                "fault_tolerant_policy": o.policy.policy, "max_num_of_same_error": o.policy.max_same_error,
                "slice_timeout": o.slice_timeout}

    def _write_job(self, state: str, **extra: Any) -> None:
        # From what we wrote last, never from what reads back: a value written over ours by hand
        # must not leak into the job's record (nor stop us recording its end).
        record = dict(self.job_record)
        record.update({"state": state, "updated": time.time()}, **extra)
        self.store.put(keys.JOB, record)
        self.job_record = record
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
        if self.opts.etcd is None:  # the job's embedded etcd: workers get the worker's credentials, not root's
            from aimaster.security.publish import worker_config

            env.update(worker_config(self.state, self.store.cfg).to_env())
        else:
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
        self.watch = WorkerWatch(self.store, warnings=self.warnings)
        # Worker ids stay unique across master restarts and joins (stats are kept per worker id).
        suffix = f"g{self.generation}" if self.generation > 1 or opts.join_only else ""
        self.fleet = Fleet(opts.command, self._etcd_env, self.state.logs, suffix,
                           logs=LogOptions(opts.log_max_bytes, opts.log_backups, opts.tee), launcher=opts.launcher)
        if opts.launcher is not None and opts.launcher.name != "local":
            self._log(f"launcher: {opts.launcher.describe()}")
        if opts.policy.execution_mode == "Sync":
            self.sync = SyncRestarts(self.store, self.session.worker_id, self._log)
        # Why we stop a worker goes to etcd (stop/<w>); workers we cannot signal are stopped by request.
        self.fleet.on_stop = self._record_stop
        self.joined = None if opts.join_only else JoinedWorkers(self.watch, self._record_stop)
        self.follower = StopRequestFollower(self.fleet, self.store, self._log) if opts.join_only else None
        try:
            view = self._view()
            self.watch.refresh(self._ds_ids(view))
            if not opts.join_only:
                self._adopt()
            if view.all_complete:
                if not opts.join_only:
                    self._check_inputs_unchanged()  # no worker will start to look at the input
                self._log("all slices are already committed; no worker is started")
            else:
                free = [s for s in range(opts.workers) if s not in self.fleet.slots]
                for i, slot in enumerate(free):
                    self.fleet.schedule(slot, i * opts.launch_interval, "start")
            while True:
                code = self._round()
                if code is not None:
                    return code
                time.sleep(opts.poll_interval)
        except EtcdDataError as e:
            if opts.join_only:
                raise  # a joiner runs no job of its own to fail: it stops, saying why
            return self._fail_on_bad_record(e)

    def _round(self) -> Optional[int]:
        """One round of the control loop; an exit code ends the run."""
        opts = self.opts
        self._check_control()
        if self.joiner_failed:
            self.fail_reason = self.joiner_failed
            self._stop_workers()
            self._reap(False)
            return self._finish(FAILED)
        if self.stop_requested.is_set():
            self._log("stopping: terminating workers (the job can be resumed with the same --job-id)")
            self.fleet.stop_all(opts.stop_grace, self.stop_cause)
            self._reap(False)
            return self._finish(STOPPED)
        if self.key is not None and self.key.still_ours() is False:
            self.stepped_down = True
            self._log(f"another master took over job {opts.job_id}; stepping down (the workers keep running)")
            return STEPPED_DOWN_EXIT
        view = self._view()
        self._check_job_record(view)
        departed = self.watch.refresh(self._ds_ids(view))
        complete = view.all_complete
        self._note_job_state(view)
        self._follow_sync_restarts(complete)
        code = self._reap(complete)
        if code is not None:
            return code
        for info in departed:
            self._give_back_held(info.held)
        if self.follower is not None:
            self.follower.follow(self.watch)  # the master's stop requests for our workers
        if self.joined is not None:
            remote.supervise(self, view, complete)  # workers of `aimaster join`s: by stop request
        if not complete:
            self._detect_hangs()
            if self.slice_timeout is not None:
                self.slice_timeout.enforce(self, self._ds_ids(view))
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
        return None

    def _stop_workers(self) -> None:
        if self.fleet is None:
            return
        self.fleet.pending.clear()
        self.fleet.stop_all(self.opts.stop_grace, "stopped")
        self._reap(True)

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
            failed = control.fail_requested(self.store)
            if failed:
                self._log(f"an `aimaster join` ended job {self.opts.job_id}: {failed}")
                self.joiner_failed = failed
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
        if preempted.handle(self, w, entry, complete):
            return None  # SIGTERM from outside: slices given back, relaunched; not a failure
        if w.stop_reason == "hang":
            failure = Failure("hang", int(opts.hang_interval), w.last_error_line())
        elif w.stop_reason == slice_timeout.STOP_REASON and self.slice_timeout is not None:
            entry["stopped"] = w.stop_reason  # the slice's failure (recorded on it), not the worker's
            self._give_back(w, None)
            return self.slice_timeout.relaunch(self, w, complete)
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
            self._stop_workers()
            return self._finish(FAILED)
        self._log(f"worker {w.worker_id} (pid {w.pid}) {failure.describe()}")
        reason = opts.policy.record(failure)
        if reason is None and opts.policy.fail_fast:
            reason = hopeless.verdict(self, w, failure)  # the same crash on every slot: stop relaunching
        if reason is not None:
            self.fail_reason = reason
            self._stop_workers()
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
                self._on_slice(ds_id, sid, lambda ds, sid=sid: ds.record_error(sid, w.worker_id, error))
        if not w.adopted:
            w.kill_leftovers()  # whatever the worker forked (DataLoader workers) goes with it
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
            self._on_slice(ds_id, sid, lambda ds, sid=sid: ds.requeue(sid))

    def _on_slice(self, ds_id: str, sid: str, action) -> None:
        """Record an error against a slice or hand it back: a dead worker's slices come back by their
        lease anyway, so a malformed record of that slice is warned about, never fatal here."""
        try:
            ds = self._dataset(ds_id)
            if ds is not None:
                action(ds)
        except EtcdDataError as e:
            self._warn_once(f"slice {ds_id}/{sid}: {e}")

    def _relaunch(self, w: Worker, failure: Failure) -> None:
        cause = failure.cause
        self.relaunches[cause] = self.relaunches.get(cause, 0) + 1
        if self.sync is not None:
            # Sync: the job's workers run as one group; a failure restarts all of them, everywhere.
            epoch = self.sync.bump(cause)
            self._log(f"--job-execution-mode=Sync: restarting every worker of the job (restart {epoch})")
            self._restart_all(cause)
        self.fleet.schedule_relaunch(w.slot, cause, _uptime(w))

    def _restart_all(self, cause: str) -> None:
        """Stop every worker we supervise and relaunch each in its slot, backing off by its own uptime."""
        owners = {w.slot: w for w in self.fleet.slots.values() if w.poll() is None}
        self.fleet.stop_all(self.opts.stop_grace, "sync")
        self._reap(False)
        for slot, w in sorted(owners.items()):
            self.fleet.schedule_relaunch(slot, cause, _uptime(w))

    def _follow_sync_restarts(self, complete: bool) -> None:
        """Sync mode: another supervisor of the job (a joiner, the master) restarted its workers."""
        if self.sync is None or complete or time.monotonic() - self._last_sync_check < 1.0:
            return
        self._last_sync_check = time.monotonic()
        record = self.sync.newer()
        if record is not None:
            self._log(f"--job-execution-mode=Sync: {record.get('by')} restarted the job's workers "
                      f"(restart {record.get('epoch')}, {record.get('cause')}): restarting ours")
            self._restart_all(str(record.get("cause") or "sync"))

    def _adopt(self) -> None:
        """Take over the workers a previous master of this job launched and that still run."""
        for wid, info in sorted(self.watch.workers.items()):
            rec = info.record  # validated (readback.registration_problem): slot and pid are integers
            if not info.registered or rec.get("launcher") != "master" or not isinstance(rec.get("slot"), int):
                continue
            w = AdoptedWorker(wid, rec, self.state.logs, self.watch.registered)
            if w.poll() is not None:  # died with the old master; its lease just has not expired yet
                self._give_back(w, None)
                continue
            if w.local and runs_worker(w.pid, wid, self.opts.job_id) is False:
                self._warn_once(f"not adopting {wid}: its registration names pid {w.pid}, which is no worker of "
                                f"job {self.opts.job_id}")
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
        if self.hang is None or (self.follower is not None and self.follower.master_decides()):
            return
        for w in self.fleet.live():
            idle = self.hang.hung(w, self.watch.get(w.worker_id))
            if idle is not None:
                self._log(f"worker {w.worker_id} (pid {w.pid}) made no progress for {idle:.0f}s: killing it "
                          f"(--job-hang-interval={self.opts.hang_interval:g})")
                self.fleet.kill(w, "hang")

    def _replace_slow(self, view: JobView) -> None:
        if not self.slow.enabled or (self.follower is not None and self.follower.master_decides()):
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
        datasets = self._monitor().datasets()
        return bool(datasets) and all(d.complete for d in datasets)

    def _over(self, view: JobView) -> bool:
        if self.fleet.live() or self.fleet.pending:
            return False
        if self.opts.join_only:
            return True
        ours = {w.worker_id for w in self.fleet.all()}
        others = any(info.registered for wid, info in self.watch.workers.items() if wid not in ours)
        if view.all_complete:
            # Workers that joined from elsewhere see the end by themselves within moments (one may be
            # just starting), then their supervisor writes its report: stopping the job's etcd under
            # them would leave them retrying into an error.
            since = self._complete_since if self._complete_since is not None else time.monotonic()
            waiting = others or self.store.count(JOINERS) > 0
            return not waiting or time.monotonic() - since > self.opts.lease_ttl + 5
        if self.opts.workers == 0:
            return False  # a master for workers that join from elsewhere waits for them
        return not others

    def _note_job_state(self, view: JobView) -> None:
        if self.opts.join_only or self.job_state != PENDING:
            return
        if view.alive_workers >= self.opts.min_workers:
            self.job_state = RUNNING
            self._write_job(RUNNING, running_since=time.time())
            if self.opts.min_workers > 1:
                self._log(f"{view.alive_workers} workers registered (--min-workers {self.opts.min_workers}): "
                          f"job running")

    def _monitor(self) -> JobMonitor:
        return JobMonitor(self.store, self.opts.job_id, dataset=self._dataset, warnings=self.warnings)

    def _view(self, strict: bool = True) -> JobView:
        # A joiner runs no job of its own: what it cannot read it leaves out, and goes on.
        return self._monitor().view(strict=strict and not self.opts.join_only)

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
            try:
                ds = self._dataset(d.ds_id)
                if ds is not None:
                    ds.requeue_lost()
            except EtcdDataError as e:  # a malformed slice record; waiting workers sweep too
                self._warn_once(f"requeueing lost slices of dataset {d.ds_id}: {e}")

    def _check_inputs_unchanged(self) -> None:
        """A resumed job with nothing left to do still refuses an input that changed since it was
        planned (JobError, one line): workers do this check, but none is started here."""
        from aimaster.io import input_check

        for rel in self.store.keys(keys.DATASETS):
            if rel.endswith("/plan"):
                ds = self._dataset(rel.split("/", 1)[0])
                if ds is not None:
                    input_check.ensure_unchanged_from_plan(self.session, ds, self.opts.job_id)

    def _dataset(self, ds_id: str) -> Optional[Dataset]:
        if ds_id not in self._datasets:
            ds = Dataset(self.session, ds_id, self.opts.max_slice_attempts)
            if ds.load_plan() is None:
                return None
            self._datasets[ds_id] = ds
        return self._datasets[ds_id]

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self._log(f"warning: {message}")

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
            # SIGTERM is a preemption of this host (`aimaster join` relays it to its workers);
            # Ctrl-C is a user stopping the job.
            self.stop_cause = "preempted" if signum == signal.SIGTERM else "stopped"
            self.stop_requested.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

    def _shutdown(self) -> None:
        if self.stepped_down:
            return  # the workers and etcd belong to the master that took over
        if self.fleet is not None and self.fleet.live():
            stop_all(self.fleet.live(), self.opts.stop_grace)
        if self.opts.launcher is not None:
            self.opts.launcher.close()  # no Ray actor left behind
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


def _uptime(w: Worker) -> float:
    return (w.ended or time.time()) - w.started
