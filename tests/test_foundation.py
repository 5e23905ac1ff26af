"""End-to-end: `aimaster run` over real files with real worker processes and a real etcd."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import (
    aimaster_cmd,
    assert_exactly_once,
    clean_env,
    make_files,
    program,
    read_outputs,
    run_aimaster,
    wait_for,
)

from aimaster.master.launcher import pid_alive


def _run_files_job(tmp_path, n_files, workers, slice_size, job_id="job1", env=None, extra=()):
    inp, out = tmp_path / "in", tmp_path / "out"
    inputs = make_files(str(inp), n_files)
    r = run_aimaster("run", "-n", str(workers), "--job-id", job_id, "--state-dir", str(tmp_path / "state"),
                     "--quiet", *extra, "--", sys.executable, program("file_worker.py"), str(inp), str(out),
                     str(slice_size), env=env)
    return r, inputs, str(out)


def test_three_workers_1000_files_exactly_once(tmp_path):
    r, inputs, out = _run_files_job(tmp_path, 1000, 3, 10)
    assert r.returncode == 0, r.stderr
    assert "Succeeded" in r.stderr
    assert_exactly_once(out, inputs)
    report = json.load(open(tmp_path / "state" / "jobs" / "job1" / "report.json"))
    assert report["state"] == "Succeeded"
    assert report["slices"] == {"total": 100, "committed": 100, "failed": 0}
    # All three workers took part (dynamic dispatch, not a static split).
    assert len([w for w in report["workers"] if w["slices"] > 0]) == 3


def test_standalone_gives_same_outputs(tmp_path):
    inp = tmp_path / "in"
    inputs = make_files(str(inp), 137)
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    r = subprocess.run([sys.executable, program("file_worker.py"), str(inp), str(out_a), "10"],
                       env=clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = run_aimaster("run", "-n", "2", "--job-id", "j", "--state-dir", str(tmp_path / "s"), "--quiet", "--",
                     sys.executable, program("file_worker.py"), str(inp), str(out_b), "10")
    assert r.returncode == 0, r.stderr
    assert_exactly_once(str(out_a), inputs)
    files_a = sorted(os.listdir(out_a))
    assert files_a == sorted(os.listdir(out_b)) and len(files_a) == 14
    for name in files_a:
        assert open(out_a / name).read() == open(out_b / name).read()


def _slice_holders(etcd_endpoint, job_id):
    """{slice id: worker id} of slices currently claimed in a job."""
    from aimaster.data.store import EtcdConfig, Store, job_prefix

    store = Store(EtcdConfig([etcd_endpoint]), job_prefix(job_id))
    try:
        return {rel.rsplit("/", 1)[1]: v["w"] for rel, v, _ in store.range("ds/", expect=None) if "/claim/" in rel}, \
            {rel.rsplit("/", 1)[1]: v for rel, v, _ in store.range("ds/", expect=None) if "/done/" in rel}, \
            {rel[len("workers/"):]: v for rel, v, _ in store.range("workers/")}
    finally:
        store.close()


def _etcd_endpoint(state_dir, job_id):
    info = os.path.join(state_dir, "jobs", job_id, "etcd.json")
    return wait_for(lambda: os.path.exists(info) and json.load(open(info)), what="etcd.json")


def test_sigkill_worker_mid_slice_slice_is_redone_elsewhere(tmp_path):
    inp, out, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    inputs = make_files(str(inp), 120)
    proc = subprocess.Popen(
        aimaster_cmd("run", "-n", "3", "--job-id", "k", "--state-dir", str(state), "--quiet", "--lease-ttl", "3",
                     "--", sys.executable, program("file_worker.py"), str(inp), str(out), "10"),
        env=clean_env({"FILE_SLEEP": "0.05"}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = _etcd_endpoint(str(state), "k")
        endpoint = f"127.0.0.1:{info['port']}"
        claims = wait_for(lambda: _slice_holders(endpoint, "k")[0], timeout=60, what="a claimed slice")
        sid, victim = sorted(claims.items())[0]
        workers = _slice_holders(endpoint, "k")[2]
        os.kill(workers[victim]["pid"], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "killed by SIGKILL" in stderr
    assert_exactly_once(str(out), inputs)
    report = json.load(open(state / "jobs" / "k" / "report.json"))
    assert report["relaunches"] == {"signal:9": 1}
    # The killed attempt's slice was committed by another worker.
    from aimaster.data.etcd_server import EmbeddedEtcd

    with EmbeddedEtcd(data_dir=str(state / "jobs" / "k" / "etcd")) as e:
        done = _slice_holders(e.endpoint, "k")[1]
    assert done[sid]["w"] != victim


def test_commit_race_exactly_one_wins(tmp_path, etcd, job_id, job_env):
    """Two real worker processes hold attempts of the same slice and commit at the same moment."""
    from aimaster.data.coordinator import Dataset
    from aimaster.data.store import EtcdConfig, Store, job_prefix

    inp, out = tmp_path / "in", tmp_path / "out"
    make_files(str(inp), 4, nested=False)
    go = tmp_path / "go"
    env = clean_env(job_env)

    def start(name):
        return subprocess.Popen(
            [sys.executable, program("race_worker.py"), str(inp), str(out), str(tmp_path), name],
            env=dict(env, AIMASTER_WORKER_ID=name), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    a = start("A")
    wait_for(lambda: (tmp_path / "A.ready").exists(), what="A to claim the slice")
    # A's lease is lost (as after a long GC pause): its claim vanishes and the slice is free again.
    store = Store(EtcdConfig([etcd.endpoint]), job_prefix(job_id))
    lease_id = store.get_value("workers/A")["lease"]
    store.client.revoke_lease(lease_id)
    b = start("B")
    wait_for(lambda: (tmp_path / "B.ready").exists(), timeout=60, what="B to claim the same slice")
    go.write_text("go")
    results = {}
    for name, p in (("A", a), ("B", b)):
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr
        results[name] = stdout.strip().splitlines()[-1]
    assert sorted(results.values()) == ["commit=False", "commit=True"], results
    winner = "A" if results["A"] == "commit=True" else "B"
    # Only the winner's output exists, under the slice's name; the loser's never appears.
    files = sorted(os.listdir(out))
    assert files == ["000000.txt"], files
    assert open(out / "000000.txt").read().startswith(f"written by {winner}")
    # etcd agrees about who committed.
    ds_id = [k.split("/")[0] for k in store.keys("ds/") if k.endswith("/plan")][0]
    from aimaster.data.session import WorkerSession

    session = WorkerSession(store, "observer", register=False)
    ds = Dataset(session, ds_id)
    ds.load_plan()
    committed = dict(ds.committed())
    assert committed["000000"]["w"] == winner
    session.close()


def test_resume_after_everything_is_killed(tmp_path):
    inp, out, state, log = tmp_path / "in", tmp_path / "out", tmp_path / "state", tmp_path / "log"
    log.mkdir()
    inputs = make_files(str(inp), 200)
    cmd = aimaster_cmd("run", "-n", "2", "--job-id", "resume", "--state-dir", str(state), "--quiet", "--",
                       sys.executable, program("file_worker.py"), str(inp), str(out), "10")
    env = clean_env({"FILE_SLEEP": "0.02", "PROCESS_LOG": str(log)})
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    info = _etcd_endpoint(str(state), "resume")
    wait_for(lambda: len(glob.glob(str(out / "*.txt"))) >= 5, timeout=60, what="some committed slices")
    # Kill everything: the launcher, every worker, and etcd.
    _, _, workers = _slice_holders(f"127.0.0.1:{info['port']}", "resume")
    for pid in [proc.pid, info["pid"]] + [w["pid"] for w in workers.values()]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)
    wait_for(lambda: all(not pid_alive(w["pid"]) for w in workers.values()), what="workers dead")
    committed_before = {os.path.basename(p)[:-4] for p in glob.glob(str(out / "*.txt"))}
    assert 0 < len(committed_before) < 20
    first_run = set()
    for f in glob.glob(str(log / "*.log")):
        first_run |= {line.split()[0] for line in open(f)}
        os.rename(f, f + ".run1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "resuming job resume" in r.stderr
    assert_exactly_once(str(out), inputs)
    second_run = set()
    for f in glob.glob(str(log / "*.log")):
        second_run |= {line.split()[0] for line in open(f)}
    assert second_run, "the second run processed nothing"
    assert not (second_run & committed_before), f"re-processed committed slices {second_run & committed_before}"
    assert second_run | committed_before == {f"{i:06d}" for i in range(20)}
    # Re-running a finished job does nothing, successfully.
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "already succeeded" in r.stderr


def _one_line_error(r, needle):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert errors and needle in errors[0], r.stderr


@pytest.mark.parametrize("case", ["missing_dir", "empty_dir", "malformed_meta", "count_mismatch"])
def test_bad_input_is_one_line_error(tmp_path, case):
    inp = tmp_path / "in"
    meta = ""
    if case == "empty_dir":
        inp.mkdir()
        needle = f"input directory {inp} contains no files"
    elif case == "missing_dir":
        needle = f"input directory {inp} does not exist"
    else:
        make_files(str(inp), 3, nested=False)
        meta = str(tmp_path / "meta.json")
        if case == "malformed_meta":
            open(meta, "w").write('{"FileCount": 2, "FileList": ["a", ')
            needle = f"meta file {meta} is not valid JSON"
        else:
            open(meta, "w").write(json.dumps({"FileCount": 5, "FileList": ["f00000.txt", "f00001.txt"]}))
            needle = f"meta file {meta}: FileCount is 5 but FileList has 2 entries"
    code = ("import sys; from aimaster import inference as ei; "
            f"c = ei.PosixFileClient(ei.PosixFileConfig({str(inp)!r}, {str(tmp_path / 'out')!r}, 2, "
            f"input_file_meta_path={meta!r}))")
    # Under the launcher: the job fails at once (no relaunch loop), one error line.
    r = run_aimaster("run", "-n", "2", "--job-id", "bad", "--state-dir", str(tmp_path / "s"), "--quiet", "--",
                     sys.executable, "-c", code, timeout=60)
    _one_line_error(r, needle)
    assert "relaunch" not in r.stderr.split("Failed", 1)[0]
    # Standalone: the same one line, a non-zero exit.
    r = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=60)
    _one_line_error(r, needle)


def test_unreachable_etcd_is_one_line_error(tmp_path):
    from aimaster.data.etcd_server import free_port

    port = free_port()
    r = run_aimaster("run", "--etcd", f"127.0.0.1:{port}", "--state-dir", str(tmp_path), "--", "true", timeout=60)
    _one_line_error(r, f"etcd at 127.0.0.1:{port} unreachable")
    r = run_aimaster("status", "--etcd", "not-a-endpoint", "--job-id", "x", timeout=60)
    _one_line_error(r, "bad etcd endpoint 'not-a-endpoint'")


def test_meta_file_input_and_fsspec_url(tmp_path):
    """A meta file (with the seed's 'FIleDir' spelling) and a memory:// URL input, standalone."""
    inp = tmp_path / "in"
    inputs = make_files(str(inp), 30, nested=False)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"FileCount": 10, "FIleDir": str(inp), "FileList": inputs[:10]}))
    code = f"""
import aimaster, fsspec
from aimaster import inference as ei
c = ei.PosixFileClient(ei.PosixFileConfig("", {str(tmp_path / 'o1')!r}, 4, input_file_meta_path={str(meta)!r}))
got = []
while True:
    try:
        got += c.get_next_slice()
    except aimaster.data.OutOfRangeException:
        break
    c.commit_slice()
print(len(got), sorted(got)[0])
fs = fsspec.filesystem("memory")
for i in range(7):
    fs.pipe(f"/data/x{{i}}.bin", b"x")
c2 = ei.PosixFileClient(ei.PosixFileConfig("memory://data", "memory://out", 3))
s = c2.get_next_slice()
with c2.open_slice_output(suffix=".txt") as f:
    f.write(",".join(s))
print(c2.commit_slice(), s[0], sorted(fs.ls("/out", detail=False)))
"""
    r = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"10 {inp}/{inputs[0]}"
    assert lines[1].startswith("True memory://data/x0.bin") and "/out/000000.txt" in lines[1]


def test_status_reports_finished_job(tmp_path):
    r, inputs, out = _run_files_job(tmp_path, 50, 2, 10, job_id="st")
    assert r.returncode == 0, r.stderr
    r = run_aimaster("status", "--job-id", "st", "--state-dir", str(tmp_path / "state"), "--json")
    assert r.returncode == 0, r.stderr
    view = json.loads(r.stdout)
    assert view["state"] == "Succeeded"
    assert view["slices"]["done"] == 5 and view["slices"]["total"] == 5
    assert sum(w["items"] for w in view["workers"]) == 50
    r = run_aimaster("status", "--job-id", "st", "--state-dir", str(tmp_path / "state"))
    assert "slices: 5/5 committed" in r.stdout
    assert read_outputs(out)
