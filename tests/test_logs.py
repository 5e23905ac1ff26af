"""``aimaster logs``: the workers' output, time-stamped, merged in order, a separator at each relaunch.

A real job whose slot 0 dies once (exit 75, an environment error: relaunched) before doing anything;
every worker prints to stdout and stderr. The log files and ``aimaster logs`` (the default job: the
most recent in the state directory) must show each line once, stamped, in time order, with the
separator of the relaunch; the failure recorded in the report is the worker's own line, unstamped.
``--follow`` ends by itself when the run ends, having printed the workers' last lines.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
from helpers import aimaster_cmd, clean_env, make_files, run_aimaster, wait_for

from aimaster.errors import ConfigError
from aimaster.master.joblogs import parse_worker
from aimaster.master.logpump import STAMP, Stamper, worker_lines

WORKER = """
import os, sys, time
import aimaster
from aimaster import inference as elastic_inference

w = os.environ["AIMASTER_WORKER_ID"]
print(f"hello from {w}", flush=True)
print(f"warming up {w}", file=sys.stderr, flush=True)
if os.environ["AIMASTER_WORKER_SLOT"] == "0" and os.environ["AIMASTER_WORKER_INCARNATION"] == "0":
    sys.exit(75)  # an environment error: relaunched
client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
    input_dir=sys.argv[1], output_dir=sys.argv[2], slice_size=5))
while True:
    try:
        paths = client.get_next_slice()
    except aimaster.data.OutOfRangeException:
        break
    with client.open_slice_output(suffix=".txt") as out:
        for path in paths:
            time.sleep(float(os.environ.get("FILE_SLEEP", "0")))
            out.write(os.path.relpath(path, sys.argv[1]) + "\\n")
    client.commit_slice()
    print(f"{w} committed {client.get_slice_id()}", flush=True)
print(f"bye from {w}", flush=True)
"""

_TIME = re.compile(r"^\[w\d!?\] (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) ")


def _job(tmp_path, job_id, n_files=40, sleep="0", background=False):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    make_files(str(tmp_path / "in"), n_files)
    args = ("run", "-n", "2", "--job-id", job_id, "--state-dir", str(tmp_path / "state"), "--quiet", "--",
            sys.executable, str(script), str(tmp_path / "in"), str(tmp_path / "out"))
    if background:
        return subprocess.Popen(aimaster_cmd(*args), env=clean_env({"FILE_SLEEP": sleep}),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return run_aimaster(*args, env={"FILE_SLEEP": sleep}, timeout=120)


def test_logs_are_stamped_merged_and_separated_at_each_relaunch(tmp_path):
    r = _job(tmp_path, "logged", n_files=80, sleep="0.05")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "state" / "jobs" / "logged" / "report.json").read_text())
    assert report["relaunches"] == {"exit:75": 1}
    [failure] = [e for e in report["worker_exits"] if e.get("error")]
    # What the master read of the worker's stderr is the worker's line, not the pump's stamp.
    assert failure["error"] == "exited with code 75 (an environment error): warming up w0", failure

    raw = (tmp_path / "state" / "jobs" / "logged" / "logs" / "worker-0.err").read_text().splitlines()
    assert raw and all(STAMP.match(line) for line in raw), raw
    assert worker_lines("\n".join(raw)) == ["warming up w0", "warming up w0-r1"]

    shown = run_aimaster("logs", "--state-dir", str(tmp_path / "state"), timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert all(_TIME.match(line) for line in lines), lines
    stamps = [_TIME.match(line).group(1) for line in lines]
    assert stamps == sorted(stamps), "merged in time order"
    text = "\n".join(lines)
    for expected in ("[w0] ", "[w0!] ", "[w1] ", "[w1!] "):
        assert expected in text
    body = [line[_TIME.match(line).end():] for line in lines]
    assert body.count("===== aimaster: w0-r1 started: slot 0, relaunch 1 =====") == 2  # stdout and stderr
    assert body.count("===== aimaster: w0 started: slot 0 =====") == 2
    assert sum(1 for b in body if re.fullmatch(r"w\d(-r1)? committed \S+", b)) == 16, body  # each slice's, once
    assert body.count("bye from w1") == 1
    # The relaunch separator comes after the first incarnation's last words, before the second's first.
    w0 = [b for line, b in zip(lines, body) if line.startswith("[w0!]")]
    assert w0.index("warming up w0") < w0.index("===== aimaster: w0-r1 started: slot 0, relaunch 1 =====") \
        < w0.index("warming up w0-r1")

    only = run_aimaster("logs", "--state-dir", str(tmp_path / "state"), "--job-id", "logged", "--worker", "w0-r1",
                        timeout=60)
    assert only.returncode == 0 and only.stdout and all(line.startswith("[w0") for line in only.stdout.splitlines())
    bad = run_aimaster("logs", "--state-dir", str(tmp_path / "state"), "--worker", "7", timeout=60)
    assert bad.returncode == 2 and "no logs of worker slot 7" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_follow_prints_until_the_run_ends(tmp_path):
    proc = _job(tmp_path, "followed", n_files=80, sleep="0.05", background=True)
    try:
        wait_for(lambda: (tmp_path / "state" / "jobs" / "followed" / "logs" / "worker-1.out").exists(),
                 timeout=60, what="the first log file")
        follow = subprocess.run(aimaster_cmd("logs", "--state-dir", str(tmp_path / "state"), "--follow"),
                                env=clean_env(), capture_output=True, text=True, timeout=120)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert follow.returncode == 0, follow.stderr
    body = [line.split(" ", 2)[2] for line in follow.stdout.splitlines()]
    assert body.count("bye from w1") == 1, body
    assert sum(1 for b in body if re.fullmatch(r"w\d(-r1)? committed \S+", b)) == 16, body
    # Once the run is over there is nothing to follow: it says so and returns.
    again = run_aimaster("logs", "--state-dir", str(tmp_path / "state"), "--follow", timeout=60)
    assert again.returncode == 0 and "is not running" in again.stdout


def test_stamps_start_every_line_whatever_the_chunks():
    s = Stamper()
    data = s(b"par") + s(b"tial\nwhole\n") + s(b"\n") + s(b"x\ny")
    lines = data.decode().split("\n")
    assert all(STAMP.match(line) for line in lines), lines
    assert worker_lines(data.decode()) == ["partial", "whole", "", "x", "y"]


def test_worker_option():
    assert parse_worker("0") == parse_worker("w0") == parse_worker("w0-r3") == parse_worker("w0-r1g2") == 0
    assert parse_worker("w12") == 12
    with pytest.raises(ConfigError):
        parse_worker("master")
