"""A worker that starts after the data is done (a Kubernetes worker pod replaced late, a Slurm step
started after the end) exits 0 at once and never starts COMMAND: the engine sees a success, not a
crash to retry."""

from __future__ import annotations

import subprocess
import sys

from helpers import aimaster_cmd, clean_env, make_files, program, read_outputs

WORKER = program("file_worker.py")


def test_join_of_a_finished_job_exits_0_without_starting_the_command(etcd, job_id, tmp_path):
    inp, out, started = tmp_path / "in", tmp_path / "out", tmp_path / "started"
    inputs = make_files(str(inp), 30)
    command = ["--", sys.executable, WORKER, str(inp), str(out), "10"]
    r = subprocess.run(aimaster_cmd("run", "-n", "1", "--etcd", etcd.endpoint, "--job-id", job_id, "--quiet",
                                    "--state-dir", str(tmp_path / "master"), *command),
                       env=clean_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr + r.stdout
    assert sorted(read_outputs(str(out))) == sorted(inputs)
    started.mkdir()
    r = subprocess.run(aimaster_cmd("join", "-n", "2", "--etcd", etcd.endpoint, "--job-id", job_id, "--quiet",
                                    "--state-dir", str(tmp_path / "late"), *command),
                       env=clean_env({"STARTED_LOG": str(started)}), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "all slices are already committed; no worker is started" in r.stdout + r.stderr, r.stdout + r.stderr
    assert list(started.iterdir()) == []  # COMMAND never ran
    assert sorted(read_outputs(str(out))) == sorted(inputs)
