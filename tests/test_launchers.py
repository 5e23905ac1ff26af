"""The launcher interface and its pieces, without an engine: real processes, real signals.

The engines themselves run in tests/test_ray_launcher.py and tests/test_slurm_launcher.py; here the
parts that need none: the Ray actor's own logic (run as a plain object), the srun line, the checks
made before any job exists.
"""

from __future__ import annotations

import signal
import sys
import threading

import pytest

from aimaster.errors import ConfigError
from aimaster.master.launcher import LogOptions, WorkerProcess
from aimaster.master.launchers import LocalLauncher, make_launcher
from aimaster.master.launchers.ray_actors import WorkerActor
from aimaster.master.launchers.slurm_steps import SlurmLauncher


def _drain(actor, until_done=True):
    out, err = b"", b""
    for _ in range(600):
        o, e, pid, node, done = actor.read(0.5)
        out, err = out + o, err + e
        if done or (not until_done and (out or err)):
            return out, err, pid
    raise AssertionError("the actor never finished")


def test_the_actor_runs_the_command_and_hands_its_output_over():
    actor = WorkerActor()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", actor.run(
        [sys.executable, "-c", "import os, sys; print(os.environ['X']); print('oops', file=sys.stderr); sys.exit(3)"],
        {"X": "from the job", "PATH": "/usr/bin:/bin"}, "/nonexistent")))
    t.start()
    out, err, pid = _drain(actor)
    t.join(30)
    assert result["rc"] == 3 and pid > 0
    assert out == b"from the job\n" and err == b"oops\n"


def test_a_signal_reaches_the_command():
    actor = WorkerActor()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", actor.run(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"], {}, ".")))
    t.start()
    _drain(actor, until_done=False)  # it runs
    actor.signal(signal.SIGTERM)
    t.join(30)
    assert result["rc"] == -signal.SIGTERM


def test_a_command_that_cannot_start_says_so():
    actor = WorkerActor()
    assert actor.run(["/nonexistent/program"], {}, ".") == 127
    _, err, _ = _drain(actor)
    assert b"cannot start '/nonexistent/program'" in err


def test_local_slots_get_their_own_gpus_only(tmp_path):
    launcher = LocalLauncher({0: "0,1", 1: "2,3"})
    seen = []
    for slot in (0, 1):
        w = launcher.start(slot, 0, [sys.executable, "-c", "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'))"],
                           {"CUDA_VISIBLE_DEVICES": "9"}, str(tmp_path), logs=LogOptions())
        assert isinstance(w, WorkerProcess)
        w.proc.wait(30)
        w.pump.wait(30)
        seen.append((tmp_path / f"worker-{slot}.out").read_text().splitlines()[-1].split(" ", 1)[1])
    assert seen == ["0,1", "2,3"]
    assert LocalLauncher().slot_env(0, {"A": "1"}) == {"A": "1"}  # no GPUs asked: the job's env as it is


def test_the_srun_line_of_a_step(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setattr("shutil.which", lambda name, *a, **k: f"/usr/bin/{name}")
    argv = SlurmLauncher(cpus_per_worker=4, gpus_per_worker=1).srun("aimaster-j-w0")
    assert argv == ["srun", "--ntasks=1", "--nodes=1", "--overlap", "--quiet", "--job-name=aimaster-j-w0",
                    "--jobid=42", "--cpus-per-task=4", "--gpus-per-task=1", "--"]
    with pytest.raises(ConfigError, match="whole numbers"):
        SlurmLauncher(cpus_per_worker=0.5)


def test_engines_are_checked_before_any_job(monkeypatch):
    for k in ("SLURM_JOB_ID", "SLURM_JOBID"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ConfigError, match="runs inside a Slurm allocation"):
        make_launcher("slurm", 2)
    with pytest.raises(ConfigError, match="unknown launcher"):
        make_launcher("mesos", 2)
