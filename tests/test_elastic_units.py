"""The elastic control plane's pieces, one at a time: policies on plain data, slice transitions on a real etcd."""

from __future__ import annotations

import signal
import time

import pytest

from aimaster.data import OutOfRangeException
from aimaster.data.coordinator import Dataset, PlanData
from aimaster.data.speculation import copy_candidates, family, min_age, pooled_durations
from aimaster.master.hang import HangDetector
from aimaster.master.launcher import Worker
from aimaster.master.policy import Failure, FaultPolicy, classify_exit
from aimaster.master.slowness import SlowWorkerPolicy
from aimaster.master.watch import WorkerInfo

# ---------------------------------------------------------------------------------- policies


def test_slow_worker_needs_peers_samples_and_a_real_gap():
    policy = SlowWorkerPolicy(multiplier=3.0, min_samples=5, min_gap=1.0)
    fast = [0.5] * 8
    durations = {"w0": fast, "w1": fast, "w2": fast, "w3": []}
    # w3 has no durations yet; its first slice has run 2 s against a 0.5 s median: slow.
    assert [w for w, _, _ in policy.find(["w0", "w1", "w2", "w3"], durations, {"w3": 2.0})] == ["w3"]
    # Too few peer samples: nobody is judged.
    assert policy.find(["w3"], {"w0": [0.5, 0.5], "w3": []}, {"w3": 9.0}) == []
    # 3x the median but less than a second more: noise, not slowness.
    assert policy.find(["w3"], {"w0": [0.1] * 8, "w3": []}, {"w3": 0.5}) == []
    # An established worker is judged by its own median, not by one long in-flight slice.
    assert policy.find(["w2"], durations, {"w2": 30.0}) == []
    assert [w for w, _, _ in policy.find(["w2"], dict(durations, w2=[5.0] * 8), {})] == ["w2"]
    assert SlowWorkerPolicy(multiplier=0).find(["w3"], durations, {"w3": 99.0}) == []


def test_speculation_copies_the_longest_running_slice_of_another_worker():
    claims = [("a", {"w": "w1", "t": 100.0, "a": 1}), ("b", {"w": "w2", "t": 90.0, "a": 2}),
              ("c", {"w": "w0.4242", "t": 50.0, "a": 1}), ("d", {"w": "w3", "t": 99.5, "a": 1})]
    got = copy_candidates(claims, "w0", mine={"zz"}, now=100.5, age_needed=0.9)
    assert [sid for _, sid, _ in got] == ["b", "d"]  # longest first; own family and too young left out
    assert family("w0.4242") == "w0" and family("host.corp-7") == "host.corp-7"
    assert min_age([1.0, 2.0], 1.5) == 0.0  # too few durations: copy anything held
    assert min_age([1.0, 2.0, 3.0], 1.5) == 3.0
    assert pooled_durations([("w0", {"recent": [1, 2.5, "x", -1]}), ("w1", {"recent": [3]})], exclude="w1") == [1, 2.5]


def test_failure_classification():
    assert classify_exit(-9).describe() == "killed by SIGKILL (possibly OOM: the kernel's OOM killer sends SIGKILL)"
    oom = classify_exit(-9, "", oom=True)
    assert oom.describe() == "killed by SIGKILL by the kernel's OOM killer" and oom.cause == "oom"
    assert classify_exit(-9, "", oom=False).describe() == "killed by SIGKILL"
    assert classify_exit(137).kind == "signal" and classify_exit(137).code == signal.SIGKILL  # sh -c wrapper
    err = classify_exit(1, "ValueError: bad input 17")
    assert err.describe() == "exited with code 1: ValueError: bad input 17" and err.cause == "exit:1"
    assert err.signature == classify_exit(1, "ValueError: bad input 18").signature  # numbers masked
    assert not err.transient and classify_exit(1, "grpc: connection reset by peer").transient
    assert Failure("hang", 30, "").describe() == "hung (no progress for 30s) and was killed"


def test_fault_policies():
    assert FaultPolicy(max_same_error=2).record(classify_exit(1, "boom")) is None
    policy = FaultPolicy(max_same_error=2)
    policy.record(classify_exit(1, "boom 1"))
    assert "2 times" in policy.record(classify_exit(1, "boom 2"))
    assert "Never" in FaultPolicy(policy="Never").record(classify_exit(-9))
    strict = FaultPolicy(policy="ExitCodeAndErrorMsg")
    assert strict.record(classify_exit(-9)) is None
    assert "not a transient failure" in strict.record(classify_exit(1, "KeyError: 'x'"))


class _Proc(Worker):
    def __init__(self):
        super().__init__()
        self.worker_id, self.slot, self.incarnation, self.started = "w0", 0, 0, time.time()

    @property
    def pid(self):
        return 1

    def poll(self):
        return None

    def signal(self, sig):
        pass


def test_hang_detection_counts_from_the_last_progress_and_spares_waiting_workers():
    w = _Proc()
    t = w.launched
    detector = HangDetector(10)
    info = WorkerInfo("w0", first_seen=t, last_progress=t + 5, registered=True, beat={"state": "working"})
    assert detector.hung(w, info, now=t + 14) is None
    assert detector.hung(w, info, now=t + 16) == pytest.approx(11)
    waiting = WorkerInfo("w0", first_seen=t, last_progress=t, registered=True, beat={"state": "waiting"})
    assert detector.hung(w, waiting, now=t + 100) is None
    waiting.registered = False  # its lease lapsed: stopped, not waiting
    assert detector.hung(w, waiting, now=t + 100) == pytest.approx(100)


# ---------------------------------------------------------------------------------- on a real etcd


def _plan(n):
    return lambda: PlanData("files", n, {"base": "/"}, [f"f{i}" for i in range(n)])


def test_copy_commit_race_and_release(make_session, monkeypatch):
    monkeypatch.setenv("AIMASTER_SPECULATION_MULTIPLIER", "0")
    a, b, c = make_session("A"), make_session("B"), make_session("C")
    da, db, dc = Dataset(a, "d"), Dataset(b, "d"), Dataset(c, "d")
    for d in (da, db, dc):
        d.ensure_plan(_plan(4), 2)
    first, second = da.next_claim(), da.next_claim()
    assert a.store.get_value("beat/A")["held"] == ["d/000000", "d/000001"]
    copy = db.next_claim()  # nothing free: B copies the longest-running slice of A
    assert copy.backup and copy.slice_id == first.slice_id and copy.attempt_no == first.attempt_no
    other = dc.try_copy()
    assert other is not None and other.slice_id == second.slice_id
    assert db.try_copy() is None and dc.try_copy() is None  # one copy per attempt; never of one's own
    # C gives its copy back: only the copy goes, A's claim of the slice stays.
    dc.release(other, "C gave up")
    assert a.store.get_value(f"ds/d/claim/{second.slice_id}")["w"] == "A"
    assert a.store.keys(f"ds/d/backup/{second.slice_id}/") == []
    assert a.store.get_value(f"ds/d/attempts/{second.slice_id}")["e"] is None  # a copy's error is its own
    # The copy commits first and wins; A's later commit of the same slice loses.
    assert db.commit(copy) is True
    assert da.commit(first) is False
    assert da.commit(second) is True
    done = dict(da.committed())
    assert done[first.slice_id]["spec"] is True and done[first.slice_id]["w"] == "B"
    assert a.store.keys("ds/d/backup/") == [] and a.store.keys("ds/d/claim/") == []
    stats_a, stats_b = a.store.get_value("stats/A"), a.store.get_value("stats/B")
    assert stats_a["primaries_lost"] == 1 and stats_a["slices"] == 1
    assert stats_b["copies"] == 1 and stats_b["copies_won"] == 1 and len(stats_b["recent"]) == 1


def test_error_recorded_against_a_dead_workers_slice_reaches_failed(make_session):
    a, m = make_session("A"), make_session("master")
    da = Dataset(a, "p", max_attempts=1)
    da.ensure_plan(_plan(2), 1)
    dm = Dataset(m, "p", max_attempts=1)
    dm.load_plan()
    claim = da.next_claim()
    assert dm.record_error(claim.slice_id, "B", "not B's") is False  # only the latest attempt's worker
    assert dm.record_error(claim.slice_id, "A", "exited with code 17: poison") is True
    a.store.client.revoke_lease(a.lease.id)  # A dies
    assert dm.requeue(claim.slice_id)
    [(sid, rec)] = list(dm.failed())
    assert sid == claim.slice_id and rec["e"] == "failed 1 attempts; last: exited with code 17: poison"


def test_a_claim_whose_lease_expired_renews_the_lease(make_session):
    a = make_session("A")
    d = Dataset(a, "l")
    d.ensure_plan(_plan(2), 1)
    generation = a.lease_generation
    a.store.client.revoke_lease(a.lease.id)  # as if stopped longer than the TTL
    claim = d.next_claim()
    assert a.lease_generation == generation + 1 and claim.lease_generation == a.lease_generation
    assert d.commit(claim)
    d.commit(d.next_claim())
    with pytest.raises(OutOfRangeException):
        d.next_claim()
    assert a.store.get_value("beat/A")["state"] == "done"


def test_user_errors_and_environment_errors():
    import errno

    from aimaster import errors

    for cls in (errors.ConfigError, errors.InputNotFoundError, errors.EmptyInputError, errors.MetaFileError,
                errors.UrlError, errors.SchemaError, errors.CredentialsError, errors.JobError, errors.EtcdDataError):
        assert not errors.is_environment_error(cls("x")), cls
    for cls in (errors.TableIOError, errors.EtcdUnavailableError):
        assert errors.is_environment_error(cls("x")), cls
    assert errors.is_environment_error(OSError(errno.EIO, "Input/output error"))
    assert errors.is_environment_error(OSError(errno.ENOSPC, "No space left on device"))
    assert errors.is_environment_error(ConnectionResetError()) and errors.is_environment_error(TimeoutError())
    assert not errors.is_environment_error(FileNotFoundError(errno.ENOENT, "No such file"))
    assert not errors.is_environment_error(PermissionError(errno.EACCES, "Permission denied"))
    assert not errors.is_environment_error(ValueError("bad"))


def test_environment_exits_are_transient_and_counted():
    from aimaster.data.runtime import ENVIRONMENT_ERROR_EXIT, USER_ERROR_EXIT

    env = classify_exit(ENVIRONMENT_ERROR_EXIT, "aimaster: error: etcd at 10.0.0.7:2379 unreachable for 60s")
    assert env.environment and env.transient and env.cause == "exit:75"
    assert env.describe().startswith("exited with code 75 (an environment error): aimaster: error: etcd at")
    assert not classify_exit(USER_ERROR_EXIT, "aimaster: error: input directory /x does not exist").environment
    assert FaultPolicy(policy="ExitCodeAndErrorMsg").record(env) is None
    assert "Never" in FaultPolicy(policy="Never").record(env)
    policy = FaultPolicy(max_same_error=2)
    assert policy.record(env) is None
    again = classify_exit(ENVIRONMENT_ERROR_EXIT, "aimaster: error: etcd at 10.9.8.1:2380 unreachable for 60s")
    assert "2 times" in policy.record(again)


def test_error_messages_are_normalised_before_counting():
    import uuid

    from aimaster.master.policy import normalise

    def message():
        attempt = uuid.uuid4().hex
        return (f"RuntimeError: publish of attempt w3.{attempt[:8]} failed: /tmp/stage-{uuid.uuid4().hex}/{attempt}/"
                f"out.txt at 10.1.2.{uuid.uuid4().int % 256}:{uuid.uuid4().int % 60000 + 1024} (id {uuid.uuid4()})")

    assert len({normalise(message()) for _ in range(50)}) == 1
    assert normalise("publish of w7.18121538 failed") == normalise("publish of w1.ab12cd34 failed")
    assert normalise("publish of w7.aeabbbfd failed") == normalise("publish of w1.ab12cd34 failed")  # no digit
    assert normalise("etcd at etcd-0.corp:2379 unreachable") == normalise("etcd at [::1]:2380 unreachable")
    assert normalise("poisoned input d3/f00057.txt") == normalise("poisoned input d1/f00001.txt")
    # What makes two errors different stays.
    assert normalise("KeyError: 'x'") != normalise("KeyError: 'y'")
    assert normalise("OSError: [Errno 5] Input/output error") != normalise("OSError: [Errno 28] No space left")
    assert "Input/output" in normalise("OSError: [Errno 5] Input/output error")


def test_readback_refuses_what_no_aimaster_process_writes():
    from aimaster.master import readback

    plan = {"kind": "files", "num_items": 25, "slice_size": 10, "num_slices": 3, "width": 6, "chunks": [20, 5],
            "source": {"base": "/in"}}
    assert readback.plan_problem(plan) is None
    assert "does not match" in readback.plan_problem(dict(plan, num_slices=2))
    assert "chunks" in readback.plan_problem(dict(plan, chunks=[20]))
    assert "'slice_size' is not" in readback.plan_problem(dict(plan, slice_size=True))
    assert readback.job_problem({"state": "Running", "generation": 2, "options": {}}) is None
    assert "state" in readback.job_problem({"state": "Done"})
    assert "'generation'" in readback.job_problem({"state": "Running", "generation": "2"})

    class Meta:
        lease_id = 77

    reg = {"host": "h", "pid": 12, "started": 1.0, "ttl": 10, "lease": 77, "slot": 0, "launcher": "master"}
    assert readback.registration_problem(reg, Meta()) is None
    Meta.lease_id = 0
    assert "no lease" in readback.registration_problem(reg, Meta())
    assert readback.beat_problem({"t": 1.0, "state": "working", "held": ["d/000001"], "slices": 3}) is None
    assert readback.beat_problem({"held": "d/000001"}) is not None
    assert readback.stats_problem({"slices": 3, "recent": [0.5, 1], "first": None}) is None
    assert readback.stats_problem({"copies": "lots"}) is not None


def test_the_state_lock_is_exclusive_and_never_stale(tmp_path):
    import subprocess
    import sys

    from aimaster.master.state_dir import JobStateDir

    state = JobStateDir(str(tmp_path), "j")
    with state.etcd_lock(timeout=1):
        with pytest.raises(Exception, match="has held"):
            state.etcd_lock(timeout=0.2)
    # A holder killed with SIGKILL leaves nothing behind.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from aimaster.master.state_dir import "
                               f"JobStateDir; JobStateDir({str(tmp_path)!r}, 'j').etcd_lock(); print('held', "
                               "flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match=f"pid {holder.pid}"):
            state.etcd_lock(timeout=0.2)
    finally:
        holder.kill()
        holder.wait()
    state.etcd_lock(timeout=1).release()


def test_sync_restart_backs_each_worker_off_by_its_own_uptime(tmp_path):
    from aimaster.master.fleet import Fleet
    from aimaster.master.master import Master, RunOptions

    master = Master(RunOptions(command=["true"], job_id="u", state_root=str(tmp_path)))
    master.fleet = Fleet(["true"], dict, str(tmp_path), "")
    veteran, newcomer = _Proc(), _Proc()
    veteran.slot, veteran.started = 0, time.time() - 600
    newcomer.slot, newcomer.started = 1, time.time() - 5
    master.fleet.slots = {0: veteran, 1: newcomer}
    master.fleet.failures_in_row = {0: 3, 1: 3}
    master.fleet.stop_all = lambda grace, reason: None  # the processes are stand-ins
    master._reap = lambda complete: None
    master._restart_all("signal:9")
    # Ten minutes up: no crash loop, its back-off starts over; five seconds up: it keeps climbing.
    assert master.fleet.failures_in_row == {0: 1, 1: 4}
    assert sorted(master.fleet.pending) == [0, 1]


def test_fast_commits_carry_the_counters_at_most_every_half_second_and_close_writes_the_last(make_session):
    """A worker committing many slices a second rewrites stats/<worker> about twice a second, not
    in every commit; the first commit always carries them, and nothing is lost at close."""
    from aimaster.data import keys

    w, reader = make_session("W"), make_session("reader")
    ds = Dataset(w, "ds")
    ds.ensure_plan(lambda: PlanData("table", 40, {}), 1)
    revisions = set()
    t0 = time.monotonic()
    for n in range(1, 41):
        claim = ds.next_claim()
        assert ds.commit(claim, claim_next=True)
        value, meta = w.store.get(keys.stats("W"))
        revisions.add(meta.mod_revision)
        if n == 1:
            assert value["slices"] == 1
    elapsed = time.monotonic() - t0
    assert len(revisions) <= 2 + elapsed / 0.5, (len(revisions), elapsed)
    assert w.stats_dirty or w.store.get_value(keys.stats("W"))["slices"] == 40
    w.close()
    assert reader.store.get_value(keys.stats("W"))["slices"] == 40


def test_close_after_etcd_is_gone_does_not_wait_out_the_retries(tmp_path):
    """Counters still pending at close get one try: with etcd stopped for real, close returns at
    once instead of retrying for retry_seconds (30 here)."""
    from aimaster.data.etcd_server import EmbeddedEtcd
    from aimaster.data.session import WorkerSession
    from aimaster.data.store import EtcdConfig, Store, job_prefix

    server = EmbeddedEtcd(data_dir=str(tmp_path / "etcd")).start()
    try:
        w = WorkerSession(Store(EtcdConfig([server.endpoint], retry_seconds=30), job_prefix("gone")), "W")
        ds = Dataset(w, "ds")
        ds.ensure_plan(lambda: PlanData("table", 10, {}), 1)
        for _ in range(5):
            assert ds.commit(ds.next_claim(), claim_next=True)
        assert w.stats_dirty
    finally:
        server.stop()
    t0 = time.monotonic()
    w.close()
    assert time.monotonic() - t0 < 10


def test_candidate_window_widens_as_free_slices_thin_out(make_session):
    """With most slices taken, a CLAIM_WINDOW-id window holds few free ones: the next read spans
    more ids so that it again finds about CANDIDATES of them (etcd's cost is the keys in the range,
    not the ids it spans), and a full read narrows it again to what its candidates spanned. Claims
    stay correct throughout."""
    from aimaster.data.claiming import CANDIDATES, CLAIM_WINDOW
    from aimaster.data.store import Op

    w, peer = make_session("W"), make_session("P")
    ds = Dataset(w, "ds")
    ds.ensure_plan(lambda: PlanData("table", 20000, {}), 1)
    Dataset(peer, "ds").ensure_plan(lambda: PlanData("table", 20000, {}), 1)
    # Every slice but one in 50 is gone from todo (as if claimed by peers): 400 free slices.
    gone = [ds.slice_id(i) for i in range(20000) if i % 50]
    for at in range(0, len(gone), 1000):
        w.store.txn("take", [], [Op.delete(ds.k.todo + sid) for sid in gone[at:at + 1000]])
    assert ds._window == CLAIM_WINDOW
    sizes = []
    for _ in range(6):
        ds._candidates = []
        ds._refill_candidates()
        sizes.append(len(ds._candidates))
    assert ds._window > CLAIM_WINDOW  # about 2 free slices in 128 ids: the window grew
    assert max(sizes[1:]) >= CANDIDATES // 2, sizes  # once widened, reads find many candidates again
    assert all(int(sid) % 50 == 0 for sid, _, _ in ds._candidates)
    claim = ds.try_claim()
    assert claim is not None and claim.index % 50 == 0 and ds.commit(claim)
    # Everything free again (requeued): a full read halves the window back towards its floor.
    for at in range(0, len(gone), 1000):
        w.store.txn("requeue", [], [Op.put(ds.k.todo + sid, {"a": 0, "e": None}) for sid in gone[at:at + 1000]])
    for _ in range(12):
        ds._candidates = []
        ds._refill_candidates()
    assert ds._window == CLAIM_WINDOW and len(ds._candidates) == CANDIDATES


def test_candidate_window_narrows_after_growing_to_the_whole_plan(make_session):
    """A window grown to span every slice id (the data had thinned out) narrows again on its first
    full read, even one the last slice cut short: every candidate read walks only about the keys it
    needs (etcd counts every key in a range, whatever the limit)."""
    from aimaster.data.claiming import CANDIDATES, CLAIM_WINDOW

    w, peer = make_session("W"), make_session("P")
    ds = Dataset(w, "ds")
    ds.ensure_plan(lambda: PlanData("table", 5000, {}), 1)
    Dataset(peer, "ds").ensure_plan(lambda: PlanData("table", 5000, {}), 1)
    ds._window = 5000  # as if grown: every read now runs to the end of the todo range
    ds._refill_candidates()
    assert len(ds._candidates) == CANDIDATES
    assert ds._window == CLAIM_WINDOW  # every slice free: 64 candidates in 64 ids, the floor


def test_waiting_worker_reads_the_whole_todo_range_once_none_was_free(make_session):
    """Once a candidate read found no free slice, the next one is a single read of the whole (by
    then short) todo range, not two random windows first; it finds a slice given back meanwhile,
    and the worker goes back to random windows after."""
    from aimaster.data.store import Op

    w, peer = make_session("W"), make_session("P")
    ds = Dataset(w, "ds")
    ds.ensure_plan(lambda: PlanData("table", 500, {}), 1)
    Dataset(peer, "ds").ensure_plan(lambda: PlanData("table", 500, {}), 1)
    w.store.txn("take all", [], [Op.delete_prefix(ds.k.todo)])
    reads = []
    real = ds._todo_range
    ds._todo_range = lambda start, end: reads.append((start, end)) or real(start, end)
    assert ds.try_claim() is None and ds._none_free
    assert len(reads) == 3  # two random windows, then the whole range
    reads.clear()
    w.store.put(ds.k.todo + ds.slice_id(321), {})  # given back (as a requeue does)
    claim = ds.try_claim()
    assert claim is not None and claim.index == 321
    assert reads == [(ds.k.todo, None)] and not ds._none_free
