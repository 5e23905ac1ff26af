"""A job's end tells the truth, whatever is written into its etcd keys while it runs.

Values are written by hand, with the etcd client, into a running job (a real `aimaster run` of
tests/programs/file_worker.py over real files, see tests/test_elastic.py's Job). Per-worker records
of the wrong shape are ignored with a warning naming their key, and the job Succeeds with every
input committed exactly once; a job record, master key or plan of the wrong shape, or a plan that
changed, ends the job Failed with a one-line reason naming the key and a report, with no worker
left running, and `aimaster status` reads the end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from helpers import aimaster_cmd, assert_exactly_once, make_files, program, read_outputs, run_aimaster, wait_for
from test_elastic import Job

from aimaster.data.store import EtcdConfig, Store, dumps, job_prefix
from aimaster.master.launcher import pid_alive


@pytest.fixture
def running(tmp_path):
    """A started job (file_worker.py, 3 workers) that has committed a few slices."""
    made = []

    def start(job_id, n_files=600, sleep="0.01", extra=(), commits=5):
        job = Job(tmp_path, job_id, n_files, workers=3, env={"FILE_SLEEP": sleep},
                  extra=("--lease-ttl", "3", *extra))
        made.append(job)
        job.start()
        wait_for(lambda: job.committed() >= commits, timeout=60, what="first commits")
        return job

    yield start
    for job in made:
        job.close()


def _put(job, rel, value):
    store = job.store()
    store.client.put(store.key(rel), value if isinstance(value, bytes) else dumps(value))


def _dataset(job):
    [ds] = [rel.split("/")[1] for rel in job.store().keys("") if rel.startswith("ds/") and rel.endswith("/plan")]
    return ds


def _status(job, *args):
    return subprocess.run(aimaster_cmd("status", "--job-id", job.job_id, "--state-dir", str(job.state), *args),
                          env=job.env, capture_output=True, text=True, timeout=60)


def test_malformed_worker_records_are_ignored_and_the_job_succeeds(running):
    job = running("advisory")
    ds = _dataset(job)
    key = job.store().key
    _put(job, "workers/evil", b"[1, 2, 3]")
    # A registration in every field but bound to no lease: no worker's, and it would never expire
    # (the master would wait for that "worker" for ever).
    _put(job, "workers/ghost", {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                                "ttl": 3, "lease": 4242, "slot": 0, "incarnation": 0, "launcher": "master"})
    _put(job, "beat/evil", b"\x00\xffnot json")
    _put(job, "beat/w9", {"held": "all of them", "state": 7})
    _put(job, "stats/evil", {"slices": "many", "copies": "lots", "recent": "fast", "first": "yesterday"})
    _put(job, f"ds/{ds}/claim/zzzzzz", b"[]")
    assert job.wait() == 0, job.output_text()
    text = job.output_text()
    assert "Traceback" not in text, text
    for rel in ("workers/evil", "workers/ghost", "beat/evil", "beat/w9", "stats/evil"):
        assert f"warning: ignoring value at {key(rel)}" in text, (rel, text)
    assert "bound to no lease" in text
    assert_exactly_once(str(job.out), job.inputs)
    report = job.report()
    assert report["state"] == "Succeeded" and report["slices"]["committed"] == 60
    assert [e for e in report["worker_exits"] if e["exit"] != 0] == []
    assert any(key("stats/evil") in why for why in report["ignored_records"]), report["ignored_records"]
    assert "evil" not in {w["worker_id"] for w in report["workers"] if w["alive"]}
    r = _status(job)
    assert r.returncode == 0 and "job advisory: Succeeded" in r.stdout, r.stderr
    assert f"warning: ignoring value at {key('workers/evil')}" in r.stdout


def test_a_stats_value_that_is_no_object_is_ignored(running):
    """stats/ is also read by the workers (pooled slice durations, for speculation near the end)."""
    job = running("stats")
    _put(job, "stats/junk", b"not json at all")
    assert job.wait() == 0, job.output_text()
    assert f"warning: ignoring value at {job.store().key('stats/junk')}" in job.output_text()
    assert_exactly_once(str(job.out), job.inputs)
    assert [e for e in job.report()["worker_exits"] if e["exit"] != 0] == []


JOB_LEVEL = {
    "job_garbage": ("job", b"\x00\xffnot json", "is not JSON"),
    "job_wrong_shape": ("job", {"state": "Running", "generation": "two"}, "'generation' is not"),
    # Well formed, but not what the master wrote: status and a standby would believe it.
    "job_forged_success": ("job", {"state": "Succeeded", "generation": 1, "ended": 1.0e9}, "written by someone"),
    "master_key_garbage": ("master", {"host": 17}, "not a master's record"),
}


def _expect_failed_naming(job, rel, needle, live_before):
    """The master ended the job Failed because of ``rel``: one line, a report, workers gone."""
    key = job.store().key(rel)
    assert job.wait() == 1, job.output_text()
    text = job.output_text()
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0] and needle in errors[0], text
    report = job.report()
    assert report["state"] == "Failed" and key in report["reason"] and needle in report["reason"], report["reason"]
    assert "\n" not in report["reason"]
    assert not any(pid_alive(rec["pid"]) for rec in live_before.values()), "a worker outlived the job"
    lines = read_outputs(str(job.out))
    assert len(lines) == len(set(lines)), "duplicated outputs"
    # The job record in etcd says so too (the master wrote it over the bad value), and status reads it.
    r = _status(job, "--json")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)["job"]
    assert record["state"] == "Failed" and record["reason"] == report["reason"], record
    r = _status(job)
    assert r.returncode == 0 and f"job {job.job_id}: Failed" in r.stdout and key in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("case", sorted(JOB_LEVEL))
def test_malformed_job_record_or_master_key_fails_the_job_with_a_report(running, case):
    rel, value, needle = JOB_LEVEL[case]
    job = running(case.replace("_", "-"))
    live = job.workers()
    _put(job, rel, value)
    _expect_failed_naming(job, rel, needle, live)


def _shrunk(plan):
    # A plan of fewer items that is consistent in itself: only "it changed" can tell.
    return dict(plan, num_items=300, num_slices=30, chunks=[300])


PLANS = {
    "garbage": (lambda plan: b"not json {", "is not JSON"),
    "wrong_type": (lambda plan: dict(plan, num_slices="60"), "'num_slices' is not"),
    "inconsistent": (lambda plan: dict(plan, num_slices=30), "does not match"),
    # Valid, but another plan than the one the job runs: completion would be counted against it
    # ("Succeeded" with half of the inputs never processed).
    "shrunk": (_shrunk, "changed after the dataset was planned"),
}


@pytest.mark.parametrize("case", sorted(PLANS))
def test_malformed_or_changed_plan_fails_the_job_with_a_report(running, case):
    make, needle = PLANS[case]
    job = running(f"plan-{case}".replace("_", "-"), n_files=1500, sleep="0.02")
    ds = _dataset(job)
    plan = job.store().get_value(f"ds/{ds}/plan")
    live = job.workers()
    _put(job, f"ds/{ds}/plan", make(plan))
    _expect_failed_naming(job, f"ds/{ds}/plan", needle, live)
    assert job.report()["slices"]["committed"] < 150
    assert json.dumps(job.report())  # the report itself is plain JSON


def _plan_the_moment_it_appears(job, timeout=60):
    """(dataset id, plan) as soon as the planner has written it: polled every few milliseconds,
    well inside the master's first round (0.5 s) after it."""
    store = job.store()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rel in store.keys("ds/"):
            if rel.endswith("/plan"):
                return rel.split("/")[0], store.get_value(f"ds/{rel}")
        time.sleep(0.003)
    raise AssertionError("no plan was written")


@pytest.mark.parametrize("how", ["put_over", "deleted_and_written_anew"])
def test_a_plan_forged_before_the_master_first_reads_it_fails_the_job(tmp_path, how):
    """The master judges completion against the plan it keeps; a consistent but shrunk plan put in
    place before its first read must not become that plan (it would count 30 commits of 150 as
    every input). Put over, the plan's etcd version gives it away; deleted and written anew, the
    slices etcd holds do (aimaster.data.plan_integrity)."""
    job = Job(tmp_path, f"forged-{how}".replace("_", "-"), 1500, workers=3, env={"FILE_SLEEP": "0.02"},
              extra=("--lease-ttl", "3"))
    try:
        job.start()
        ds, plan = _plan_the_moment_it_appears(job)
        rel = f"ds/{ds}/plan"
        store = job.store()
        if how == "deleted_and_written_anew":
            store.client.delete(store.key(rel))
        _put(job, rel, _shrunk(plan))
        needle = "written 2 times" if how == "put_over" else "changed after the dataset was planned"
        _expect_failed_naming(job, rel, needle, job.workers())
        assert job.report()["slices"]["committed"] < 150
    finally:
        job.close()


def test_a_malformed_job_record_found_at_start_fails_that_run_and_the_next_resumes(tmp_path, etcd, job_id):
    inputs = make_files(str(tmp_path / "in"), 40)
    store = Store(EtcdConfig([etcd.endpoint]), job_prefix(job_id))
    store.client.put(store.key("job"), b"\x00\xffnot json")
    args = ("run", "-n", "2", "--job-id", job_id, "--etcd", etcd.endpoint, "--state-dir", str(tmp_path / "s"),
            "--quiet", "--", sys.executable, program("file_worker.py"), str(tmp_path / "in"), str(tmp_path / "out"),
            "5")
    r = run_aimaster(*args, timeout=90)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    report = json.loads((tmp_path / "s" / "jobs" / job_id / "report.json").read_text())
    assert report["state"] == "Failed" and store.key("job") in report["reason"], report["reason"]
    assert report["launched"] == 0
    # The failed run wrote a sound record over the bad one: the next run of the job id just works.
    r = run_aimaster(*args, timeout=120)
    assert r.returncode == 0, r.stderr
    assert_exactly_once(str(tmp_path / "out"), inputs)
    store.close()


def test_a_master_stopped_by_an_error_ends_the_job_failed_not_running(tmp_path):
    """Whatever stops the master once it runs the job (here: its metrics port is taken), the job
    ends Failed with a report, not "Running" for ever."""
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    try:
        job = Job(tmp_path, "crash", 30, workers=1, extra=("--metrics-port", str(taken.getsockname()[1])))
        r = job.run(timeout=90)
    finally:
        taken.close()
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "aimaster: error: cannot serve metrics" in r.stderr
    report = job.report()
    assert report["state"] == "Failed" and "cannot serve metrics" in report["reason"], report
    r = _status(job)
    assert r.returncode == 0 and "job crash: Failed" in r.stdout, r.stdout + r.stderr
