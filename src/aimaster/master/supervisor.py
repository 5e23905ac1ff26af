"""The supervisor's decisions: from what a round observed, which actions to take.

Following Ray Data's split of ``streaming_executor.py`` (the loop) from ``streaming_executor_state.py``
(the decisions), the master's loop (:mod:`aimaster.master.master`) only observes -- worker exits, beats,
slice durations, the job's slice counts -- and applies; everything it *decides* is here, as functions
of the observed state that return :mod:`aimaster.master.actions` values:

* a worker exit (:meth:`Supervisor.on_exit`): a preemption (relaunched at once, not a failure), the
  master's own stop, a slice timeout, or a failure classified and judged by the fault policy
  (``--fault-tolerant-policy``, ``--max-num-of-same-error``, a user error, a hopeless crash), which
  relaunches the slot (Async) or the whole group (Sync), or fails the job;
* hung workers (:meth:`Supervisor.hung`), slow ones (:meth:`Supervisor.slow`), workers left busy
  once every slice is committed (:meth:`Supervisor.moot`) and pending starts once the data is done
  (:meth:`Supervisor.early_stop`).

What it remembers between rounds is the evidence its decisions accumulate: the fault policy's
same-error counts and the hopeless-crash evidence. It reads no etcd and touches no process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from aimaster.data.runtime import USER_ERROR_EXIT
from aimaster.master import actions as act
from aimaster.master import hopeless, slice_timeout
from aimaster.master.hang import HangDetector
from aimaster.master.policy import Failure, FaultPolicy, classify_exit
from aimaster.master.preempted import CAUSE as PREEMPTED
from aimaster.master.preempted import RELAUNCH_DELAY
from aimaster.master.slowness import SlowWorkerPolicy
from aimaster.master.watch import WorkerInfo

USER_ERROR_PREFIX = "aimaster: error: "


def _no_stderr(lines: int) -> Sequence[str]:
    return ()


@dataclass(frozen=True)
class WorkerExit:
    """One reaped worker, as the loop saw it.

    ``stderr(n)`` gives its last ``n`` stderr lines; it is called only when a failure must be
    described (reading waits for the worker's log pump to drain).
    """

    worker_id: str
    slot: int
    pid: int
    returncode: Optional[int]
    uptime: float
    adopted: bool = False
    stop_reason: Optional[str] = None  # the supervisor's own doing: hang, slow, moot, sync, stopped, ...
    preempted: bool = False  # it marked itself preempted (SIGTERM from outside) before exiting
    oom: Optional[bool] = None  # the kernel's OOM killer fired while it ran (None: cannot tell)
    held: Tuple[str, ...] = ()  # "<dataset>/<slice>" it held at its last heartbeat
    stderr: Callable[[int], Sequence[str]] = field(default=_no_stderr, compare=False)

    def last_error_line(self) -> str:
        tail = list(self.stderr(5))
        return tail[-1].strip()[:500] if tail else ""


@dataclass(frozen=True)
class JobFacts:
    """What an exit's decision depends on beyond the worker itself."""

    complete: bool  # every planned slice is committed
    stopping: bool = False  # a stop was requested (Ctrl-C, SIGTERM, aimaster stop)
    committed: bool = False  # a worker this supervisor runs (or ran) committed a slice in this run


@dataclass(frozen=True)
class ExitOutcome:
    """The decision on one exit: what to add to its entry in the report's ``worker_exits``, then the actions."""

    entry: Mapping[str, Any]
    actions: Tuple[Any, ...]
    failure: Optional[Failure] = None


@dataclass(frozen=True)
class Running:
    """A live worker, as the loop saw it."""

    worker_id: str
    slot: int
    pid: int
    launched: float  # time.monotonic() when it was started (or adopted)
    stop_reason: Optional[str] = None
    adopted: bool = False
    local: bool = True  # ours to signal: launched by us, or adopted on this host


@dataclass(frozen=True)
class EndFacts:
    """What decides whether a run is over (:meth:`Supervisor.over`)."""

    live: int  # our workers still running
    pending: int  # our worker starts still due
    join_only: bool
    all_complete: bool
    others_registered: bool  # workers we did not start are registered
    others_waiting: bool  # ... or an `aimaster join` is still announced
    complete_since: Optional[float]  # monotonic time the data was first seen done
    lease_ttl: float
    workers: int  # -n


def too_late(todo: int, live: int, typical: float, startup: Optional[float]) -> bool:
    """Whether the ``live - 1`` healthy workers, each taking ``typical`` seconds a slice, will have
    handed out the ``todo`` free slices within twice a worker's ``startup`` (None: not known yet)."""
    if startup is None:
        return False
    return todo * typical / max(1, live - 1) < 2 * startup


class Supervisor:
    """The per-round decisions of one supervisor (the master, or an ``aimaster join``)."""

    def __init__(self, policy: FaultPolicy, slots: int, hang: Optional[HangDetector] = None,
                 slow: Optional[SlowWorkerPolicy] = None, slice_timeout_on: bool = False,
                 completion_grace: float = 1.0, lease_ttl: float = 10.0, hang_interval: Optional[float] = None):
        self.policy = policy
        # What a hang kill reports, also when the master (not this supervisor's detector) found the hang.
        self.hang_interval = hang_interval if hang_interval is not None else (hang.interval if hang else 600.0)
        self.slots = slots
        self.hang = hang
        self.slow_policy = slow or SlowWorkerPolicy(0)
        self.slice_timeout_on = slice_timeout_on
        self.completion_grace = completion_grace
        self.lease_ttl = lease_ttl
        self.crashes = hopeless.HopelessCrashes(slots)

    @property
    def sync(self) -> bool:
        return self.policy.execution_mode == "Sync"

    # ------------------------------------------------------------------ exits
    def on_exit(self, w: WorkerExit, job: JobFacts) -> ExitOutcome:
        """A worker ended: how to record it, and whether to relaunch it, restart the group or fail the job."""
        entry: Dict[str, Any] = {"adopted": True, "exit": None} if w.adopted else {}
        if w.preempted and not w.stop_reason and w.slot >= 0:
            return self._preempted(w, job, entry)
        failure: Optional[Failure] = None
        if w.stop_reason == "hang":
            failure = Failure("hang", int(self.hang_interval), w.last_error_line())
        elif w.stop_reason == slice_timeout.STOP_REASON and self.slice_timeout_on:
            entry["stopped"] = w.stop_reason  # the slice's failure (recorded on it), not the worker's
            actions: List[Any] = [act.GiveBack(w.worker_id)]
            if not job.complete and not job.stopping:
                actions.append(act.Relaunch(w.slot, slice_timeout.STOP_REASON, w.uptime))
            return ExitOutcome(entry, tuple(actions))
        elif w.stop_reason:
            entry["stopped"] = w.stop_reason  # the supervisor's own doing: slow, moot, sync, stopped
        elif w.adopted:
            if not job.complete:
                failure = Failure("lost", 0, w.last_error_line())
        elif w.returncode is not None and w.returncode != 0:
            failure = classify_exit(w.returncode, w.last_error_line(), w.oom)
        if failure is not None:
            entry["error"] = failure.describe()
            entry["stderr_tail"] = list(w.stderr(10))
        actions = [act.GiveBack(w.worker_id, failure.describe() if failure else None)]
        if failure is not None and not job.complete:
            actions += self._judge(w, failure, job)
        return ExitOutcome(entry, tuple(actions), failure)

    def _preempted(self, w: WorkerExit, job: JobFacts, entry: Dict[str, Any]) -> ExitOutcome:
        """SIGTERM from outside: slices given back, relaunched at once; nothing reaches the fault policy."""
        entry["preempted"] = True
        actions: List[Any] = [
            act.Log(f"worker {w.worker_id} (pid {w.pid}) was preempted (SIGTERM): its slices went back at once"
                + ("" if job.complete else "; relaunching it")),
            act.GiveBack(w.worker_id)]
        if not job.complete:
            if self.sync:
                actions.append(act.RestartAll(PREEMPTED, announce=False))  # the group lost a member
            actions.append(act.Relaunch(w.slot, PREEMPTED, w.uptime, delay=RELAUNCH_DELAY))
        return ExitOutcome(entry, tuple(actions))

    def _judge(self, w: WorkerExit, failure: Failure, job: JobFacts) -> List[Any]:
        if failure.kind == "exit" and w.returncode == USER_ERROR_EXIT and failure.message.startswith(
                USER_ERROR_PREFIX.rstrip()):
            # Bad input or configuration: every relaunch would fail the same way.
            return [act.Log(f"worker {w.worker_id}: {failure.message}"),
                    act.FailJob(failure.message[len(USER_ERROR_PREFIX):])]
        actions: List[Any] = [act.Log(f"worker {w.worker_id} (pid {w.pid}) {failure.describe()}")]
        reason = self.policy.record(failure)
        if reason is None and self.policy.fail_fast:
            found = hopeless.judge(self.crashes, self.slots, w.worker_id, w.slot, failure, w.held, job.committed,
                                   lambda: w.stderr(60))
            if found is not None:  # the same crash on every slot: stop relaunching
                reason, lines = found
                actions += [act.Log(line) for line in lines]
        if reason is not None:
            return actions + [act.FailJob(reason)]
        if self.sync:  # the job's workers run as one group: a failure restarts all of them, everywhere
            actions.append(act.RestartAll(failure.cause))
        return actions + [act.Relaunch(w.slot, failure.cause, w.uptime)]

    # ------------------------------------------------------------------ live workers
    def hung(self, live: Sequence[Running], infos: Mapping[str, WorkerInfo],
             now: Optional[float] = None) -> List[act.KillWorker]:
        """``--enable-job-hang-detection``: kill every worker without progress for the interval."""
        if self.hang is None:
            return []
        out = []
        for w in live:
            if w.stop_reason:
                continue
            idle = self.hang.idle(w.launched, infos.get(w.worker_id), now)
            if idle is not None:
                out.append(act.KillWorker(w.worker_id, "hang", f"worker {w.worker_id} (pid {w.pid}) made no progress "
                                          f"for {idle:.0f}s: killing it (--job-hang-interval={self.hang.interval:g})",
                                          idle=idle))
        return out

    def slow(self, slot_workers: Sequence[Running], live: int, todo: int, replacements: Mapping[int, int],
             workers: int, durations: Dict[str, List[float]], inflight: Mapping[str, float],
             startup: Optional[float] = None) -> List[act.ReplaceWorker]:
        """At most one slow worker to replace this round (``--slow-worker-multiplier``).

        Not when little is left to hand out (a replacement would arrive too late; speculation covers
        the tail), nor once the job has had as many replacements as workers, nor for a slot replaced
        twice already, nor for a worker we cannot signal.

        "Too late" is also measured: ``startup`` is how long this run's workers took from launch to
        registration. When the healthy workers will have handed out the free slices in less than
        twice that, a replacement would spend its start-up taking cores (on a shared host) or
        time from them, then find almost nothing left; the slow worker's few slices are the tail,
        which speculation and the readers' hand-back take care of.
        """
        if not self.slow_policy.enabled or todo < live or sum(replacements.values()) >= max(1, workers):
            return []
        candidates = [w.worker_id for w in slot_workers
                      if not w.stop_reason and (not w.adopted or w.local) and replacements.get(w.slot, 0) < 2]
        found = self.slow_policy.find(candidates, durations, {wid: inflight.get(wid, 0.0) for wid in candidates})
        found = [f for f in found if not too_late(todo, live, f[2], startup)]
        return [act.ReplaceWorker(wid, pace, typical) for wid, pace, typical in found[:1]]

    def slow_joined(self, live: Sequence[Running], todo: int, own_live: int, replaced: int, workers: int,
                    durations: Dict[str, List[float]], inflight: Mapping[str, float]) -> List[act.ReplaceWorker]:
        """At most one slow joined worker (``aimaster join``) to have its supervisor replace this round.

        Not when little is left to hand out (fewer free slices than workers), nor once the job has
        had as many replacements as it has workers (ours, or joined ones).
        """
        if not self.slow_policy.enabled or not live or todo < own_live + len(live) \
                or replaced >= max(1, workers, len(live)):
            return []
        candidates = [w.worker_id for w in live if not w.stop_reason]
        found = self.slow_policy.find(candidates, durations, {wid: inflight.get(wid, 0.0) for wid in candidates})
        return [act.ReplaceWorker(wid, pace, typical) for wid, pace, typical in found[:1]]

    def moot(self, live: Sequence[Running], infos: Mapping[str, WorkerInfo], complete_since: float,
             now: Optional[float] = None) -> List[Any]:
        """Every slice is committed: stop workers still busy with attempts that can no longer win.

        A worker whose lease lapsed (stopped, hung, cut off) is killed at once; one still working on
        a moot attempt gets ``completion_grace`` to notice by itself (its commit returns False, its
        next get_next_slice ends it), then SIGTERM, which unwinds it cleanly (staged output aborted,
        lease revoked), then SIGKILL.
        """
        now = time.monotonic() if now is None else now
        out: List[Any] = []
        for w in live:
            info = infos.get(w.worker_id)
            if info is not None and info.registered:
                if info.held and now - complete_since >= self.completion_grace:
                    out.append(act.TerminateWorker(w.worker_id, "moot", grace=5.0))
            elif info is not None and info.departed_at is not None:
                # A worker exits right after revoking its lease; one still there seconds later is not exiting.
                if now - info.departed_at > 3.0:
                    out.append(act.KillWorker(w.worker_id, "moot"))
            elif now - w.launched > self.lease_ttl + 3:
                out.append(act.KillWorker(w.worker_id, "moot"))  # never registered at all
        return out

    @staticmethod
    def retire(slow: Sequence[Tuple[str, str, bool]]) -> List[Any]:
        """Slow workers being replaced, as ``(worker, its replacement, replacement registered or gone)``:
        retire each whose replacement runs (or will not: it died), SIGTERM then SIGKILL."""
        return [a for wid, new, ready in slow if ready
                for a in (act.Log(f"retiring slow worker {wid}: {new} runs in its place"),
                          act.TerminateWorker(wid, "slow", grace=5.0))]

    @staticmethod
    def over(end: EndFacts, now: Optional[float] = None) -> bool:
        """Whether the run is over: nothing of ours runs or is due, and nobody else still needs the job's etcd."""
        if end.live or end.pending:
            return False
        if end.join_only:
            return True
        if end.all_complete:
            # Workers that joined from elsewhere see the end by themselves within moments (one may be
            # just starting), then their supervisor writes its report: stopping the job's etcd under
            # them would leave them retrying into an error.
            now = time.monotonic() if now is None else now
            since = end.complete_since if end.complete_since is not None else now
            return not end.others_waiting or now - since > end.lease_ttl + 5
        if end.workers == 0:
            return False  # a master for workers that join from elsewhere waits for them
        return not end.others_registered

    @staticmethod
    def early_stop(pending: int, complete: bool) -> Optional[act.CancelPending]:
        """Once the data is done nothing is started again (checked right before starting anything)."""
        return act.CancelPending(pending) if pending and complete else None
