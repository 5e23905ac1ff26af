"""The supervisor's decisions, driven with observed state only: no etcd, no process.

Each test builds what one round of the master's loop would have observed (a reaped worker, live
workers, their beats and slice durations) and checks the actions the supervisor returns.
"""

from __future__ import annotations

import dataclasses

import pytest

from aimaster.data.runtime import USER_ERROR_EXIT
from aimaster.master.actions import (
    CancelPending,
    FailJob,
    GiveBack,
    KillWorker,
    Log,
    RecordSliceError,
    Relaunch,
    ReplaceWorker,
    RestartAll,
    TerminateWorker,
)
from aimaster.master.hang import HangDetector
from aimaster.master.job_state import EXIT_CODES, TERMINAL, JobState
from aimaster.master.policy import FaultPolicy
from aimaster.master.slice_timeout import STOP_REASON as SLICE_TIMEOUT
from aimaster.master.slice_timeout import SliceTimeout
from aimaster.master.slowness import SlowWorkerPolicy
from aimaster.master.supervisor import JobFacts, Running, Supervisor, WorkerExit, too_late
from aimaster.master.watch import WorkerInfo

RUNNING = JobFacts(complete=False)


def crash(worker_id="w0", slot=0, rc=1, message="boom", **kw) -> WorkerExit:
    return WorkerExit(worker_id, slot, 100 + slot, rc, uptime=2.0, stderr=lambda n: [message][-n:], **kw)


def supervisor(mode="Async", policy="OnFailure", max_same_error=20, fail_fast=False, slots=2, **kw) -> Supervisor:
    fault = FaultPolicy(mode, policy, max_same_error)
    fault.fail_fast = fail_fast
    return Supervisor(fault, slots, **kw)


def kinds(actions):
    return [type(a) for a in actions]


# ---------------------------------------------------------------------------------- exits and policies


def test_on_failure_relaunches_the_slot_after_recording_the_error_on_its_slices():
    out = supervisor().on_exit(crash(rc=1, message="ValueError: x", held=("ds/s1",)), RUNNING)
    assert kinds(out.actions) == [GiveBack, Log, Relaunch]
    give_back, log, relaunch = out.actions
    assert give_back == GiveBack("w0", "exited with code 1: ValueError: x")
    assert log.message == "worker w0 (pid 100) exited with code 1: ValueError: x"
    assert relaunch == Relaunch(0, "exit:1", 2.0)  # backed off by the slot's history
    assert out.entry["error"] == "exited with code 1: ValueError: x"
    assert out.entry["stderr_tail"] == ["ValueError: x"]


def test_exit_code_and_error_msg_relaunches_only_what_looks_transient():
    strict = supervisor(policy="ExitCodeAndErrorMsg")
    assert isinstance(strict.on_exit(crash(rc=-9, message=""), RUNNING).actions[-1], Relaunch)
    assert isinstance(strict.on_exit(crash(rc=1, message="connection refused"), RUNNING).actions[-1], Relaunch)
    failed = strict.on_exit(crash(rc=1, message="KeyError: 'x'"), RUNNING).actions[-1]
    assert isinstance(failed, FailJob) and "not a transient failure" in failed.reason


def test_never_fails_the_job_at_the_first_failure():
    last = supervisor(policy="Never").on_exit(crash(rc=-9, message=""), RUNNING).actions[-1]
    assert isinstance(last, FailJob) and "--fault-tolerant-policy=Never" in last.reason


def test_the_same_error_counted_across_slots_fails_the_job_at_the_limit():
    sup = supervisor(max_same_error=3)
    for n in range(2):  # what differs between occurrences (a number, a path) is masked
        out = sup.on_exit(crash(f"w{n}", n, message=f"OSError: cannot read /data/part-{n}.bin ({n} bytes)"), RUNNING)
        assert isinstance(out.actions[-1], Relaunch)
    out = sup.on_exit(crash("w0-r1", 0, message="OSError: cannot read /data/part-7.bin (7 bytes)"), RUNNING)
    assert isinstance(out.actions[-1], FailJob)
    assert "the same failure happened 3 times (--max-num-of-same-error=3)" in out.actions[-1].reason
    other = supervisor(max_same_error=2)
    other.on_exit(crash(message="ValueError: a"), RUNNING)
    assert isinstance(other.on_exit(crash(message="KeyError: b"), RUNNING).actions[-1], Relaunch)


def test_a_user_error_fails_the_job_without_asking_the_policy():
    sup = supervisor()
    out = sup.on_exit(crash(rc=USER_ERROR_EXIT, message="aimaster: error: no input files in /in"), RUNNING)
    assert out.actions[-2:] == (Log("worker w0: aimaster: error: no input files in /in"),
                                FailJob("no input files in /in"))
    assert sup.policy.counts == {}


def test_sync_restarts_the_group_async_only_the_slot():
    async_ = supervisor("Async").on_exit(crash(rc=-9, message=""), RUNNING).actions
    assert RestartAll not in kinds(async_) and async_[-1] == Relaunch(0, "signal:9", 2.0)
    sync = supervisor("Sync").on_exit(crash(rc=-9, message=""), RUNNING).actions
    assert sync[-2:] == (RestartAll("signal:9"), Relaunch(0, "signal:9", 2.0))


def test_a_hopeless_crash_fails_at_once_with_its_root_cause_unless_something_committed():
    trace = ["Traceback (most recent call last):", '  File "/app/job.py", line 3, in <module>',
             "ModuleNotFoundError: No module named 'torchx'"]

    def dead(wid, slot):
        return WorkerExit(wid, slot, 1, 1, 0.5, stderr=lambda n: trace[-n:])

    sup = supervisor(fail_fast=True, slots=2)
    assert isinstance(sup.on_exit(dead("w0", 0), RUNNING).actions[-1], Relaunch)
    out = sup.on_exit(dead("w1", 1), RUNNING)
    assert isinstance(out.actions[-1], FailJob)
    assert out.actions[-1].reason.startswith("hopeless: every worker exited the same way")
    assert '(File "/app/job.py", line 3)' in out.actions[-1].reason
    assert Log("  | ModuleNotFoundError: No module named 'torchx'") in out.actions
    working = supervisor(fail_fast=True, slots=2)
    for wid, slot in (("w0", 0), ("w1", 1)):
        out = working.on_exit(dead(wid, slot), JobFacts(complete=False, committed=True))
    assert isinstance(out.actions[-1], Relaunch)  # the program works on some data: not hopeless


def test_nothing_is_relaunched_once_the_data_is_done():
    out = supervisor().on_exit(crash(rc=1), JobFacts(complete=True))
    assert out.actions == (GiveBack("w0", "exited with code 1: boom"),)


def test_the_supervisors_own_stops_are_no_failures_and_a_hang_kill_is_one():
    moot = supervisor().on_exit(crash(rc=-15, message="", stop_reason="moot"), RUNNING)
    assert moot.entry == {"stopped": "moot"} and moot.actions == (GiveBack("w0", None),)
    # A joiner kills on the master's request: its own detector may be off, the job's interval still says it.
    hang = supervisor(hang_interval=30.0).on_exit(crash(rc=-9, message="", stop_reason="hang"), RUNNING)
    assert hang.failure.kind == "hang" and hang.entry["error"].startswith("hung (no progress for 30s)")
    assert hang.actions[-1] == Relaunch(0, "hang", 2.0)


def test_a_slice_timeout_relaunches_the_worker_without_counting_a_failure():
    sup = supervisor(max_same_error=1, slice_timeout_on=True)
    out = sup.on_exit(crash(rc=-9, message="", stop_reason=SLICE_TIMEOUT), RUNNING)
    assert out.entry == {"stopped": SLICE_TIMEOUT}
    assert out.actions == (GiveBack("w0", None), Relaunch(0, SLICE_TIMEOUT, 2.0))
    stopping = sup.on_exit(crash(rc=-9, message="", stop_reason=SLICE_TIMEOUT), JobFacts(False, stopping=True))
    assert stopping.actions == (GiveBack("w0", None),)
    assert sup.policy.counts == {}


def test_an_adopted_worker_that_vanished_is_lost_unless_the_data_is_done():
    gone = WorkerExit("w0", 0, 7, -1, 10.0, adopted=True)
    out = supervisor().on_exit(gone, RUNNING)
    assert out.entry["adopted"] is True and out.entry["exit"] is None
    assert out.failure.kind == "lost" and out.actions[-1] == Relaunch(0, "lost", 10.0)
    assert supervisor().on_exit(gone, JobFacts(complete=True)).failure is None


# ---------------------------------------------------------------------------------- preemption


def test_a_preempted_worker_is_relaunched_at_once_and_never_reaches_the_policy():
    sup = supervisor(policy="Never")
    out = sup.on_exit(crash(rc=0, message="", preempted=True), RUNNING)
    assert out.entry == {"preempted": True}
    assert kinds(out.actions) == [Log, GiveBack, Relaunch]
    assert out.actions[-1] == Relaunch(0, "preempted", 2.0, delay=0.25)
    assert sup.policy.counts == {}
    sync = supervisor("Sync").on_exit(crash(rc=0, message="", preempted=True), RUNNING).actions
    assert sync[-2:] == (RestartAll("preempted", announce=False), Relaunch(0, "preempted", 2.0, delay=0.25))
    done = sup.on_exit(crash(rc=0, message="", preempted=True), JobFacts(complete=True))
    assert kinds(done.actions) == [Log, GiveBack]


def test_a_preemption_mark_does_not_excuse_a_stop_of_our_own():
    out = supervisor().on_exit(crash(rc=-15, message="", preempted=True, stop_reason="slow"), RUNNING)
    assert out.entry == {"stopped": "slow"} and out.actions == (GiveBack("w0", None),)


# ---------------------------------------------------------------------------------- live workers


def test_hung_workers_are_killed_waiting_ones_and_those_being_stopped_are_not():
    sup = supervisor(hang=HangDetector(10))
    t = 1000.0
    live = [Running("w0", 0, 1, launched=t), Running("w1", 1, 2, launched=t),
            Running("w2", 2, 3, launched=t, stop_reason="moot")]
    infos = {"w0": WorkerInfo("w0", first_seen=t, last_progress=t + 5, registered=True, beat={"state": "working"}),
             "w1": WorkerInfo("w1", first_seen=t, last_progress=t, registered=True, beat={"state": "waiting"})}
    assert sup.hung(live, infos, now=t + 14) == []
    [kill] = sup.hung(live, infos, now=t + 16)
    assert kill.worker_id == "w0" and kill.reason == "hang"
    assert "made no progress for 11s: killing it (--job-hang-interval=10)" in kill.message
    assert supervisor().hung(live, infos, now=t + 1000) == []  # hang detection off


def test_one_slow_worker_is_replaced_per_round_while_there_is_work_for_a_replacement():
    sup = supervisor(slow=SlowWorkerPolicy(multiplier=3.0, min_samples=5))
    durations = {"w0": [1.0] * 5, "w1": [1.1] * 5, "w2": [10.0] * 5}
    live = [Running(w, i, i, 0.0) for i, w in enumerate(("w0", "w1", "w2"))]
    [replace] = sup.slow(live, live=3, todo=20, replacements={}, workers=3, durations=durations, inflight={})
    assert isinstance(replace, ReplaceWorker) and replace.worker_id == "w2" and replace.typical == pytest.approx(1.05)
    assert sup.slow(live, 3, todo=2, replacements={}, workers=3, durations=durations, inflight={}) == []
    assert sup.slow(live, 3, 20, replacements={0: 1, 1: 1, 2: 1}, workers=3, durations=durations, inflight={}) == []
    assert sup.slow(live, 3, 20, replacements={2: 2}, workers=3, durations=durations, inflight={}) == []
    remote = [dataclasses.replace(w, adopted=True, local=False) if w.worker_id == "w2" else w for w in live]
    assert sup.slow(remote, 3, 20, {}, 3, durations, {}) == []  # not ours to signal
    assert supervisor().slow(live, 3, 20, {}, 3, durations, {}) == []  # replacement off
    # Measured start-up: the two healthy workers hand out 20 slices of 1.05 s in 10.5 s.
    assert sup.slow(live, 3, 20, {}, 3, durations, {}, startup=5.0) != []  # a replacement has 0.5 s to spare
    assert sup.slow(live, 3, 20, {}, 3, durations, {}, startup=6.0) == []  # it would arrive too late


def test_too_late_compares_the_time_the_healthy_workers_need_with_twice_the_start_up():
    assert not too_late(todo=10, live=2, typical=1.0, startup=None)  # nothing measured yet
    assert not too_late(todo=10, live=2, typical=1.0, startup=4.9)
    assert too_late(todo=10, live=2, typical=1.0, startup=5.1)
    assert too_late(todo=10, live=1, typical=1.0, startup=5.1)  # alone: its own share counts


def test_a_slow_joined_worker_is_handed_to_its_supervisor_while_work_is_left_and_replacements_are():
    """Joined workers (``aimaster join``) are replaced by their own supervisor: the decision counts
    the job's free slices against every live worker, and the job's replacements against its size."""
    sup = supervisor(slow=SlowWorkerPolicy(multiplier=3.0, min_samples=5))
    durations = {"j0": [1.0] * 5, "j1": [1.1] * 5, "j2": [10.0] * 5}
    joined = [Running(w, 0, i, 0.0, adopted=True, local=False) for i, w in enumerate(("j0", "j1", "j2"))]
    [replace] = sup.slow_joined(joined, todo=20, own_live=1, replaced=0, workers=1, durations=durations, inflight={})
    assert replace.worker_id == "j2" and replace.pace == pytest.approx(10.0)
    assert sup.slow_joined(joined, todo=3, own_live=1, replaced=0, workers=1, durations=durations, inflight={}) == []
    assert sup.slow_joined(joined, 20, 1, replaced=3, workers=1, durations=durations, inflight={}) == []
    stopping = [dataclasses.replace(w, stop_reason="hang") if w.worker_id == "j2" else w for w in joined]
    assert sup.slow_joined(stopping, 20, 1, 0, 1, durations, {}) == []
    assert supervisor().slow_joined(joined, 20, 1, 0, 1, durations, {}) == []  # replacement off


def test_a_hang_kill_says_how_long_the_worker_was_idle():
    sup = supervisor(hang=HangDetector(10))
    t = 1000.0
    infos = {"j0": WorkerInfo("j0", first_seen=t, last_progress=t, registered=True, beat={"state": "working"})}
    [kill] = sup.hung([Running("j0", 0, 7, launched=t, adopted=True, local=False)], infos, now=t + 12.5)
    assert kill.idle == pytest.approx(12.5)


def test_an_overdue_attempt_is_recorded_then_its_worker_killed_unless_parked_or_not_ours():
    timeout = SliceTimeout(30)
    live = [Running("w0", 0, 11, 0.0), Running("w1", 1, 12, 0.0), Running("w2", 2, 13, 0.0, stop_reason="moot"),
            Running("j0", 0, 14, 0.0, adopted=True, local=False)]
    held = {"w0": [("ds", "000001", 31.0), ("ds", "000002", 5.0)], "w1": [("ds", "000003", 40.0)],
            "w2": [("ds", "000004", 99.0)], "j0": [("ds", "000005", 99.0)]}
    beats = {"w1": {"state": "waiting", "held": ["ds/000003"]}}  # finished, only not committed yet
    record, kill = timeout.decide(live, held, beats)
    assert record == RecordSliceError("ds", "000001", "w0", "attempt ran longer than --slice-timeout=30s and was "
                                      "abandoned")
    assert kill.worker_id == "w0" and kill.reason == SLICE_TIMEOUT and "holds ds/000001 (31s)" in kill.message
    assert timeout.abandoned == 1


def test_moot_workers_get_the_completion_grace_then_stop():
    sup = supervisor(completion_grace=1.0, lease_ttl=10)
    now = 500.0
    live = [Running("busy", 0, 1, launched=now - 60), Running("gone", 1, 2, launched=now - 60),
            Running("new", 2, 3, launched=now - 20), Running("idle", 3, 4, launched=now - 60)]
    infos = {"busy": WorkerInfo("busy", 0, 0, registered=True, beat={"held": ["ds/s1"]}),
             "gone": WorkerInfo("gone", 0, 0, registered=False, departed_at=now - 4),
             "idle": WorkerInfo("idle", 0, 0, registered=True, beat={"held": []})}
    assert sup.moot(live, infos, complete_since=now - 0.5, now=now) == [KillWorker("gone", "moot"),
                                                                        KillWorker("new", "moot")]
    assert TerminateWorker("busy", "moot", 5.0) in sup.moot(live, infos, complete_since=now - 2, now=now)


def test_early_stop_cancels_pending_starts_once_the_data_is_done():
    assert Supervisor.early_stop(2, complete=True) == CancelPending(2)
    assert Supervisor.early_stop(2, complete=False) is None
    assert Supervisor.early_stop(0, complete=True) is None


def test_actions_are_values():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Relaunch(0, "x").slot = 1  # type: ignore[misc]
    assert Relaunch(0, "exit:1", 2.0) == Relaunch(0, "exit:1", 2.0)


def test_job_states_are_their_wire_strings():
    import json

    assert JobState.RUNNING == "Running" and f"{JobState.FAILED}" == "Failed"
    assert json.dumps({"state": JobState.SUCCEEDED}) == '{"state": "Succeeded"}'
    assert EXIT_CODES["Stopped"] == 130 and "Failed" in TERMINAL
    assert JobState("Pending") is JobState.PENDING and not JobState.PENDING.terminal
