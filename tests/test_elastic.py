"""The elastic control plane end to end: real processes, real signals, a real etcd.

Every test runs `aimaster run` over real files with tests/programs/file_worker.py, breaks something
for real (SIGKILL, SIGSTOP, a poison input, a slow worker, the master, etcd itself) and checks that
the job ends as it must and that every input is in exactly one committed output.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from helpers import (
    aimaster_cmd,
    assert_exactly_once,
    clean_env,
    make_files,
    program,
    read_outputs,
    wait_for,
)

from aimaster.data.store import Compare, EtcdConfig, Op, Store, job_prefix
from aimaster.master.launcher import pid_alive

WORKER = program("file_worker.py")
FLAKY_WORKER = program("flaky_worker.py")
RANDOM_FAILURE = program("random_failure.py")


class Job:
    """One `aimaster run` of file_worker.py over generated files, started in the background."""

    def __init__(self, tmp_path, job_id, n_files, workers=4, slice_size=10, env=None, extra=(), nested=True,
                 worker=WORKER):
        self.tmp = tmp_path
        self.job_id = job_id
        self.inp, self.out, self.state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
        self.inputs = make_files(str(self.inp), n_files, nested=nested) if not self.inp.exists() else None
        self.env = clean_env(env)
        self.cmd = aimaster_cmd("run", "-n", str(workers), "--job-id", job_id, "--state-dir", str(self.state),
                                "--quiet", *extra, "--", sys.executable, worker, str(self.inp), str(self.out),
                                str(slice_size))
        self.path = self.state / "jobs" / job_id
        self.proc = None
        self.procs = []
        self._store = None

    def start(self, *extra_first, log_name="master"):
        cmd = list(self.cmd)
        if extra_first:
            cmd[cmd.index("--quiet"):cmd.index("--quiet")] = list(extra_first)
        self.log = open(self.tmp / f"{log_name}.log", "w+")
        proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        if not extra_first:
            self.proc = proc
        return proc

    def run(self, timeout=180):
        return subprocess.run(self.cmd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def wait(self, proc=None, timeout=180):
        proc = proc or self.proc
        try:
            proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        return proc.returncode

    def output_text(self, name="master"):
        with open(self.tmp / f"{name}.log") as f:
            return f.read()

    def etcd_info(self):
        info = self.path / "etcd.json"
        return wait_for(lambda: info.exists() and json.loads(info.read_text() or "{}"), what="etcd.json")

    def store(self):
        if self._store is None:
            info = self.etcd_info()
            self._store = Store(EtcdConfig([f"127.0.0.1:{info['port']}"], retry_seconds=20), job_prefix(self.job_id))
        return self._store

    def workers(self):
        """{worker id: registration} of live top-level workers (not forked sub-workers)."""
        return {rel[len("workers/"):]: v for rel, v, _ in self.store().range("workers/")
                if "." not in rel and pid_alive(v.get("pid", 0))}

    def committed(self):
        return len([n for n in os.listdir(self.out) if n.endswith(".txt")]) if self.out.exists() else 0

    def report(self):
        return json.loads((self.path / "report.json").read_text())

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self._store is not None:
            self._store.close()


@pytest.fixture
def jobs():
    made = []

    def make(*args, **kwargs):
        job = Job(*args, **kwargs)
        made.append(job)
        return job

    yield make
    for job in made:
        job.close()


def test_chaos_random_sigkills(tmp_path, jobs):
    """4 workers, 2,000 files, a random worker SIGKILLed every ~1.2 s, 10 times: exactly once."""
    job = jobs(tmp_path, "chaos", 2000, env={"FILE_SLEEP": "0.03"}, extra=("--lease-ttl", "3"))
    job.start()
    wait_for(lambda: job.committed() >= 3, timeout=60, what="first commits")
    rng = random.Random(1234)
    killed = []
    while len(killed) < 10 and job.proc.poll() is None:
        time.sleep(1.2)
        live = sorted(job.workers().items())
        if live:
            wid, rec = rng.choice(live)
            os.kill(rec["pid"], signal.SIGKILL)
            killed.append(wid)
    assert job.wait() == 0, job.output_text()
    assert len(killed) >= 8, f"the job ended after only {len(killed)} kills"
    assert_exactly_once(str(job.out), job.inputs)
    report = job.report()
    assert report["state"] == "Succeeded"
    assert report["slices"] == {"total": 200, "committed": 200, "failed": 0}
    assert report["relaunches"].get("signal:9", 0) >= len(killed) - 1  # one kill may land after the end
    assert report["failed_slices"] == []


def test_master_sigkill_then_restart_resumes(tmp_path, jobs):
    """Killing the master leaves the workers working; a restarted master adopts them, tops up to -n."""
    job = jobs(tmp_path, "mfail", 1600, env={"FILE_SLEEP": "0.02"}, extra=("--lease-ttl", "3"))
    job.start()
    wait_for(lambda: job.committed() >= 10, timeout=60, what="first commits")
    os.kill(job.proc.pid, signal.SIGKILL)
    job.proc.wait()
    before = job.workers()
    assert len(before) == 4
    n0 = job.committed()
    wait_for(lambda: job.committed() > n0 + 5, timeout=30, what="workers to go on without a master")
    # One worker dies while there is no master: the new master must top the count up again.
    victim = sorted(before)[0]
    os.kill(before[victim]["pid"], signal.SIGKILL)
    r = job.run()
    assert r.returncode == 0, r.stderr
    assert "resuming job mfail" in r.stderr and "reusing the job's embedded etcd" in r.stderr
    assert_exactly_once(str(job.out), job.inputs)
    report = job.report()
    assert sorted(report["adopted"]) == sorted(w for w in before if w != victim)
    # Never more than -n workers: 3 adopted + 1 new one for the dead worker's slot.
    assert report["launched"] == 1
    assert all(not pid_alive(rec["pid"]) for rec in before.values())


def test_standby_master_takes_over(tmp_path, jobs):
    job = jobs(tmp_path, "standby", 1200, workers=3, env={"FILE_SLEEP": "0.02"}, extra=("--lease-ttl", "3"))
    job.start()
    job.etcd_info()
    # The standby must start once the first master holds the key (else the standby simply becomes
    # the master, and the first one waits for its turn).
    wait_for(lambda: (job.store().get_value("master") or {}).get("pid") == job.proc.pid, timeout=60,
             what="the first master to hold the master key")
    standby = job.start("--standby", log_name="standby")
    wait_for(lambda: "standby: waiting to take over" in job.output_text("standby"), timeout=60, what="standby")
    wait_for(lambda: job.committed() >= 10, timeout=60, what="first commits")
    master = job.store().get_value("master")
    assert master["pid"] == job.proc.pid
    os.kill(master["pid"], signal.SIGKILL)
    assert job.wait(standby) == 0, job.output_text("standby")
    text = job.output_text("standby")
    assert "taking over" in text and "adopted 3 worker(s)" in text
    assert_exactly_once(str(job.out), job.inputs)
    assert job.report()["launched"] == 0


def test_sigstopped_worker_is_killed_by_hang_detection(tmp_path, jobs):
    job = jobs(tmp_path, "hang", 900, env={"FILE_SLEEP": "0.03"},
               extra=("--lease-ttl", "3", "--enable-job-hang-detection", "--job-hang-interval", "3",
                      "--slow-worker-multiplier", "0"))  # else the stopped worker is replaced as slow first
    job.start()
    wait_for(lambda: job.committed() >= 5, timeout=60, what="first commits")
    victim, rec = sorted(job.workers().items())[1]
    os.kill(rec["pid"], signal.SIGSTOP)
    try:
        assert job.wait() == 0, job.output_text()
    finally:
        if pid_alive(rec["pid"]):
            os.kill(rec["pid"], signal.SIGKILL)
    assert f"worker {victim} (pid {rec['pid']}) made no progress" in job.output_text()
    assert_exactly_once(str(job.out), job.inputs)
    report = job.report()
    assert report["relaunches"] == {"hang": 1}
    [exit_] = [e for e in report["worker_exits"] if e["worker"] == victim]
    assert exit_["error"].startswith("hung (no progress for 3s)")


@pytest.mark.parametrize("mode", ["exit", "raise"])
def test_poison_slice_fails_after_bounded_attempts(tmp_path, jobs, mode):
    """A slice that kills every worker taking it is failed with its error; the rest commit; exit 1."""
    inputs = make_files(str(tmp_path / "in"), 200)
    poison = inputs[57]  # slice 000005
    job = jobs(tmp_path, "poison", 200, workers=3,
               env={"POISON_FILE": poison, "POISON_MODE": mode, "FILE_SLEEP": "0.005"},
               extra=("--lease-ttl", "3", "--max-slice-attempts", "3"))
    r = job.run()
    assert r.returncode == 1, r.stderr
    report = job.report()
    assert report["state"] == "Failed" and report["reason"] == "1 slice(s) failed"
    [failed] = report["failed_slices"]
    assert failed["slice"] == "000005" and failed["attempts"] == 3
    assert f"poisoned input {poison}: cannot decode it" in failed["error"]
    assert f"failed slice {failed['dataset']}/000005" in r.stderr
    assert report["slices"] == {"total": 20, "committed": 19, "failed": 1}
    expected = [x for x in inputs if x not in inputs[50:60]]
    assert sorted(read_outputs(str(job.out))) == sorted(expected)
    cause = "exit:17" if mode == "exit" else "exit:1"
    assert set(report["relaunches"]) <= {cause}  # deaths seen after the job completed relaunch nothing
    deaths = [e for e in report["worker_exits"] if "poisoned input" in e.get("error", "")]
    assert len(deaths) >= 3


def test_max_num_of_same_error_fails_the_job(tmp_path, jobs):
    inputs = make_files(str(tmp_path / "in"), 200)
    job = jobs(tmp_path, "same", 200, workers=2, env={"POISON_FILE": inputs[57], "FILE_SLEEP": "0.005"},
               extra=("--lease-ttl", "3", "--max-slice-attempts", "3", "--max-num-of-same-error", "2"))
    r = job.run()
    assert r.returncode == 1, r.stderr
    report = job.report()
    assert report["state"] == "Failed"
    assert "the same failure happened 2 times (--max-num-of-same-error=2)" in report["reason"]
    assert "poisoned input" in report["reason"]
    assert report["failed_slices"] == []  # the job stopped before the slice ran out of attempts


def test_early_stop_never_starts_unneeded_workers(tmp_path, jobs):
    started = tmp_path / "started"
    started.mkdir()
    job = jobs(tmp_path, "early", 30, env={"STARTED_LOG": str(started)}, extra=("--launch-interval", "5"))
    t0 = time.monotonic()
    r = job.run()
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(started)) == ["w0.started"]  # w1..w3 never ran any user code
    assert "3 pending worker start(s) cancelled" in r.stderr
    assert job.report()["launched"] == 1
    assert time.monotonic() - t0 < 5 + 30  # it did not wait for the ramp either
    assert_exactly_once(str(job.out), job.inputs)


def test_etcd_restart_mid_job_kills_no_worker(tmp_path, jobs):
    job = jobs(tmp_path, "etcd", 1000, env={"FILE_SLEEP": "0.02"}, extra=("--lease-ttl", "5"))
    job.start()
    info = job.etcd_info()
    wait_for(lambda: job.committed() >= 20, timeout=60, what="first commits")
    os.kill(info["pid"], signal.SIGKILL)
    restarted = wait_for(lambda: (lambda i: i if i.get("pid") not in (None, info["pid"]) else None)(
        json.loads((job.path / "etcd.json").read_text() or "{}")), timeout=30, what="etcd to be restarted")
    assert restarted["port"] == info["port"]
    assert job.wait() == 0, job.output_text()
    assert_exactly_once(str(job.out), job.inputs)
    report = job.report()
    assert report["etcd_restarts"] == 1
    assert report["relaunches"] == {}
    assert all(e["exit"] == 0 for e in report["worker_exits"]), report["worker_exits"]


def test_speculative_copy_beats_a_slow_worker(tmp_path, jobs):
    """With replacement off, the tail slice of a 200x slower worker is copied and the copy wins."""
    job = jobs(tmp_path, "spec", 300, env={"FILE_SLEEP": "0.01", "SLOW_WORKERS": "w0", "SLOW_FACTOR": "200"},
               extra=("--slow-worker-multiplier", "0"))
    t0 = time.monotonic()
    r = job.run()
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 20  # w0 alone needs 20 s for one slice
    assert_exactly_once(str(job.out), job.inputs)
    report = job.report()
    assert report["speculation"]["won"] >= 1
    assert report["speculation"]["copies_started"] >= 1
    assert report["relaunches"] == {}
    [w0] = [e for e in report["worker_exits"] if e["worker"] == "w0"]
    assert w0["stopped"] == "moot"  # stopped once every slice was committed, its attempt moot


def test_slow_worker_is_replaced(tmp_path, jobs):
    # 120 slices of 0.2 s: enough left at detection to be worth a replacement's start-up (with 60 the
    # master may rightly judge that it would arrive too late, see Supervisor.slow).
    job = jobs(tmp_path, "slow", 1200, env={"FILE_SLEEP": "0.02", "SLOW_WORKERS": "w1", "SLOW_FACTOR": "10"})
    r = job.run()
    assert r.returncode == 0, r.stderr
    assert "worker w1 is slow" in r.stderr
    assert_exactly_once(str(job.out), job.inputs)
    report = job.report()
    assert report["replaced_slow"] == ["w1"] and report["relaunches"] == {"slow": 1}
    [w1] = [e for e in report["worker_exits"] if e["worker"] == "w1"]
    assert w1["stopped"] == "slow"
    assert any(w["worker_id"] == "w1-r1" and w["slices"] > 0 for w in report["workers"])


def _job_processes(job_id):
    """Pids of processes whose environment names this job (workers, spares, their children)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if f"AIMASTER_JOB_ID={job_id}".encode() in f.read().split(b"\0"):
                        found.append(int(pid))
            except OSError:
                pass
    return found


def test_a_warm_spare_takes_a_slow_workers_place(tmp_path, jobs):
    """--warm-spares 1: the spare runs the program up to its first aimaster call and waits; the slow
    worker's replacement is that spare, in its slot under the replacement's id; the spare started
    after it is stopped when the job ends, and nothing of the job is left running."""
    job = jobs(tmp_path, "spare", 1200, workers=2, env={"FILE_SLEEP": "0.02", "SLOW_WORKERS": "w1",
                                                          "SLOW_FACTOR": "10"}, extra=("--warm-spares", "1"))
    r = job.run()
    assert r.returncode == 0, r.stderr
    assert "started warm spare spare0" in r.stderr, r.stderr
    assert "worker w1 is slow" in r.stderr and "took its place as w1-r1" in r.stderr, r.stderr
    assert_exactly_once(str(job.out), job.inputs)
    report = job.report()
    assert report["replaced_slow"] == ["w1"] and report["relaunches"] == {"slow": 1}
    assert report["warm_spares"]["used"] == 1 and report["warm_spares"]["started"] >= 1, report["warm_spares"]
    assert report["launched"] == 2, "the replacement was a new process, not the spare"
    assert any(w["worker_id"] == "w1-r1" and w["slices"] > 0 for w in report["workers"])
    assert "warm spare spare0 runs as worker w1-r1" in (job.path / "logs" / "spare-0.err").read_text()
    exits = {e["worker"]: e for e in report["worker_exits"]}
    assert exits["w1"]["stopped"] == "slow" and "spare0" not in exits and "spare1" not in exits, exits
    assert _job_processes("spare") == []


def test_a_forged_spare_record_is_never_handed_a_slot(tmp_path, jobs):
    """Someone rewrites the ready spare's record (a "go" naming a worker id that is not a name): the
    spare ignores it and says so, the master never hands that spare the slot (its own "ready" record
    is gone) and replaces the slow worker by a new process; the spare is stopped at the end."""
    job = jobs(tmp_path, "forgedspare", 1200, workers=2, env={"FILE_SLEEP": "0.02", "SLOW_WORKERS": "w1",
                                                                "SLOW_FACTOR": "10"}, extra=("--warm-spares", "1"))
    job.start()
    store = job.store()
    wait_for(lambda: (store.get("spares/spare0")[0] or {}).get("state") == "ready", timeout=60, what="a ready spare")
    raw, meta = store.get_raw("spares/spare0")
    forged = {"state": "go", "worker_id": "../../w1", "slot": 1, "incarnation": 1}
    ok, _ = store.txn("forge", [Compare.mod("spares/spare0") == meta.mod_revision], [Op.put("spares/spare0", forged)])
    assert ok, "the spare's record changed before the test could forge it"
    assert job.wait() == 0, job.output_text()
    text = job.output_text()
    assert "worker w1 is slow" in text and "started w1-r1 to replace it" in text, text
    assert_exactly_once(str(job.out), job.inputs)
    report = job.report()
    assert report["warm_spares"] == {"started": 1, "used": 0}, report["warm_spares"]
    assert report["launched"] == 3, "the slow worker's replacement was not a new process"
    spare_err = (job.path / "logs" / "spare-0.err").read_text()
    assert spare_err.count("is not a name") == 1 and "runs as worker" not in spare_err, spare_err
    assert _job_processes("forgedspare") == []


def test_workers_join_and_leave(tmp_path, jobs):
    """--min-workers 3 with one local worker: the job runs once two more join; they leave mid-job."""
    job = jobs(tmp_path, "elastic", 600, workers=1, env={"FILE_SLEEP": "0.02"},
               extra=("--min-workers", "3", "--lease-ttl", "3"))
    job.start()
    store = job.store()
    wait_for(lambda: (store.get_value("job") or {}).get("state") == "Pending", timeout=30, what="Pending")
    port = job.etcd_info()["port"]
    joiner = subprocess.Popen(
        aimaster_cmd("join", "-n", "2", "--etcd", f"127.0.0.1:{port}", "--job-id", "elastic", "--quiet",
                     "--state-dir", str(tmp_path / "joined"), "--", sys.executable, WORKER, str(job.inp),
                     str(job.out), "10"),
        env=job.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (store.get_value("job") or {}).get("state") == "Running", timeout=30, what="Running")
        joined = wait_for(lambda: [w for w in job.workers() if w.startswith("w") and "g" in w], timeout=30,
                          what="joined workers")
        wait_for(lambda: job.committed() >= 20, timeout=60, what="commits")
        joiner.send_signal(signal.SIGINT)  # the joined machine leaves
        out, _ = joiner.communicate(timeout=60)
    finally:
        if joiner.poll() is None:
            joiner.kill()
    assert job.wait() == 0, job.output_text()
    assert_exactly_once(str(job.out), job.inputs)
    stats = {w["worker_id"]: w["slices"] for w in job.report()["workers"]}
    assert all(stats.get(w, 0) > 0 for w in joined), stats


def test_environment_errors_are_relaunched_and_the_job_succeeds(tmp_path, jobs):
    """A storage blip, etcd out of reach past the retry window, an I/O error: each kills a worker
    once, holding a slice. Under the default policy each is relaunched and the job Succeeds, exactly
    once; the retry window given to `aimaster run` reaches the workers."""
    markers = tmp_path / "markers"
    markers.mkdir()
    probe = tmp_path / "retry.txt"
    job = jobs(tmp_path, "envfail", 300, workers=2, worker=FLAKY_WORKER,
               env={"FLAKY_ERRORS": "TableIOError,EtcdUnavailableError,EIO", "FLAKY_MARKERS": str(markers),
                    "FILE_SLEEP": "0.005", "RETRY_PROBE": str(probe), "AIMASTER_ETCD_RETRY_SECONDS": "7"})
    r = job.run()
    assert r.returncode == 0, r.stderr
    assert_exactly_once(str(job.out), job.inputs)
    report = job.report()
    assert report["state"] == "Succeeded" and report["relaunches"] == {"exit:75": 3}, report["relaunches"]
    errors = [e["error"] for e in report["worker_exits"] if e.get("error")]
    assert len(errors) == 3 and all("(an environment error)" in e for e in errors), errors
    assert any("cannot write part file" in e for e in errors)
    assert any("unreachable for 60s" in e for e in errors)
    assert any("Input/output error" in e for e in errors)
    assert set(probe.read_text().split()) == {"7.0"}  # every worker, relaunched ones too


def test_failures_differing_in_ids_paths_and_addresses_are_the_same_error(tmp_path, jobs):
    """Each failure names another random attempt id, path, address and number: still one error,
    counted toward --max-num-of-same-error."""
    job = jobs(tmp_path, "sameid", 5, workers=1, worker=RANDOM_FAILURE,
               extra=("--max-num-of-same-error", "3", "--max-slice-attempts", "6"))
    r = job.run(timeout=120)
    assert r.returncode == 1, r.stderr
    report = job.report()
    assert "the same failure happened 3 times (--max-num-of-same-error=3)" in (report["reason"] or ""), report["reason"]
    assert report["relaunches"] == {"exit:1": 2}
    errors = [e["error"] for e in report["worker_exits"] if e.get("error")]
    assert len(errors) == 3 and len(set(errors)) == 3, errors  # three messages, one error


def test_sync_mode_restarts_every_worker_of_the_job(tmp_path, jobs):
    """--job-execution-mode=Sync: one worker killed, every worker restarts (new pids), the joined
    machine's too; each backs off by its own uptime; the job still commits every input once."""
    job = jobs(tmp_path, "sync", 1500, workers=2, env={"FILE_SLEEP": "0.02"},
               extra=("--job-execution-mode", "Sync", "--lease-ttl", "3", "--slow-worker-multiplier", "0"))
    job.start()
    port = job.etcd_info()["port"]
    wait_for(lambda: (job.store().get_value("job") or {}).get("state") == "Running", timeout=30, what="Running")
    joiner = subprocess.Popen(
        aimaster_cmd("join", "-n", "1", "--etcd", f"127.0.0.1:{port}", "--job-id", "sync", "--quiet",
                     "--state-dir", str(tmp_path / "joined"), "--", sys.executable, WORKER, str(job.inp),
                     str(job.out), "10"),
        env=job.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        before = wait_for(lambda: (lambda w: w if len(w) == 3 else None)(job.workers()), timeout=60,
                          what="three workers (two launched, one joined)")
        wait_for(lambda: job.committed() >= 10, timeout=60, what="first commits")
        old = {rec["pid"] for rec in before.values()}
        os.kill(before["w0"]["pid"], signal.SIGKILL)

        def restarted():
            assert job.proc.poll() is None, "the job ended before every worker was restarted"
            live = job.workers()
            return live if len(live) == 3 and not ({rec["pid"] for rec in live.values()} & old) else None

        after = wait_for(restarted, timeout=60, what="every worker to be restarted")
        assert job.wait() == 0, job.output_text()
        out, _ = joiner.communicate(timeout=60)
        assert joiner.returncode == 0, out
    finally:
        if joiner.poll() is None:
            joiner.kill()
    assert "restarting ours" in out
    assert_exactly_once(str(job.out), job.inputs)
    report = job.report()
    assert report["relaunches"] == {"signal:9": 1}
    assert [e["worker"] for e in report["worker_exits"] if e.get("stopped") == "sync"] == ["w1"]
    joined = [w for w in before if w not in ("w0", "w1")]
    assert len(joined) == 1 and not any(w == joined[0] for w in after)


def _etcds_on(data_dir: str):
    """Pids of processes running etcd on ``data_dir``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"etcd" and any(data_dir.encode() in a for a in argv):
            pids.append(int(entry))
    return pids


def test_two_runs_of_one_job_at_once(tmp_path, jobs):
    """Two `aimaster run` of one job id on one state directory at once: one runs the job, the other
    says so in one line and exits; no etcd is left on the job's data, and the job's status reads."""
    job = jobs(tmp_path, "twin", 300, workers=2, env={"FILE_SLEEP": "0.01"})
    a, b = job.start(log_name="a"), job.start(log_name="b")
    codes = {"a": job.wait(a), "b": job.wait(b)}
    assert sorted(codes.values())[0] == 0 and sorted(codes.values())[1] != 0, codes
    loser = [name for name, code in codes.items() if code != 0][0]
    text = job.output_text(loser)
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("aimaster: error: job twin is already running"), text
    said = [line for line in text.splitlines() if line.startswith("aimaster:")]
    assert len(said) == 2 and said[0].startswith("aimaster: job twin ("), text  # the banner, then the one line
    assert_exactly_once(str(job.out), job.inputs)
    assert job.report()["state"] == "Succeeded" and job.report()["launched"] == 2
    assert _etcds_on(str(job.path / "etcd")) == []
    r = subprocess.run(aimaster_cmd("status", "--job-id", "twin", "--state-dir", str(job.state)), env=job.env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "job twin: Succeeded" in r.stdout, r.stderr
    assert _etcds_on(str(job.path / "etcd")) == []  # status's own etcd is gone too
