"""Operating a job: live status from another process, progress display, stop, jobs, metrics, API, docs."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import REPO, aimaster_cmd, assert_exactly_once, clean_env, make_files, program, run_aimaster, wait_for

from aimaster.data.etcd_server import free_port


def _start(tmp_path, n_files=120, workers=4, job_id="ops", sleep="0.02", extra=(), env=None, **popen):
    inp, out, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    inputs = make_files(str(inp), n_files)
    cmd = aimaster_cmd("run", "-n", str(workers), "--job-id", job_id, "--state-dir", str(state), *extra, "--",
                       sys.executable, program("file_worker.py"), str(inp), str(out), "5")
    proc = subprocess.Popen(cmd, env=clean_env({"FILE_SLEEP": sleep, **(env or {})}), **popen)
    # `aimaster status` needs the job's state directory (until its record is written it says Pending).
    wait_for(lambda: os.path.isdir(os.path.join(state, "jobs", job_id)) or proc.poll() is not None,
             timeout=30, what="the job's state directory")
    return proc, inputs, str(out), str(state)


def _status(state, job_id="ops", *extra):
    r = run_aimaster("status", "--job-id", job_id, "--state-dir", state, "--json", *extra, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_status_of_running_job_from_another_process_matches_report(tmp_path):
    # ~4.5 s of work: long enough for `aimaster status` (a whole process, slow on a loaded machine)
    # to catch the job running.
    proc, inputs, out, state = _start(tmp_path, sleep="0.15", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
    try:
        # A moment of the running job with commits and a worker alive: sampled at 24/24, the job may
        # still read Running while every worker has already exited (the master is about to end it).
        def running(s):
            alive = [w for w in s["workers"] if w["alive"]]
            return s if s["slices"]["done"] >= 3 and s["state"] == "Running" and alive else None

        live = wait_for(lambda: running(_status(state)), timeout=60, what="a running job with commits")
        assert live["slices"]["total"] == 24
        assert len([w for w in live["workers"] if w["alive"]]) >= 1
        assert {"host", "pid", "slices", "items", "rate"} <= set(live["workers"][0])
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert_exactly_once(out, inputs)
    final = _status(state)
    report = json.load(open(os.path.join(state, "jobs", "ops", "report.json")))
    assert final["state"] == report["state"] == "Succeeded"
    assert final["slices"]["done"] == report["slices"]["committed"] == 24
    assert final["slices"]["failed"] == report["slices"]["failed"] == 0
    by_worker = {w["worker_id"]: (w["slices"], w["items"]) for w in final["workers"]}
    assert by_worker == {w["worker_id"]: (w["slices"], w["items"]) for w in report["workers"]}
    assert sum(s for s, _ in by_worker.values()) == 24


def test_progress_is_plain_lines_when_not_a_terminal(tmp_path):
    proc, inputs, out, state = _start(tmp_path, n_files=100, workers=2, sleep="0.05",
                                      env={"AIMASTER_PROGRESS_INTERVAL": "0.5"},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("[ops] ")]
    assert len(lines) >= 2, stderr
    assert re.search(r"\d+/20 slices", lines[-1])
    assert "\x1b[" not in stderr, "no terminal escapes when stderr is not a tty"


def test_progress_is_a_live_display_in_a_terminal(tmp_path):
    master, slave = pty.openpty()
    proc, inputs, out, state = _start(tmp_path, n_files=100, workers=2, sleep="0.05",
                                      stdout=slave, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(30)
    os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert "\x1b[" in text, "a terminal gets a live (ANSI) display"
    assert "20/20" in text and "slices" in text
    assert_exactly_once(out, inputs)


def test_stop_from_another_process_then_resume(tmp_path):
    proc, inputs, out, state = _start(tmp_path, n_files=200, workers=2, sleep="0.05", job_id="stopme",
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _status(state, "stopme")["slices"]["done"] >= 2, timeout=60, what="some commits")
        r = run_aimaster("stop", "--job-id", "stopme", "--state-dir", state, timeout=60)
        assert r.returncode == 0, r.stderr
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Stopped" in stderr
    stopped = _status(state, "stopme")
    assert stopped["state"] == "Stopped" and stopped["slices"]["done"] < 40
    r = run_aimaster("stop", "--job-id", "stopme", "--state-dir", state, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    # Resume: the same command finishes the job, exactly once.
    r = run_aimaster("run", "-n", "2", "--job-id", "stopme", "--state-dir", state, "--quiet", "--",
                     sys.executable, program("file_worker.py"), str(tmp_path / "in"), out, "5")
    assert r.returncode == 0, r.stderr
    assert_exactly_once(out, inputs)


def test_jobs_lists_jobs_of_an_etcd(tmp_path, etcd):
    inp = tmp_path / "in"
    make_files(str(inp), 10)
    for job in ("list-a", "list-b"):
        r = run_aimaster("run", "--etcd", etcd.endpoint, "--job-id", job, "--state-dir", str(tmp_path / "s"),
                         "--quiet", "--", sys.executable, program("file_worker.py"), str(inp),
                         str(tmp_path / job), "5")
        assert r.returncode == 0, r.stderr
    r = run_aimaster("jobs", "--etcd", etcd.endpoint, "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    jobs = {j["job_id"]: j for j in json.loads(r.stdout)}
    assert jobs["list-a"]["state"] == jobs["list-b"]["state"] == "Succeeded"
    r = run_aimaster("jobs", "--state-dir", str(tmp_path / "s"), timeout=60)
    assert r.returncode == 0


def test_failed_slices_are_retrievable(tmp_path):
    inp = tmp_path / "in"
    make_files(str(inp), 20, nested=False)
    r = run_aimaster("run", "-n", "2", "--job-id", "poison", "--state-dir", str(tmp_path / "s"), "--quiet",
                     "--max-slice-attempts", "2", "--", sys.executable, program("file_worker.py"), str(inp),
                     str(tmp_path / "out"), "5", env={"POISON_FILE": "f00007.txt"}, timeout=180)
    assert r.returncode != 0
    r = run_aimaster("status", "--job-id", "poison", "--state-dir", str(tmp_path / "s"), "--failed", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "000001" in r.stdout and "poisoned input f00007.txt" in r.stdout


def test_metrics_endpoint(tmp_path):
    port = free_port()
    proc, inputs, out, state = _start(tmp_path, n_files=200, workers=2, sleep="0.05", job_id="metrics",
                                      extra=("--metrics-port", str(port), "--metrics-grace", "0"),
                                      stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
    try:
        def scrape():
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                return None
            m = re.search(r'aimaster_slices\{job_id="metrics",state="committed"\} (\d+)', text)
            return text if m and int(m.group(1)) >= 2 else None

        text = wait_for(scrape, timeout=60, what="metrics with commits")
        assert 'aimaster_slices_planned{job_id="metrics"} 40.0' in text
        assert "aimaster_workers" in text and "aimaster_slice_seconds_bucket" in text
        assert re.search(r"aimaster_claim_seconds_count\{job_id=\"metrics\"\} [1-9]", text), "claim latencies observed"
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr


def test_python_api_submit_and_poll(tmp_path):
    from aimaster.api import submit

    inp = tmp_path / "in"
    inputs = make_files(str(inp), 30)
    job = submit([sys.executable, program("file_worker.py"), str(inp), str(tmp_path / "out"), "5"], workers=2,
                 job_id="api", state_dir=str(tmp_path / "s"), env=clean_env({"FILE_SLEEP": "0.1"}))
    states = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = job.status()["state"]
        if not states or states[-1] != state:
            states.append(state)
        if state in ("Succeeded", "Failed", "Stopped"):
            break
        time.sleep(0.2)
    # Polled as a user would: the job was seen running (~1.5 s of work), then it ended, in that order.
    assert states[-1] == "Succeeded" and "Running" in states, states
    assert states in (["Pending", "Running", "Succeeded"], ["Running", "Succeeded"]), states
    assert job.wait(timeout=60) == "Succeeded"
    assert job.report()["slices"]["committed"] == 6
    assert_exactly_once(str(tmp_path / "out"), inputs)


def test_worker_logs_are_captured_and_capped(tmp_path):
    inp = tmp_path / "in"
    make_files(str(inp), 10, nested=False)
    noisy = ("import sys\nfor i in range(40000): print('x' * 100)\n"
             "print('last words', file=sys.stderr)\n")
    r = run_aimaster("run", "--job-id", "logs", "--state-dir", str(tmp_path / "s"), "--quiet",
                     "--log-max-bytes", "100000", "--", sys.executable, "-c", noisy, timeout=120)
    assert r.returncode == 0, r.stderr
    logs = tmp_path / "s" / "jobs" / "logs" / "logs"
    sizes = {p.name: p.stat().st_size for p in logs.iterdir()}
    assert all(size <= 100000 + 200 for size in sizes.values()), sizes
    assert any(name.startswith("worker-0.out.") for name in sizes), f"rotated files expected: {sizes}"
    assert "last words" in (logs / "worker-0.err").read_text()


@pytest.mark.skipif(not os.path.exists(os.path.join(REPO, "mkdocs.yml")), reason="no docs site")
def test_docs_site_builds_without_warnings(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING" not in r.stderr, r.stderr
    assert (tmp_path / "site" / "cli" / "index.html").exists()
    cli_page = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "--max-num-of-same-error" in cli_page and "aimaster run" in cli_page
