"""PyTorch datasets over a job's slices: DataLoader workers (fork and spawn), a SIGKILLed worker
holding prefetched slices, and the table datasets. Real etcd, real worker processes."""

from __future__ import annotations

import collections
import glob
import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import aimaster_cmd, clean_env, make_files, program, read_outputs, run_aimaster, wait_for

pytest.importorskip("torch")

SLICE = 4


def _expected_lines(input_dir: str, names):
    lines = []
    for rel in names:
        with open(os.path.join(input_dir, rel)) as f:
            lines.append(f"{rel}\t{f.read().strip()}")
    return lines


def _check_slices(output_dir: str, names, slice_size: int = SLICE) -> None:
    """Each slice's output holds exactly its own inputs: nothing of another slice, nothing missing."""
    for index in range(0, (len(names) + slice_size - 1) // slice_size):
        with open(os.path.join(output_dir, f"{index:06d}.txt")) as f:
            got = sorted(line.split("\t")[0] for line in f if line.strip())
        assert got == names[index * slice_size:(index + 1) * slice_size], f"slice {index}"
    assert not os.path.exists(os.path.join(output_dir, ".aimaster-staging")), "staging area left behind"


@pytest.mark.parametrize("num_workers,method", [(0, "-"), (2, "fork"), (4, "fork"), (2, "spawn"), (4, "spawn")])
def test_dataloader_workers_read_every_item_exactly_once(tmp_path, job_env, num_workers, method):
    inp, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "reads"
    log.mkdir()
    names = make_files(str(inp), 50 * SLICE)
    r = subprocess.run([sys.executable, program("torch_file_slices.py"), str(inp), str(out), str(SLICE),
                        str(num_workers), method],
                       env=clean_env(dict(job_env, READ_LOG=str(log))), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "committed=50 lost=0" in r.stdout
    reads = [line.split()[0] for path in glob.glob(str(log / "*.log")) for line in open(path)]
    counts = collections.Counter(reads)
    assert sorted(counts) == sorted(os.path.basename(n) for n in names)
    assert set(counts.values()) == {1}, [k for k, v in counts.items() if v > 1][:5]
    readers = {os.path.basename(p) for p in glob.glob(str(log / "*.log"))}
    assert 1 <= len(readers) <= max(1, num_workers)
    lines = read_outputs(str(out))
    assert sorted(lines) == sorted(_expected_lines(str(inp), names))
    _check_slices(str(out), names)


def _job_state(endpoint: str, job_id: str):
    from aimaster.data.store import EtcdConfig, Store, job_prefix

    store = Store(EtcdConfig([endpoint], retry_seconds=5), job_prefix(job_id))
    try:
        claims, done = {}, {}
        for rel, value, _ in store.range("ds/", expect=None):
            if "/claim/" in rel:
                claims[rel.rsplit("/", 1)[1]] = value
            elif "/done/" in rel:
                done[rel.rsplit("/", 1)[1]] = value
        workers = {rel[len("workers/"):]: v for rel, v, _ in store.range("workers/")}
        return claims, done, workers
    finally:
        store.close()


def _prefetched_by_loaders(endpoint: str, job_id: str):
    """(worker, its pid, {slice: attempt}) for a worker whose DataLoader workers hold slices it has not
    seen yet, once some slices are committed; None otherwise."""
    claims, done, workers = _job_state(endpoint, job_id)
    if len(done) < 3:
        return None
    for wid, info in workers.items():
        held = {sid: c["at"] for sid, c in claims.items() if str(c.get("w", "")).startswith(wid + ".")}
        if held:
            return wid, info["pid"], held
    return None


def test_sigkilled_worker_prefetched_slices_come_back(tmp_path):
    inp, out, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    names = make_files(str(inp), 50 * SLICE)
    proc = subprocess.Popen(
        aimaster_cmd("run", "-n", "2", "--job-id", "k", "--state-dir", str(state), "--quiet", "--lease-ttl", "3",
                     "--no-speculation", "--", sys.executable, program("torch_file_slices.py"), str(inp), str(out),
                     str(SLICE), "2", "fork", "2"),
        env=clean_env({"BATCH_SLEEP": "0.1"}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info_path = state / "jobs" / "k" / "etcd.json"
        info = wait_for(lambda: info_path.exists() and json.loads(info_path.read_text()), what="etcd.json")
        endpoint = f"127.0.0.1:{info['port']}"
        victim, pid, prefetched = wait_for(lambda: _prefetched_by_loaders(endpoint, "k"), timeout=90, interval=0.05,
                                           what="a worker whose DataLoader workers hold prefetched slices")
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    lines = read_outputs(str(out))
    assert sorted(lines) == sorted(_expected_lines(str(inp), names)), "an input is missing or duplicated"
    _check_slices(str(out), names)
    from aimaster.data.etcd_server import EmbeddedEtcd

    with EmbeddedEtcd(data_dir=str(state / "jobs" / "k" / "etcd")) as e:
        _, done, _ = _job_state(e.endpoint, "k")
    assert len(done) == 50
    for sid, attempt in prefetched.items():
        # Processed again by a live attempt; the killed attempt never committed anything.
        assert done[sid]["at"] != attempt, sid
        assert done[sid]["out"], f"slice {sid} committed without its output"
    assert all(d["out"] for d in done.values())


def test_stream_waits_for_a_slice_held_elsewhere_and_reads_it_when_it_comes_back(tmp_path, job_env):
    """The readers end when nothing is free; the stream waits, requeues the slice of a dead worker
    itself (no master here) and runs the DataLoader again over it. (No speculation: a copy of the
    held slice would end the wait at once, see the next test.)"""
    inp, out = tmp_path / "in", tmp_path / "out"
    names = make_files(str(inp), 5 * SLICE, nested=False)
    env = clean_env(dict(job_env, AIMASTER_LEASE_TTL="2", AIMASTER_SPECULATION="0"))
    holder = subprocess.Popen([sys.executable, program("race_worker.py"), str(inp), str(out), str(tmp_path), "X"],
                              env=dict(env, AIMASTER_WORKER_ID="X"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader = None
    try:
        wait_for(lambda: (tmp_path / "X.ready").exists(), what="the holder to claim a slice")
        reader = subprocess.Popen([sys.executable, program("torch_file_slices.py"), str(inp), str(out), str(SLICE),
                                   "2", "fork"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: len(_job_state(job_env["AIMASTER_ETCD_ENDPOINTS"], job_env["AIMASTER_JOB_ID"])[1]) == 4,
                 timeout=60, what="every other slice to be committed")
        assert reader.poll() is None, "the reader must wait for the held slice"
        holder.kill()
        stdout, stderr = reader.communicate(timeout=60)
    finally:
        for p in (holder, reader):
            if p is not None and p.poll() is None:
                p.kill()
    assert reader.returncode == 0, stderr
    assert "committed=5 lost=0" in stdout
    assert sorted(read_outputs(str(out))) == sorted(_expected_lines(str(inp), names))
    _check_slices(str(out), names)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_copies_a_slice_a_stalled_worker_holds_and_the_copy_wins(tmp_path, job_env, num_workers):
    """At the tail the stream does not just wait for a slice another worker sits on: its readers start
    a speculative copy (in a DataLoader worker, the consumer adopts the copy), the copy commits, and
    the holder's own commit then loses. Every input is written once."""
    inp, out = tmp_path / "in", tmp_path / "out"
    names = make_files(str(inp), 5 * SLICE, nested=False)
    env = clean_env(dict(job_env, AIMASTER_LEASE_TTL="5"))
    holder = subprocess.Popen([sys.executable, program("race_worker.py"), str(inp), str(out), str(tmp_path), "X"],
                              env=dict(env, AIMASTER_WORKER_ID="X"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    reader = None
    try:
        wait_for(lambda: (tmp_path / "X.ready").exists(), what="the holder to claim a slice")
        reader = subprocess.Popen([sys.executable, program("torch_file_slices.py"), str(inp), str(out), str(SLICE),
                                   str(num_workers), "fork"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        stdout, stderr = reader.communicate(timeout=90)
        assert reader.returncode == 0, stderr
        assert "committed=5 lost=0" in stdout, stdout + stderr
        (tmp_path / "go").touch()
        held_out, held_err = holder.communicate(timeout=60)
    finally:
        for p in (holder, reader):
            if p is not None and p.poll() is None:
                p.kill()
    assert "commit=False" in held_out, held_out + held_err
    _, done, _ = _job_state(job_env["AIMASTER_ETCD_ENDPOINTS"], job_env["AIMASTER_JOB_ID"])
    assert sum(1 for record in done.values() if record.get("spec")) == 1
    assert sorted(read_outputs(str(out))) == sorted(_expected_lines(str(inp), names))
    _check_slices(str(out), names)


def _warehouse_rows(warehouse, table):
    rows = []
    for path in sorted(glob.glob(os.path.join(warehouse, "p", "__tables__", table, "*.csv"))):
        with open(path) as f:
            rows += [tuple(line.strip().split(",")) for line in f if line.strip()]
    return rows


@pytest.mark.parametrize("num_workers", [0, 2])
def test_table_dataset_walks_all_slices_and_commits_rows_per_slice(tmp_path, job_env, num_workers):
    from aimaster.io.tables import create_warehouse_table

    warehouse = tmp_path / "wh"
    warehouse.mkdir()
    env = clean_env(dict(job_env, AIMASTER_ODPS_WAREHOUSE=str(warehouse)))
    src, dst = "odps://p/tables/src", "odps://p/tables/dst"
    create_warehouse_table(src, "id:BIGINT,x:DOUBLE,s:STRING", [(i, i * 0.25, f"s{i}") for i in range(230)],
                           warehouse=str(warehouse))
    create_warehouse_table(dst, "id:BIGINT,y:DOUBLE", [], warehouse=str(warehouse))
    r = subprocess.run([sys.executable, program("torch_table_slices.py"), src, dst, "20", str(num_workers), "1", "7"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "committed=12 lost=0" in r.stdout
    for what in ("untracked", "drop_last", "unattributable"):
        assert f"ok: {what}:" in r.stdout, r.stdout
    rows = _warehouse_rows(str(warehouse), "dst")
    assert sorted(rows, key=lambda t: int(t[0])) == [(str(i), f"{i * 0.5 + 1:g}") for i in range(230)]


def test_an_input_replaced_by_a_fifo_fails_its_slice_in_the_dataloader_instead_of_hanging(tmp_path):
    """The DataLoader readers check a slice's inputs as get_next_slice() does: a FIFO (whose open()
    would block forever) fails that slice, reported; the rest of the job is done."""
    inp, out, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    names = make_files(str(inp), 9, nested=False)
    r = run_aimaster("run", "-n", "1", "--job-id", "fifo", "--state-dir", str(state), "--quiet",
                     "--max-slice-attempts", "2", "--", sys.executable, program("torch_file_slices.py"),
                     str(inp), str(out), "3", "2", env={"SWAP_TO_FIFO": "f00004.txt"}, timeout=120)
    assert r.returncode != 0, r.stderr
    report = json.load(open(state / "jobs" / "fifo" / "report.json"))
    assert [f["slice"] for f in report["failed_slices"]] == ["000001"], report["failed_slices"]
    assert "is a FIFO, not a regular file" in report["failed_slices"][0]["error"]
    lines = sorted(line.split("\t")[0] for line in read_outputs(str(out)))
    assert lines == [n for n in names if n not in ("f00003.txt", "f00004.txt", "f00005.txt")]


def test_a_reader_that_ends_first_keeps_its_claims_until_the_consumer_adopts_them(tmp_path):
    """A DataLoader tells a worker to exit as soon as its stream ends, while its last batches may
    still wait in the loader's reorder buffer behind a slow worker's earlier batch. The exiting
    reader must not revoke the claims of those batches: with one attempt per slice, any claim lost
    that way would fail its slice, though every reader and the consumer were healthy."""
    inp, out, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    names = make_files(str(inp), 12, nested=False)
    # Reader 0 sleeps over its first item; reader 1 claims and reads every other slice meanwhile,
    # finds none free and ends, its batches all waiting behind reader 0's first one.
    r = run_aimaster("run", "-n", "1", "--job-id", "reorder", "--state-dir", str(state), "--quiet",
                     "--max-slice-attempts", "1", "--", sys.executable, program("torch_file_slices.py"),
                     str(inp), str(out), "2", "2", "-", "2", env={"SLOW_READER": "0:3", "PREFETCH_FACTOR": "8"},
                     timeout=120)
    log_text = open(state / "jobs" / "reorder" / "logs" / "worker-0.err").read()
    assert r.returncode == 0, log_text
    assert "after its claim was lost" not in log_text, log_text
    assert "committed=6 lost=0" in open(state / "jobs" / "reorder" / "logs" / "worker-0.out").read()
    _check_slices(str(out), names, slice_size=2)
