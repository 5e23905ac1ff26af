"""One etcd transaction per slice for the POSIX file client: the commit claims the next slice.

``PosixFileClient.commit_slice`` claims the next free slice inside its commit transaction, and the
next ``get_next_slice`` returns it without another round trip. Same guarantees as two transactions:
every input committed exactly once, and a slice claimed ahead for a ``get_next_slice`` that never
comes goes back to todo at exit, without counting as an attempt of its slice.
"""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import assert_exactly_once, clean_env, make_files, program

from aimaster.data.coordinator import Dataset
from aimaster.data.store import EtcdConfig, Store, job_prefix
from aimaster.io import files


def _worker(tmp_path, env, *extra):
    cmd = [sys.executable, program("one_trip_worker.py"), str(tmp_path / "in"), str(tmp_path / "out"), "1", *extra]
    r = subprocess.run(cmd, env=clean_env(env), capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _dataset(make_session, tmp_path) -> Dataset:
    ds = Dataset(make_session("w-inspect"), "f-" + files.dataset_key("files", str(tmp_path / "in"), ""))
    assert ds.load_plan() is not None
    return ds


def test_one_transaction_per_slice(tmp_path, etcd, job_id):
    inputs = make_files(str(tmp_path / "in"), 12)
    env = {"AIMASTER_ETCD_ENDPOINTS": etcd.endpoint, "AIMASTER_JOB_ID": job_id, "AIMASTER_WORKER_ID": "w0"}
    out = _worker(tmp_path, env)
    assert out["slices"] == 12
    kinds = out["kinds"]
    # The plan was made before the counting started; the first slice is claimed on its own, every
    # later one inside the commit of the one before: 12 commits and a single claim transaction.
    assert kinds.get("commit") == 12, kinds
    assert kinds.get("claim", 0) == 1, kinds
    assert_exactly_once(str(tmp_path / "out"), [f"file {int(n.split('/f')[1][:5])}" for n in inputs])


def test_slice_claimed_ahead_goes_back_uncounted_at_exit(tmp_path, etcd, job_id, make_session):
    inputs = make_files(str(tmp_path / "in"), 6)
    env = {"AIMASTER_ETCD_ENDPOINTS": etcd.endpoint, "AIMASTER_JOB_ID": job_id, "AIMASTER_WORKER_ID": "w0"}
    assert _worker(tmp_path, env, "2")["slices"] == 2  # stops without asking for a third
    ds = _dataset(make_session, tmp_path)
    store = Store(EtcdConfig([etcd.endpoint]), job_prefix(job_id))
    try:
        # Its commit claimed slice 2 (standalone order is not guaranteed among peers: find it).
        assert store.count(ds.k.claim) == 0, "the slice claimed ahead is still held after the worker exited"
        assert store.count(ds.k.attempts) == 0
        todo = {rel[len(ds.k.todo):]: value for rel, value in
                ((r, json.loads(raw)) for r, raw, _ in store.iter_prefix_chunks(ds.k.todo))}
        assert len(todo) == 4 and len(list(ds.committed())) == 2
        assert all(value.get("a", 0) == 0 for value in todo.values()), todo  # never started: not counted
    finally:
        store.close()
    env["AIMASTER_WORKER_ID"] = "w1"
    assert _worker(tmp_path, env)["slices"] == 4
    committed = dict(ds.committed())
    assert len(committed) == 6 and all(record["a"] == 1 for record in committed.values()), committed
    assert_exactly_once(str(tmp_path / "out"), [f"file {int(n.split('/f')[1][:5])}" for n in inputs])


def test_nothing_is_claimed_ahead_while_the_next_slice_is_in_hand(tmp_path, etcd, job_id):
    """PAI's DataWriter commits a slice once the next one has begun: a claim riding in that commit
    would sit idle (and, at the end of the data, keep a slice from an idle peer), so none rides."""
    inputs = make_files(str(tmp_path / "in"), 8)
    env = {"AIMASTER_ETCD_ENDPOINTS": etcd.endpoint, "AIMASTER_JOB_ID": job_id, "AIMASTER_WORKER_ID": "w0"}
    out = _worker(tmp_path, env, "datawriter")
    assert out["slices"] == 8
    assert out["kinds"].get("claim") == 8 and out["kinds"].get("commit") == 8, out["kinds"]
    assert_exactly_once(str(tmp_path / "out"), [f"file {int(n.split('/f')[1][:5])}" for n in inputs])


def test_torch_reader_in_the_consuming_process_takes_its_slices_from_the_commits(tmp_path, etcd, job_id):
    """``num_workers=0``: the consumer's commit of a slice claims the reader's next one, so a slice
    costs one transaction there too (the first few are claimed by the reader itself)."""
    inputs = make_files(str(tmp_path / "in"), 90)
    env = {"AIMASTER_ETCD_ENDPOINTS": etcd.endpoint, "AIMASTER_JOB_ID": job_id, "AIMASTER_WORKER_ID": "w0"}
    cmd = [sys.executable, program("one_trip_torch.py"), str(tmp_path / "in"), str(tmp_path / "out"), "3"]
    r = subprocess.run(cmd, env=clean_env(env), capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["committed"] == 30
    kinds = out["kinds"]
    assert kinds.get("commit") == 30, kinds
    # The reader claims its first slices itself (4 here, quiet); a commit slower than a batch adds one.
    assert kinds.get("claim", 0) <= 8, kinds  # was 30: a claim transaction per slice besides its commit
    assert kinds.get("adopt", 0) == 0, kinds
    assert_exactly_once(str(tmp_path / "out"), [f"file {int(n.split('/f')[1][:5])}" for n in inputs])



def test_dataloader_workers_read_slices_lent_by_the_consumers_commits(tmp_path, etcd, job_id):
    """``num_workers=2``: the consumer's commit of a slice claims the next one for its DataLoader
    workers (bound to the consumer's lease), so a slice costs one transaction in all processes
    together instead of a reader's claim, the consumer's read and adoption, and the commit (80
    slices, measured on the commit before: 80 commits, 97 claims, 80 adoptions and 90 reads)."""
    from collections import Counter

    inputs = make_files(str(tmp_path / "in"), 240)
    rpcs = tmp_path / "rpcs"
    rpcs.mkdir()
    env = {"AIMASTER_ETCD_ENDPOINTS": etcd.endpoint, "AIMASTER_JOB_ID": job_id, "AIMASTER_WORKER_ID": "w0"}
    cmd = [sys.executable, program("one_trip_torch_workers.py"), str(tmp_path / "in"), str(tmp_path / "out"),
           "3", "2", str(rpcs)]
    r = subprocess.run(cmd, env=clean_env(env), capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["committed"] == 80
    kinds: Counter = Counter()
    readers = 0
    for f in rpcs.iterdir():
        kinds.update(f.read_text().split())
        readers += f.name != str(out["consumer"])
    assert readers >= 1, kinds
    assert kinds["commit"] == 80, kinds
    # The readers claim their first slices themselves, before the commits lend enough (10-12 claims
    # here, as with 160 slices: a start-up cost, not one per slice), and at the end.
    assert kinds["claim"] <= 16, kinds  # was 97: a claim by a reader for every slice, and lost ones
    assert kinds["adopt"] <= 16, kinds  # and an adoption by the consumer for each
    assert_exactly_once(str(tmp_path / "out"), [f"file {int(n.split('/f')[1][:5])}" for n in inputs])


def test_a_lent_claim_is_taken_once_given_back_uncounted_and_stops_at_the_tail(make_session):
    """The lending queue itself, with a real etcd: a claim a commit took is taken by one reader as
    the consumer's own attempt; a reader gives it back uncounted; once a reader finds no slice free
    lending stops and what waits is returned; a copy pickled outside a process start has no queue."""
    import multiprocessing
    import pickle

    from aimaster.data.claim import PlanData
    from aimaster.frameworks.claims import give_back_unstarted_claim
    from aimaster.frameworks.lent import LentClaims

    consumer, reader = make_session("w-consumer"), make_session("w-reader")
    names = [f"f{i:03d}" for i in range(6)]
    mine = Dataset(consumer, "f-lent")
    mine.ensure_plan(lambda: PlanData("files", len(names), {"base": "/in"}, names), 1)
    theirs = Dataset(reader, "f-lent")
    assert theirs.load_plan() is not None
    lent = LentClaims(multiprocessing.get_context("fork"), readers=1)
    assert lent.wants()

    def lend_next():
        assert mine.commit(mine.next_claim(), claim_next=True)
        claimed = mine.take_claimed_ahead()
        lent.lend(claimed)
        return claimed

    first = lend_next()
    assert not lent.wants()  # one per reader at a time
    got = lent.take(theirs)
    assert (got.slice_id, got.attempt, got.record) == (first.slice_id, first.attempt, first.record)
    assert lent.take(theirs) is None  # taken once
    give_back_unstarted_claim(theirs, got)  # a reader gives back the consumer's attempt, uncounted
    todo = consumer.store.get_value(f"ds/{mine.ds_id}/todo/{first.slice_id}")
    assert todo is not None and todo.get("a", 0) == 0, todo
    assert consumer.store.get_raw(f"ds/{mine.ds_id}/claim/{first.slice_id}")[0] is None

    second = lend_next()
    assert [c.slice_id for c in lent.stop(theirs)] == [second.slice_id]  # no slice free: back it goes
    assert not lent.wants() and lent.take(theirs) is None
    left = lent.take_back_all()  # the consumer's side: lent, never reached it
    assert {c.attempt for c in left} == {first.attempt, second.attempt}
    copy = pickle.loads(pickle.dumps(lent))
    assert not copy.usable and copy.take(theirs) is None and not copy.wants()
