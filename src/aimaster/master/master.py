"""The master: launches and relaunches workers, watches their progress, decides when the job is over.

All job state is in etcd, so the master can die at any moment: workers keep claiming and
committing without it (they run in sessions of their own), and a master started again for the same
job id -- or a standby waiting for the master key -- picks up where the old one was: it reuses the
job's still-running embedded etcd, *adopts* the workers its predecessor launched (watching them
through their etcd registration, since they are not its children) and only tops the count up to
``-n``. The master's own key is bound to its lease, so two masters never run one job.

Each round of the control loop (every ``poll_interval`` seconds) observes, asks the supervisor
(:mod:`aimaster.master.supervisor`, which decides from what was observed and returns actions) and
applies its actions (:mod:`aimaster.master.apply`) through the fleet and its launcher:

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

Setting up (the job's etcd, the master key, the job record) is :mod:`aimaster.master.startup`, an
``aimaster join``'s is :mod:`aimaster.master.join_setup`, adoption :mod:`aimaster.master.adopt`, the
end of a job :mod:`aimaster.master.ending`, and what a run leaves behind :mod:`aimaster.master.shutdown`.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from aimaster.data import keys, plan_integrity
from aimaster.data.connect import connect
from aimaster.data.coordinator import Dataset
from aimaster.data.etcd_server import EmbeddedEtcd
from aimaster.data.session import WorkerSession
from aimaster.data.store import Store
from aimaster.errors import AimasterError, EtcdDataError
from aimaster.master import apply, control, readback, remote, startup, stop_requests
from aimaster.master.adopt import adopt
from aimaster.master.election import MasterKey
from aimaster.master.ending import JobEnd
from aimaster.master.etcd_guard import EtcdGuard
from aimaster.master.feed import Feed
from aimaster.master.fleet import Fleet
from aimaster.master.hang import HangDetector
from aimaster.master.job_state import EXIT_CODES, JobState
from aimaster.master.join_setup import JOINERS, join_setup
from aimaster.master.join_supervisor import StopRequestFollower
from aimaster.master.launcher import LogOptions, Worker
from aimaster.master.monitor import JobMonitor, JobView
from aimaster.master.progress import ProgressDisplay, progress_interval
from aimaster.master.remote import JoinedWorkers
from aimaster.master.run_options import RunOptions  # noqa: F401
from aimaster.master.shutdown import shutdown
from aimaster.master.slice_timeout import SliceTimeout
from aimaster.master.slowness import SlowWorkerPolicy
from aimaster.master.spares import WarmSpares
from aimaster.master.state_dir import JobStateDir
from aimaster.master.supervisor import EndFacts, Supervisor
from aimaster.master.sync import SyncRestarts
from aimaster.master.wakeup import ChildExitWakeup
from aimaster.master.watch import WorkerWatch

STEPPED_DOWN_EXIT = 3
__all__ = ["Master", "RunOptions", "connect", "STEPPED_DOWN_EXIT"]


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
        self.supervisor: Optional[Supervisor] = None  # the round's decisions (made in _loop, after setup)
        self.feed: Optional[Feed] = None
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
        self.job_state: Optional[JobState] = None
        self.stop_requested = threading.Event()
        self.fail_reason: Optional[str] = None
        self.started = time.time()
        self.display: Optional[ProgressDisplay] = None
        self.stepped_down = False
        self._datasets: Dict[str, Dataset] = {}
        self._last_requeue = 0.0
        self._complete_since: Optional[float] = None
        self.metrics = None  # aimaster.metrics.JobMetrics with --metrics-port
        self._last_control_check = 0.0
        self.warnings = readback.Warnings(self._log)
        self.job_record: Dict[str, Any] = {}  # what we last wrote to `job` (never read back to write)
        self.is_master = False  # we hold the master key and wrote the job record: the job's end is ours
        self.sync: Optional[SyncRestarts] = None
        self._notes: List[str] = []  # said once we know we run the job
        self._last_sync_check = 0.0
        self._warned: set = set()
        self.wakeup = ChildExitWakeup()  # the loop's next round starts as soon as a worker exits
        self.warm: Optional[WarmSpares] = None  # --warm-spares (aimaster.master.spares)

    # ------------------------------------------------------------------ setup
    def run(self) -> int:
        self._install_signal_handlers()
        self.state.create()
        try:
            cfg = startup.etcd_config(self)
            if cfg is None:
                return EXIT_CODES[JobState.STOPPED]
            self.store = connect(cfg, self.opts.job_id)
            self.session = WorkerSession(self.store, f"master-{socket.gethostname()}-{os.getpid()}",
                                         ttl=self.opts.lease_ttl, register=False, settings=self.opts.settings)
            if self.opts.join_only:
                join_setup(self)
            else:
                code = startup.become_master(self)
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
            self.wakeup.close()
            if self.display is not None:
                self.display.close()
            try:
                shutdown(self)
            finally:
                if self.metrics is not None:  # the final values stay scrapable a while (--metrics-grace)
                    self.metrics.linger(self.opts.metrics_grace, self.job_state, self.stop_requested, self._log)
                    self.metrics.close()

    def _record_stop(self, w: Worker, signal_name: str, reason: str) -> None:
        """Say in etcd why a worker is stopped (a joined worker's supervisor acts on it)."""
        try:
            stop_requests.request(self.store, w.worker_id, signal_name, reason, self.session.worker_id)
        except AimasterError as e:  # etcd away: a local worker is signalled anyway
            self._warn_once(f"could not record the stop of worker {w.worker_id}: {e}")

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

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> int:
        opts = self.opts
        self.watch = WorkerWatch(self.store, warnings=self.warnings)
        self.feed = Feed(self.store)
        self.supervisor = Supervisor(opts.policy, opts.workers, self.hang, self.slow, self.slice_timeout is not None,
                                     opts.completion_grace, opts.lease_ttl, opts.hang_interval)
        # Worker ids stay unique across master restarts and joins (stats are kept per worker id).
        suffix = f"g{self.generation}" if self.generation > 1 or opts.join_only else ""
        self.fleet = Fleet(opts.command, lambda: startup.worker_environment(self), self.state.logs, suffix,
                           logs=LogOptions(opts.log_max_bytes, opts.log_backups, opts.tee), launcher=opts.launcher)
        if opts.launcher is not None and opts.launcher.name != "local":
            self._log(f"launcher: {opts.launcher.describe()}")
        if opts.policy.execution_mode == "Sync":
            self.sync = SyncRestarts(self.store, self.session.worker_id, self._log)
        # Why we stop a worker goes to etcd (stop/<w>); workers we cannot signal are stopped by request.
        self.fleet.on_stop = self._record_stop
        self.joined = None if opts.join_only else JoinedWorkers(self.watch, self._record_stop)
        if opts.warm_spares and not opts.join_only:
            self.warm = WarmSpares(self.store, self.fleet, opts.warm_spares, opts.workers, self.session.worker_id,
                                   self._log)
        self.follower = StopRequestFollower(self.fleet, self.store, self._log) if opts.join_only else None
        try:
            view = self._view()
            self.watch.refresh(self._ds_ids(view))
            if not opts.join_only:
                adopt(self)
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
                self.wakeup.pause(opts.poll_interval)
        except EtcdDataError as e:
            if opts.join_only:
                raise  # a joiner runs no job of its own to fail: it stops, saying why
            return self._fail_on_bad_record(e)

    def _round(self) -> Optional[int]:
        """One round of the control loop; an exit code ends the run."""
        opts = self.opts
        control.check(self)
        if self.joiner_failed:
            self.fail_reason = self.joiner_failed
            self._stop_workers()
            self._reap(False)
            return self._finish(JobState.FAILED)
        if self.stop_requested.is_set():
            self._log("stopping: terminating workers (the job can be resumed with the same --job-id)")
            self.fleet.stop_all(opts.stop_grace, self.stop_cause)
            self._reap(False)
            return self._finish(JobState.STOPPED)
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
            apply.give_back_held(self, info.held)
        if self.follower is not None:
            self.follower.follow(self.watch)  # the master's stop requests for our workers
        if self.joined is not None:
            remote.supervise(self, view, complete)  # workers of `aimaster join`s: by stop request
        if not complete:
            self._detect_hangs()
            if self.slice_timeout is not None:
                held = self.slice_timeout.attempts(self.store, self._ds_ids(view))
                beats = {wid: info.beat for wid, info in self.watch.workers.items()}
                apply.apply(self, self.slice_timeout.decide([apply.running(w) for w in self.fleet.live()], held, beats))
            self._replace_slow(view)
        self._retire_replaced()
        if self.warm is not None:
            self.warm.tick(complete, self._first_workers_registered())
        if complete:
            self._stop_moot()
        apply.requeue_lost(self, view)
        self._launch_due(complete)
        self.fleet.tick()
        self.feed.show(self, view)
        if self._over(view):
            return self._finish(self._final_state(view))
        return None

    def _stop_workers(self) -> None:
        if self.fleet is None:
            return
        self.fleet.pending.clear()
        self.fleet.stop_all(self.opts.stop_grace, "stopped")
        self._reap(True)

    def _reap(self, complete: bool) -> Optional[int]:
        for w in self.fleet.reap():
            code = apply.on_exit(self, w, complete)
            if code is not None:
                return code
        return None

    def _restart_all(self, cause: str) -> None:
        """Stop every worker we supervise and relaunch each in its slot, backing off by its own uptime."""
        owners = {w.slot: w for w in self.fleet.slots.values() if w.poll() is None}
        self.fleet.stop_all(self.opts.stop_grace, "sync")
        self._reap(False)
        for slot, w in sorted(owners.items()):
            self.fleet.schedule_relaunch(slot, cause, apply.uptime(w))

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

    def _master_decides(self) -> bool:
        """A joiner leaves hang and slow decisions to the job's master while there is one."""
        return self.follower is not None and self.follower.master_decides()

    def _detect_hangs(self) -> None:
        if self.hang is None or self._master_decides():
            return
        live = [apply.running(w) for w in self.fleet.live()]
        apply.apply(self, self.supervisor.hung(live, self.watch.workers))

    def _replace_slow(self, view: JobView) -> None:
        if not self.slow.enabled or self._master_decides():
            return
        slot_workers = [apply.running(w) for w in self.fleet.slots.values() if w.poll() is None]
        inflight = {w.worker_id: self.watch.oldest_inflight(w.worker_id) for w in slot_workers}
        startup = (self.warm.startup() if self.warm is not None else None) or self._startup_seconds()
        apply.apply(self, self.supervisor.slow(slot_workers, len(self.fleet.live()), sum(d.todo for d in view.datasets),
                                               self.fleet.replacements, self.opts.workers, self.watch.durations(),
                                               inflight, startup))

    def _first_workers_registered(self) -> bool:
        """Every slot's worker has registered and none is due: a spare started now takes no core from
        a worker's own start-up."""
        return not self.fleet.pending and bool(self.fleet.slots) and \
            all(self.watch.registered(w.worker_id) for w in self.fleet.slots.values())

    def _startup_seconds(self) -> Optional[float]:
        """The median time this run's workers took from launch to registration (None: none yet).
        Adopted workers were launched by another master: their start is unknown."""
        took = []
        for w in self.fleet.all():
            info = self.watch.get(w.worker_id)
            if not w.adopted and info is not None and info.registered_at is not None:
                took.append(max(0.0, info.registered_at - w.launched))
        return statistics.median(took) if took else None

    def _retire_replaced(self) -> None:
        slow = []
        for w in self.fleet.extra:
            if w.stop_reason == "slow" and w.poll() is None and w.replaced_by:
                new = self.fleet.find(w.replaced_by)
                ready = self.watch.registered(w.replaced_by) or new is None or new.poll() is not None
                slow.append((w.worker_id, w.replaced_by, ready))
        apply.apply(self, Supervisor.retire(slow))

    def _stop_moot(self) -> None:
        """Every slice is committed: stop workers still busy with attempts that can no longer win."""
        now = time.monotonic()
        if self._complete_since is None:
            self._complete_since = now
        live = [apply.running(w) for w in self.fleet.live()]
        apply.apply(self, self.supervisor.moot(live, self.watch.workers, self._complete_since, now))

    def _launch_due(self, complete: bool) -> None:
        # Early stop: once the data is done, nothing is started again. Checked afresh right before
        # starting anything, so a worker is not started in the instant after the last commit.
        if self.fleet.pending:
            cancel = self.supervisor.early_stop(len(self.fleet.pending),
                                                complete or bool(self.fleet.due() and self._complete_now()))
            if cancel is not None:
                apply.apply(self, [cancel])
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
        ours = {w.worker_id for w in self.fleet.all()}
        others = any(info.registered for wid, info in self.watch.workers.items() if wid not in ours)
        live, pending = len(self.fleet.live()), len(self.fleet.pending)
        waiting = others or (not live and not pending and view.all_complete and self.store.count(JOINERS) > 0)
        return Supervisor.over(EndFacts(live, pending, self.opts.join_only, view.all_complete, others, waiting,
                                        self._complete_since, self.opts.lease_ttl, self.opts.workers))

    def _note_job_state(self, view: JobView) -> None:
        if self.opts.join_only or self.job_state != JobState.PENDING:
            return
        if view.alive_workers >= self.opts.min_workers:
            self.job_state = JobState.RUNNING
            self._write_job(JobState.RUNNING, running_since=time.time())
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
            plan, meta = self.store.get(ds.k.plan)
            if plan is None:
                return None
            # The plan this master keeps judges completion: a plan put in place of the planner's
            # before this first read must be caught here (aimaster.data.plan_integrity).
            readback.check_plan(plan, self.store.key(ds.k.plan))
            ds.adopt_read_plan(plan, meta)
            plan_integrity.check_against_slices(self.store, ds.k, plan, meta)
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
        self.wakeup.install()
