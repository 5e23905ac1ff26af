"""A master with no workers of its own (``aimaster run -n 0``, as on Kubernetes) ends the job Failed
when an ``aimaster join``'s fault policy fails it: the joiner tells it through the job's control key.
Before, the joiner exited 1 and the master waited for joiners that would never come back."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import aimaster_cmd, clean_env, make_files, program, wait_for

from aimaster.data import keys
from aimaster.data.store import EtcdConfig, Store, job_prefix

WORKER = program("file_worker.py")


def test_a_joiners_user_error_ends_the_masters_job_failed(etcd, job_id, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_files(str(inp), 20)
    master = subprocess.Popen(
        aimaster_cmd("run", "-n", "0", "--etcd", etcd.endpoint, "--job-id", job_id, "--quiet",
                     "--state-dir", str(tmp_path / "master"), "--", sys.executable, WORKER, str(inp), str(out), "5"),
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Join once the master has written the job record (before, `aimaster join` says "no job").
        store = Store(EtcdConfig([etcd.endpoint], retry_seconds=10), job_prefix(job_id))
        try:
            wait_for(lambda: store.get_value(keys.JOB) is not None or master.poll() is not None, timeout=60,
                     what="the job record")
        finally:
            store.close()
        # The joiner's program points at an input directory that does not exist: a user error
        # (exit 3, "aimaster: error: ..."), which fails the job at once under every policy.
        joiner = subprocess.run(
            aimaster_cmd("join", "-n", "1", "--etcd", etcd.endpoint, "--job-id", job_id, "--quiet",
                         "--state-dir", str(tmp_path / "joiner"), "--", sys.executable, WORKER,
                         str(tmp_path / "missing"), str(out), "5"),
            env=clean_env(), capture_output=True, text=True, timeout=180)
        assert joiner.returncode == 1, joiner.stdout + joiner.stderr
        output, _ = master.communicate(timeout=120)
    finally:
        if master.poll() is None:
            master.kill()
    assert master.returncode == 1, output
    assert "an `aimaster join` ended job" in output, output
    report = json.load(open(tmp_path / "master" / "jobs" / job_id / "report.json"))
    assert report["state"] == "Failed"
    assert "decided by" in report["reason"] and "missing" in report["reason"], report["reason"]
