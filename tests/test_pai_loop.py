"""PAI ElasticBatch's own POSIX loop: a worker asks for the next slice while holding the previous one.

The seed's ``DataWriter`` commits a slice only once the next one has started, and the last one in
``close()`` after ``get_next_slice()`` raised OutOfRangeException. Those held slices are finished,
only not committed: ``get_next_slice()`` must end the loop instead of waiting for them (its own, or
those of peers that wait too), and must still wait while a live peer is processing a slice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
from helpers import aimaster_cmd, clean_env, make_files, program, run_aimaster, wait_for

import aimaster
from aimaster.data.coordinator import Dataset, PlanData

SLICE = 7


def _slice_files(output_dir: str):
    """Published outputs: {file name: [lines]} (the staging area, if any, is not output)."""
    out = {}
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if os.path.isfile(path) and not name.startswith("."):
            with open(path) as f:
                out[name] = [line.rstrip("\n") for line in f if line.strip()]
    return out


def _assert_every_item_in_one_file(output_dir: str, inputs, slice_size: int = SLICE) -> None:
    files = _slice_files(output_dir)
    lines = [line for content in files.values() for line in content]
    assert len(lines) == len(set(lines)), f"{len(lines) - len(set(lines))} items written twice"
    assert sorted(lines) == sorted(inputs), (
        f"{len(set(inputs) - set(lines))} inputs missing, {len(set(lines) - set(inputs))} unexpected")
    num_slices = (len(inputs) + slice_size - 1) // slice_size
    assert sorted(files) == [f"{i:06d}" for i in range(num_slices)]
    for name, content in files.items():  # each file holds exactly its own slice, in order
        start = int(name) * slice_size
        assert content == sorted(inputs)[start:start + slice_size], name


def _datawriter(inp, out, slice_size=SLICE):
    return [sys.executable, program("pai_datawriter.py"), str(inp), str(out), str(slice_size)]


def test_seed_datawriter_loop_standalone_ends(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inputs = make_files(str(inp), 30)
    r = subprocess.run(_datawriter(inp, out), env=clean_env(), capture_output=True, text=True, timeout=90,
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "All file data have been processed." in r.stdout
    _assert_every_item_in_one_file(str(out), inputs)


def test_seed_datawriter_loop_three_workers_ends(tmp_path):
    inp, out, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    inputs = make_files(str(inp), 700)
    r = run_aimaster("run", "-n", "3", "--job-id", "dw", "--state-dir", str(state), "--quiet", "--",
                     *_datawriter(inp, out), timeout=180)
    assert r.returncode == 0, r.stderr
    _assert_every_item_in_one_file(str(out), inputs)
    report = json.load(open(state / "jobs" / "dw" / "report.json"))
    assert report["state"] == "Succeeded"
    assert report["slices"] == {"total": 100, "committed": 100, "failed": 0}


def test_seed_datawriter_loop_survives_a_sigkilled_worker(tmp_path):
    inp, out, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    inputs = make_files(str(inp), 700)
    started = tmp_path / "started"
    started.mkdir()
    proc = subprocess.Popen(
        aimaster_cmd("run", "-n", "3", "--job-id", "dwk", "--state-dir", str(state), "--quiet", "--lease-ttl", "3",
                     "--", *_datawriter(inp, out)),
        env=clean_env({"FILE_SLEEP": "0.01", "STARTED_LOG": str(started)}), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(os.listdir(started)) >= 3, timeout=60, what="three workers")
        # Mid-job: some slices are committed, most are not.
        wait_for(lambda: out.exists() and len(os.listdir(out)) >= 15, timeout=60, what="slices being written")
        victim = _worker_pid(str(state), "dwk")
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "killed by SIGKILL" in stderr
    _assert_every_item_in_one_file(str(out), inputs)


def test_worker_dying_after_out_of_range_gives_its_slice_back(tmp_path):
    """OutOfRange does not end the job: a worker that got it and died before committing what it
    held is relaunched, and its slice is done again (once)."""
    inp, out, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    inputs = make_files(str(inp), 200)
    marker = tmp_path / "died"
    # A long lease: only the master's reaping of the dead worker frees its slice (and logs the death),
    # never the lease's expiry, after which a waiting peer could redo the slice before the reap.
    r = run_aimaster("run", "-n", "3", "--job-id", "dwe", "--state-dir", str(state), "--quiet", "--lease-ttl", "30",
                     "--", *_datawriter(inp, out), env={"DIE_AFTER_END": str(marker), "FILE_SLEEP": "0.005"},
                     timeout=180)
    assert r.returncode == 0, r.stderr
    assert marker.exists(), "no worker died after OutOfRange"
    assert "killed by SIGKILL" in r.stderr
    _assert_every_item_in_one_file(str(out), inputs)
    report = json.load(open(state / "jobs" / "dwe" / "report.json"))
    assert report["relaunches"] == {"signal:9": 1}


def _worker_pid(state_dir: str, job_id: str) -> int:
    """The pid of one registered worker of a running job (read from its embedded etcd)."""
    from aimaster.data.store import EtcdConfig, Store, job_prefix

    info = json.load(open(os.path.join(state_dir, "jobs", job_id, "etcd.json")))
    store = Store(EtcdConfig([f"127.0.0.1:{info['port']}"], retry_seconds=5), job_prefix(job_id))
    try:
        workers = wait_for(lambda: store.range("workers/"), timeout=30, what="registered workers")
        return workers[0][1]["pid"]
    finally:
        store.close()


# ---------------------------------------------------------------------------------- the rule itself
def _files_dataset(session, n_files=9, slice_size=3, speculation=True):
    names = [f"f{i}" for i in range(n_files)]
    ds = Dataset(session, "f-datawriter")
    ds.speculation = speculation
    ds.ensure_plan(lambda: PlanData("files", n_files, {"base": "/in"}, names), slice_size)
    return ds


def _next_in_thread(ds):
    result = {}

    def run():
        try:
            result["claim"] = ds.next_claim()
        except aimaster.data.OutOfRangeException as e:
            result["out_of_range"] = str(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_holder_of_two_slices_waits_for_a_busy_peer_then_gets_out_of_range(make_session):
    a, b = make_session("w-a"), make_session("w-b")
    # No copies here: this is about waiting (a copy of the peer's slice would be a slice to do).
    da, db = _files_dataset(a, speculation=False), _files_dataset(b, speculation=False)
    first, second = da.next_claim(), da.next_claim()  # held, not committed (the DataWriter pattern)
    busy = db.next_claim()  # the peer is mid-slice
    thread, result = _next_in_thread(da)
    thread.join(2.5)
    assert thread.is_alive() and not result, "returned while a live peer was still processing a slice"
    assert db.commit(busy)
    thread.join(10)
    assert "out_of_range" in result, result
    assert da.commit(first) and da.commit(second)
    assert da.is_complete()


def test_waiting_holders_end_each_other_and_are_never_copied(make_session):
    """Two workers, each holding its last slice and asking for more: both get OutOfRange (nobody
    waits for a slice that is finished), and the one that could copy (speculation on, no durations
    yet: any slice of a busy peer would be copied at once) leaves the waiting peer's slice alone."""
    a, b = make_session("w-a"), make_session("w-b")
    da, db = _files_dataset(a, n_files=6), _files_dataset(b, n_files=6, speculation=False)
    mine, theirs = da.next_claim(), db.next_claim()
    tb, rb = _next_in_thread(db)
    wait_for(lambda: a.store.get_value("beat/w-b").get("state") == "waiting", timeout=10, what="b waiting")
    ta, ra = _next_in_thread(da)
    ta.join(15)
    tb.join(15)
    assert "out_of_range" in ra and "out_of_range" in rb, (ra, rb)
    assert a.copies_started == 0 and b.copies_started == 0
    assert da.commit(mine) and db.commit(theirs)
    assert da.is_complete()


def test_waiting_worker_takes_back_the_slice_of_a_sigkilled_peer(tmp_path, job_env, make_session):
    from aimaster.io import files

    inp, out = tmp_path / "in", tmp_path / "out"
    inputs = make_files(str(inp), 6, nested=False)
    peer = subprocess.Popen([sys.executable, program("hold_slice.py"), str(inp), str(out), "3"],
                            env=clean_env(dict(job_env, AIMASTER_LEASE_TTL="3", AIMASTER_WORKER_ID="w-peer")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert peer.stdout.readline().startswith("holding"), peer.stderr.read()
        ds = Dataset(make_session("w-main"), "f-" + files.dataset_key("files", str(inp), ""))
        ds.speculation = False  # about waiting: a copy of the peer's slice would end the wait otherwise
        assert ds.load_plan() is not None
        first = ds.next_claim()
        thread, result = _next_in_thread(ds)
        thread.join(3.0)
        assert thread.is_alive(), f"did not wait while a live peer held a slice: {result}"
        os.kill(peer.pid, signal.SIGKILL)
        thread.join(30)
        assert "claim" in result, result
    finally:
        peer.kill()
        peer.wait()
    second = result["claim"]
    assert sorted(ds.items(first.index) + ds.items(second.index)) == inputs
    assert ds.commit(first) and ds.commit(second)
    with pytest.raises(aimaster.data.OutOfRangeException):
        ds.next_claim()
