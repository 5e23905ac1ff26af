"""A typo on the command line is one clear line, and leaves no job behind.

Options before COMMAND (or ``--``) are aimaster's: an unknown one is click's "no such option" with
its suggestion, never the start of the worker command. A COMMAND whose program does not exist is
refused in one line naming it, before any job is registered (no state directory, nothing listed).
"""

from __future__ import annotations

import os
import stat
import sys

import pytest
from helpers import run_aimaster

from aimaster.errors import ConfigError
from aimaster.master.commandline import check_command


def _no_job_left(state):
    assert not os.path.exists(state), f"a job was registered: {os.listdir(state)}"
    r = run_aimaster("jobs", "--state-dir", str(state), timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "no jobs", r.stdout


@pytest.mark.parametrize("command", ["run", "join"])
def test_an_unknown_option_is_no_such_option_with_a_suggestion(tmp_path, command):
    state = tmp_path / "state"
    r = run_aimaster(command, "--workres", "3", "--state-dir", str(state), "--", sys.executable, "-c", "pass",
                     timeout=60)
    assert r.returncode == 2, r.stderr
    assert "No such option '--workres'" in r.stderr and "--workers" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) <= 4, r.stderr
    _no_job_left(state)


@pytest.mark.parametrize("program, says", [
    ("pyhton", "COMMAND 'pyhton' not found: not on PATH and not a file"),
    ("./no-such-script.sh", "COMMAND './no-such-script.sh' does not exist"),
])
def test_a_command_that_does_not_exist_is_one_line_and_registers_no_job(tmp_path, program, says):
    state = tmp_path / "state"
    r = run_aimaster("run", "-n", "2", "--state-dir", str(state), "--", program, "infer.py", timeout=60,
                     cwd=str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"aimaster: error: {says}", r.stderr
    _no_job_left(state)


def test_join_refuses_a_missing_command_before_asking_etcd(tmp_path):
    # No etcd listens on port 1: had it been asked first, the error would be about etcd.
    r = run_aimaster("join", "--etcd", "127.0.0.1:1", "--job-id", "j", "--state-dir", str(tmp_path / "s"), "--",
                     "pyhton", "infer.py", timeout=60)
    assert r.returncode == 2 and r.stderr.strip().startswith("aimaster: error: COMMAND 'pyhton' not found"), r.stderr


def test_the_worker_command_keeps_its_own_options(tmp_path):
    """Everything from COMMAND on is the worker's, options included, with or without ``--``."""
    out = tmp_path / "argv"
    code = f"import sys; open({str(out)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"
    r = run_aimaster("run", "--state-dir", str(tmp_path / "s"), "--quiet", sys.executable, "-c", code, "--workres",
                     "-n", "7", timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_text().split("\n")[0] == "--workres -n 7"


def test_check_command(tmp_path):
    script = tmp_path / "infer.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError, match="is not an executable file"):
        check_command([str(script)])
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    check_command([str(script)])
    check_command([sys.executable, "-c", "pass"])
    check_command(["sh", "-c", "true"])
    with pytest.raises(ConfigError, match="is not an executable file"):
        check_command([str(tmp_path)])
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ConfigError, match=r"for the file in this directory, write \./infer\.sh"):
            check_command(["infer.sh"])
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("options, says", [
    (("--warm-spares", "1", "--slow-worker-multiplier", "0"), "--warm-spares only replace slow workers"),
    (("--warm-spares", "1", "--gpus-per-worker", "1", "--gpus", "0,1"),
     "--warm-spares needs the local launcher without --gpus-per-worker"),
    (("--warm-spares", "-1"), "Invalid value for '--warm-spares'"),
])
def test_warm_spares_that_cannot_work_are_a_usage_error(tmp_path, options, says):
    state = tmp_path / "state"
    r = run_aimaster("run", "-n", "2", "--state-dir", str(state), *options, "--", sys.executable, "-c", "pass",
                     timeout=60)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and "Traceback" not in r.stderr and len(r.stderr.splitlines()) <= 4, r.stderr
    _no_job_left(state)
