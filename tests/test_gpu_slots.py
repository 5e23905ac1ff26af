"""GPU slots on one machine: each local worker slot owns its CUDA_VISIBLE_DEVICES, also after a relaunch.

No GPU is needed: what is tested is what the workers see in their environment (real `aimaster run`,
real worker processes, a real SIGKILL), which is all a CUDA program looks at to pick its devices.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from helpers import aimaster_cmd, assert_exactly_once, clean_env, make_files, program, run_aimaster, wait_for

from aimaster.errors import ConfigError
from aimaster.master.launchers.gpus import parse_gpus, slot_gpus

RECORDER = program("env_recorder.py")


def _records(directory):
    return {name[:-5]: json.loads((directory / name).read_text()) for name in os.listdir(directory)
            if name.endswith(".json")}


def test_slots_get_disjoint_gpus_and_a_relaunch_gets_its_slots_back(tmp_path):
    inp, out, rec, state = tmp_path / "in", tmp_path / "out", tmp_path / "rec", tmp_path / "state"
    rec.mkdir()
    inputs = make_files(str(inp), 60)
    cmd = aimaster_cmd("run", "-n", "2", "--gpus", "0,1,2,3", "--gpus-per-worker", "2", "--job-id", "gpus",
                       "--state-dir", str(state), "--quiet", "--", sys.executable, RECORDER, str(rec), str(inp),
                       str(out), "5")
    with open(tmp_path / "master.log", "w+") as log:
        proc = subprocess.Popen(cmd, env=clean_env({"FILE_SLEEP": "0.05"}), stdout=log, stderr=subprocess.STDOUT)
        try:
            first = wait_for(lambda: _records(rec).get("w0"), timeout=60, what="worker w0 to start")
            os.kill(first["pid"], signal.SIGKILL)
            wait_for(lambda: "w0-r1" in _records(rec), timeout=60, what="slot 0 relaunched")
            assert proc.wait(120) == 0, (tmp_path / "master.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seen = _records(rec)
    assert seen["w0"]["gpus"] == "0,1" and seen["w1"]["gpus"] == "2,3", seen
    assert seen["w0-r1"]["gpus"] == "0,1", seen  # the relaunch is back on its slot's GPUs
    assert_exactly_once(str(out), inputs)


@pytest.mark.parametrize("args, message", [
    (("-n", "3", "--gpus", "0,1,2,3", "--gpus-per-worker", "2"), "needs 6 GPUs; --gpus 0,1,2,3 lists 4"),
    (("--gpus", "0,1"), "--gpus needs --gpus-per-worker"),
    (("--gpus", "0,x", "--gpus-per-worker", "1"), "expected a comma-separated list"),
    (("--gpus", "0,1", "--gpus-per-worker", "0.5"), "gives whole GPUs"),
    (("--launcher", "ray", "--gpus", "0,1", "--gpus-per-worker", "1"), "ray places GPUs itself"),
])
def test_bad_gpu_options_are_one_line(tmp_path, args, message):
    r = run_aimaster("run", *args, "--state-dir", str(tmp_path), "--", sys.executable, "-c", "pass", timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "jobs").exists() or not os.listdir(tmp_path / "jobs"), "a job was made for bad input"


def test_gpu_split_and_its_limits():
    assert slot_gpus(2, 2, "0,1,2,3") == {0: "0,1", 1: "2,3"}
    assert slot_gpus(3, 1, "GPU-a1,GPU-b2,3") == {0: "GPU-a1", 1: "GPU-b2", 2: "3"}
    with pytest.raises(ConfigError, match="lists a GPU twice"):
        parse_gpus("0,0")
    if shutil.which("nvidia-smi") is None:
        with pytest.raises(ConfigError, match="nvidia-smi is not available"):
            slot_gpus(1, 1, None)
