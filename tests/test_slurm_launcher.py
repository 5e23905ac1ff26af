"""`aimaster run --launcher slurm` inside a real Slurm allocation (a one-node cluster made by a fixture).

The master runs under ``salloc -n 3 --overcommit``; its workers are ``srun`` job steps, three by
default (``$SLURM_NTASKS``). Two of them are SIGKILLed mid-job and must come back as new steps; the
job ends Succeeded with every input in exactly one committed output. The batch script written by
``aimaster slurm script`` runs the same way under ``sbatch --wait``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import aimaster_cmd, assert_exactly_once, make_files, program, run_aimaster, wait_for
from slurm_cluster import slurm  # noqa: F401 - the fixture

from aimaster.master.launcher import pid_alive

pytestmark = pytest.mark.slow
RECORDER = program("env_recorder.py")


def _records(directory):
    return {name[:-5]: json.loads((directory / name).read_text()) for name in os.listdir(directory)
            if name.endswith(".json")}


def _env(slurm_env, **extra):
    env = {k: v for k, v in slurm_env.items() if not k.startswith("AIMASTER_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def test_killed_steps_are_relaunched_as_new_steps(tmp_path, slurm):  # noqa: F811 - the fixture
    inp, out, rec, state = tmp_path / "in", tmp_path / "out", tmp_path / "rec", tmp_path / "state"
    rec.mkdir()
    inputs = make_files(str(inp), 90)
    cmd = ["salloc", "-n", "3", "--overcommit", "--quiet", *aimaster_cmd(
        "run", "--launcher", "slurm", "--lease-ttl", "3", "--job-id", "slurm", "--state-dir", str(state), "--quiet",
        "--", sys.executable, RECORDER, str(rec), str(inp), str(out), "5")]
    log_path = tmp_path / "master.log"
    with open(log_path, "w+") as log:
        proc = subprocess.Popen(cmd, env=_env(slurm, FILE_SLEEP="0.05", HOLD_AFTER="2"), stdout=log,
                                stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
        try:
            first = wait_for(lambda: len(_records(rec)) >= 3 and _records(rec), timeout=90, what="3 worker steps")
            assert sorted(first) == ["w0", "w1", "w2"], first  # $SLURM_NTASKS of the allocation
            for w in ("w0", "w1"):
                os.kill(first[w]["pid"], signal.SIGKILL)
            again = wait_for(lambda: {w: r for w, r in _records(rec).items() if w in ("w0-r1", "w1-r1")}
                             if {"w0-r1", "w1-r1"} <= set(_records(rec)) else None, timeout=90, what="relaunches")
            (rec / "go").touch()
            assert proc.wait(120) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    steps = [r["slurm_step"] for r in list(first.values()) + list(again.values())]
    assert all(s is not None and s.isdigit() for s in steps) and len(set(steps)) == 5, steps  # new steps
    assert_exactly_once(str(out), inputs)
    report = json.loads((state / "jobs" / "slurm" / "report.json").read_text())
    assert report["state"] == "Succeeded", report
    assert "launcher: slurm (job" in log_path.read_text()


def test_a_hung_step_is_killed_through_slurm(tmp_path, slurm):  # noqa: F811 - the fixture
    """SIGKILL cannot be forwarded by srun: the master kills a hung step with scancel, no task left behind."""
    inp, out, rec, state = tmp_path / "in", tmp_path / "out", tmp_path / "rec", tmp_path / "state"
    rec.mkdir()
    inputs = make_files(str(inp), 400)  # 10 s of work for the worker left: the hung one is replaced before
    cmd = ["salloc", "-n", "2", "--overcommit", "--quiet", *aimaster_cmd(
        "run", "--launcher", "slurm", "--lease-ttl", "3", "--enable-job-hang-detection", "--job-hang-interval", "3",
        "--slow-worker-multiplier", "0", "--job-id", "hung", "--state-dir", str(state), "--quiet",
        "--", sys.executable, RECORDER, str(rec), str(inp), str(out), "5")]
    log_path = tmp_path / "master.log"
    with open(log_path, "w+") as log:
        proc = subprocess.Popen(cmd, env=_env(slurm, FILE_SLEEP="0.05"), stdout=log,
                                stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
        try:
            first = wait_for(lambda: "w1" in _records(rec) and _records(rec), timeout=90, what="the worker steps")
            os.kill(first["w1"]["pid"], signal.SIGSTOP)  # hung, with its step and srun still there
            wait_for(lambda: "w1-r1" in _records(rec), timeout=90, what="the hung step replaced")
            # Gone while the allocation still runs (the end of the allocation would kill it anyway).
            wait_for(lambda: not pid_alive(first["w1"]["pid"]), timeout=30, what="the hung task killed")
            (rec / "go").touch()
            assert proc.wait(120) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    output = log_path.read_text()
    assert "made no progress" in output, output
    assert_exactly_once(str(out), inputs)


def test_the_batch_script_runs_under_sbatch(tmp_path, slurm):  # noqa: F811 - the fixture
    inp, out, rec, state = tmp_path / "in", tmp_path / "out", tmp_path / "rec", tmp_path / "state"
    rec.mkdir()
    inputs = make_files(str(inp), 40)
    script = run_aimaster("slurm", "script", "-n", "2", "--job-id", "batch", "--state-dir", str(state), "--quiet",
                          "--output", str(tmp_path / "job.out"), "--", sys.executable, RECORDER, str(rec), str(inp),
                          str(out), "5", timeout=60)
    assert script.returncode == 0, script.stderr
    (tmp_path / "job.sbatch").write_text(script.stdout)
    r = subprocess.run(["sbatch", "--wait", str(tmp_path / "job.sbatch")], env=_env(slurm), cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    output = (tmp_path / "job.out").read_text() if (tmp_path / "job.out").exists() else ""
    assert r.returncode == 0, r.stderr + output
    assert sorted(_records(rec)) == ["w0", "w1"], output
    assert_exactly_once(str(out), inputs)
    assert json.loads((state / "jobs" / "batch" / "report.json").read_text())["state"] == "Succeeded"


def test_outside_an_allocation_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AIMASTER_"))}
    r = subprocess.run(aimaster_cmd("run", "--launcher", "slurm", "--state-dir", str(tmp_path), "--", sys.executable,
                                    "-c", "pass"), env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--launcher slurm runs inside a Slurm allocation" in lines[0], r.stderr
