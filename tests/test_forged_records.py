"""Records read back from etcd are believed only when they describe what this job produced.

Forged keys are written for real, with an etcd client, into the keys of a running job (or of a
dataset in this process): commit records for slices outside the plan, a commit record naming a
directory outside the job's output, a claim bound to no lease. None may end a job Succeeded with an
input unprocessed, move a file outside the output, or hang the job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from helpers import aimaster_cmd, assert_exactly_once, clean_env, make_files, program, wait_for

from aimaster.data.coordinator import CHUNK_BYTES, Dataset, PlanData
from aimaster.data.store import EtcdConfig, Op, Store, job_prefix


def _job_store(state_dir: str, job_id: str) -> Store:
    info_path = os.path.join(state_dir, "jobs", job_id, "etcd.json")
    info = wait_for(lambda: os.path.exists(info_path) and json.load(open(info_path)), what="etcd.json")
    return Store(EtcdConfig([f"127.0.0.1:{info['port']}"], retry_seconds=10), job_prefix(job_id))


def _dataset_id(store: Store) -> str:
    plans = wait_for(lambda: [k for k in store.keys("ds/") if k.endswith("/plan")], timeout=60, what="a plan")
    return plans[0].split("/")[0]


def _start_job(tmp_path, job_id, n_files=420, slice_size=7, sleep="0.02"):
    inp, out, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    inputs = make_files(str(inp), n_files)
    proc = subprocess.Popen(
        aimaster_cmd("run", "-n", "2", "--job-id", job_id, "--state-dir", str(state), "--quiet", "--",
                     sys.executable, program("file_worker.py"), str(inp), str(out), str(slice_size)),
        env=clean_env({"FILE_SLEEP": sleep}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, inputs, str(out), str(state)


def test_forged_commits_outside_the_plan_do_not_end_the_job_early(tmp_path):
    proc, inputs, out, state = _start_job(tmp_path, "forged")
    store = _job_store(state, "forged")
    try:
        ds = _dataset_id(store)
        record = {"w": "mallory", "at": "mallory.1", "a": 1, "t": 0, "n": 7, "out": []}
        for i in range(40):  # 60 slices planned: ids 000060.. do not exist, nor do the odd spellings
            store.put(f"ds/{ds}/done/{60 + i:06d}", record)
        store.put(f"ds/{ds}/done/61", record)
        store.put(f"ds/{ds}/done/zzzzzz", record)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        store.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert_exactly_once(out, inputs)  # all 420, not "Succeeded, 72/60" with 280 missing
    report = json.load(open(os.path.join(state, "jobs", "forged", "report.json")))
    assert report["slices"]["committed"] == 60


def test_a_commit_record_naming_another_directory_is_refused_and_nothing_moves(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "staged").mkdir(parents=True)
    victim = elsewhere / "staged" / "precious.txt"
    victim.write_text("not the job's to move\n")
    proc, inputs, out, state = _start_job(tmp_path, "outside", sleep="0.05")
    store = _job_store(state, "outside")
    try:
        ds = _dataset_id(store)
        busy = {k.rsplit("/", 1)[1] for k in store.keys(f"ds/{ds}/") if "/done/" in k or "/claim/" in k}
        target = max(f"{i:06d}" for i in range(60) if f"{i:06d}" not in busy)  # not committed yet
        forged = {"w": "mallory", "at": "mallory.1", "a": 1, "t": 0, "n": 7,
                  "out": [{"sink": {"kind": "files", "dir": str(elsewhere)},
                           "ref": {"staged": "staged/precious.txt", "final": "moved.txt"}}]}
        store.put(f"ds/{ds}/done/{target}", forged)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        store.close()
        if proc.poll() is None:
            proc.kill()
    assert victim.read_text() == "not the job's to move\n"
    assert not (elsewhere / "moved.txt").exists()
    assert proc.returncode != 0, f"a job whose slice {target} has a forged commit must not succeed: {stderr}"
    assert f"ds/{ds}/done/{target}" in stderr
    report = json.load(open(os.path.join(state, "jobs", "outside", "report.json")))
    assert report["state"] == "Failed"
    assert f"done/{target}" in (report["reason"] or "")


def _dataset(session, n_files, slice_size, names=None):
    names = names or [f"f{i:05d}" for i in range(n_files)]
    ds = Dataset(session, "f-forged")
    ds.speculation = False
    ds.ensure_plan(lambda: PlanData("files", len(names), {"base": "/in"}, names), slice_size)
    return ds


def test_a_claim_bound_to_no_lease_does_not_hang_the_job(make_session):
    a, b = make_session("w-a", ttl=3), make_session("w-b")
    da, db = _dataset(a, 6, 3), _dataset(b, 6, 3)
    lost = da.next_claim()
    mine = db.next_claim()
    # Someone rewrites the claim by hand, bound to no lease; then its worker dies.
    key = f"ds/{da.ds_id}/claim/{lost.slice_id}"
    b.store.put(key, b.store.get_value(key))
    a.close()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("claim", db.next_claim()), daemon=True)
    thread.start()
    thread.join(20)
    assert "claim" in result, "the slice under a leaseless claim never came back"
    assert result["claim"].slice_id == lost.slice_id
    assert db.commit(mine) and db.commit(result["claim"])
    assert db.is_complete()


def test_a_claim_taken_inside_a_commit_is_in_the_heartbeat(make_session):
    a = make_session("w-a")
    ds = _dataset(a, 9, 3)
    first = ds.next_claim()
    assert ds.commit(first, claim_next=True)
    following = ds.try_claim()  # the claim that rode in the commit's transaction
    assert following is not None
    beat = a.store.get_value("beat/w-a")
    assert beat["held"] == [f"{ds.ds_id}/{following.slice_id}"], beat


def test_long_non_ascii_names_plan_in_byte_budgeted_chunks(make_session):
    a = make_session("w-a")
    names = [f"目录/图片{'猫狗鸟鱼' * 4}{i:05d}.jpg" for i in range(2500)]
    names += [f"emoji/{'😀🚀' * 10}{i:05d}.png" for i in range(2500)]
    names.sort()
    ds = _dataset(a, 0, 100, names)
    assert sum(ds.plan["chunks"]) == len(names)
    for n in range(len(ds.plan["chunks"])):
        raw, _ = a.store.client.get(a.store.key(ds.k.item_chunk(n)))
        assert len(raw) <= CHUNK_BYTES + 64
        assert b"\\u" not in raw  # stored as UTF-8, not as escapes twice its size
    got = [name for i in range(ds.num_slices) for name in ds.items(i)]
    assert got == names


def test_a_job_over_cjk_named_files_runs(tmp_path):
    inp, out, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    inputs = []
    for i in range(2500):
        rel = f"照片/{'长文件名的猫和狗' * 2}{i:05d}.txt"
        path = inp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{i}\n")
        inputs.append(rel)
    r = subprocess.run(
        aimaster_cmd("run", "-n", "2", "--job-id", "cjk", "--state-dir", str(state), "--quiet", "--",
                     sys.executable, program("file_worker.py"), str(inp), str(out), "250"),
        env=clean_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert_exactly_once(str(out), inputs)


def test_a_leased_claim_forged_on_a_committed_slice_does_not_hang_a_worker_holding_its_last_slice(make_session):
    """PAI's DataWriter asks for the next slice before committing the one in hand. A claim key
    written by hand on a slice already committed, bound to that worker's own live lease (so it never
    expires while the worker waits), names a worker that is not working on it: the waiting worker
    must still learn that nothing is left for it, commit its slice, and the dataset complete."""
    from aimaster.data import OutOfRangeException

    a = make_session("w-a")
    ds = _dataset(a, 3, 1)
    for _ in range(2):
        assert ds.commit(ds.next_claim())
    last = ds.next_claim()
    committed = sorted(sid for sid, _ in ds.committed())
    a.store.put(f"ds/{ds.ds_id}/claim/{committed[0]}", {"w": "mallory", "at": "mallory.1", "a": 1, "t": 0},
                lease=a.lease)
    result = {}

    def ask():
        try:
            ds.next_claim()
        except OutOfRangeException as e:
            result["end"] = str(e)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(20)
    assert "end" in result, "a worker holding its last slice waited forever on a forged claim"
    assert ds.commit(last)
    assert ds.is_complete()


def _planned(session, n, ds_id="ds"):
    ds = Dataset(session, ds_id)
    ds.ensure_plan(lambda: PlanData("table", n, {}), 1)
    return ds


def test_a_plan_written_twice_is_refused_by_every_reader(make_session):
    """A put over the plan, even of the very same value, is caught by whoever reads it next: a plan
    is written once (its etcd version is 1)."""
    import pytest

    from aimaster.errors import EtcdDataError

    a, b = make_session("w-a"), make_session("w-b")
    ds = _planned(a, 30)
    assert Dataset(b, "ds").load_plan() == ds.plan  # written once: believed
    a.store.client.put(a.store.key(ds.k.plan), json.dumps(ds.plan))
    for read in (lambda: Dataset(b, "ds").load_plan(),
                 lambda: Dataset(b, "ds").ensure_plan(lambda: PlanData("table", 30, {}), 1)):
        with pytest.raises(EtcdDataError, match="written 2 times"):
            read()


def _remade(store, ds, **changes):
    """Delete the plan and write it anew (version 1 again) with ``changes``: (plan, its metadata)."""
    store.delete(ds.k.plan)
    store.client.put(store.key(ds.k.plan), json.dumps(dict(ds.plan, **changes)))
    return store.get(ds.k.plan)


def test_a_plan_made_anew_is_younger_than_the_slices_it_would_judge(make_session):
    """Deleted and created again, a plan has version 1; the create revisions of the slice keys tell
    it from the planner's: the real slices past a shrunk plan's last, and every claim or commit made
    before it, are older than it. Keys forged after the plan (a stray todo/999999, commits past the
    plan) are no such sign; a plan of more slices than etcd holds is refused as well."""
    import pytest

    from aimaster.data import plan_integrity
    from aimaster.errors import EtcdDataError

    a = make_session("w-a")
    ds = _planned(a, 150)
    st = a.store
    plan, meta = st.get(ds.k.plan)
    plan_integrity.check_against_slices(st, ds.k, plan, meta)  # every slice free
    st.put(ds.k.todo + "999999", {})
    st.put(ds.k.done + ds.slice_id(150), {"w": "mallory"})
    plan_integrity.check_against_slices(st, ds.k, plan, meta)  # written after the plan: no sign
    st.delete(ds.k.todo + "999999")

    forged, forged_meta = _remade(st, ds, num_items=30, num_slices=30)  # before any work
    with pytest.raises(EtcdDataError, match=f"created after .*todo/{ds.slice_id(30)}"):
        plan_integrity.check_against_slices(st, ds.k, forged, forged_meta)

    claim = ds.try_claim()
    assert claim is not None and ds.commit(claim)
    forged, forged_meta = _remade(st, ds, num_items=1490, num_slices=149)  # after work began
    with pytest.raises(EtcdDataError, match="created after"):
        plan_integrity.check_against_slices(st, ds.k, forged, forged_meta)
    st.txn("take every free slice", [], [Op.delete_prefix(ds.k.todo)])
    forged, forged_meta = _remade(st, ds)  # even the same plan, made anew: the commit dates it
    with pytest.raises(EtcdDataError, match=f"created after .*done/{claim.slice_id}"):
        plan_integrity.check_against_slices(st, ds.k, forged, forged_meta)

    small = _planned(make_session("w-g"), 10, "small")
    grown, grown_meta = _remade(st, small, num_items=20, num_slices=20)
    with pytest.raises(EtcdDataError, match=f"names 20 slices, but etcd holds no slice {small.slice_id(19)}"):
        plan_integrity.check_against_slices(st, small.k, grown, grown_meta)
    empty = Dataset(make_session("w-e"), "empty")
    empty.ensure_plan(lambda: PlanData("table", 0, {}), 1)
    plan_integrity.check_against_slices(st, empty.k, *st.get(empty.k.plan))  # no slice, none planned


def test_a_file_list_chunk_must_hold_the_names_the_plan_counts(make_session):
    import pytest

    from aimaster.errors import EtcdDataError

    a, b = make_session("w-a"), make_session("w-b")
    names = [f"f{i:04d}.txt" for i in range(50)]
    ds = _dataset(a, 0, 10, names)
    a.store.put(ds.k.item_chunk(0), names[:45])
    reader = Dataset(b, ds.ds_id)
    reader.load_plan()
    with pytest.raises(EtcdDataError, match="holds 45 names, its plan says 50"):
        reader.items(4)


def test_a_claim_key_written_over_even_with_its_own_value_cannot_commit(make_session):
    """A commit compares the claim key's mod revision from the transaction that wrote it: any
    write over the key since (here the very same value, bound to the same lease) is another
    attempt's business, and the commit is refused. Claims taken by themselves and claims riding
    in a commit are both compared that way; one adopted from another process compares its value."""
    a = make_session("w-a")
    ds = _planned(a, 20, "held")
    st = a.store
    first = ds.try_claim()
    assert first is not None
    compare = first.held_compare(ds.k.claim + first.slice_id)
    assert compare.target == "mod" and compare.operand == st.get_raw(ds.k.claim + first.slice_id)[1].mod_revision
    assert ds.commit(first, claim_next=True)
    riding = ds.try_claim()  # the claim that rode in the commit's transaction
    rel = ds.k.claim + riding.slice_id
    raw, meta = st.get_raw(rel)
    assert riding.held_compare(rel).operand == meta.mod_revision
    st.client.put(st.key(rel), raw, lease=a.lease)  # the same bytes, the same lease: still a write
    assert not ds.commit(riding)
    assert st.get_value(ds.k.done + riding.slice_id) is None
    # Without a revision of its own (adopted, lent), a claim compares its value and commits.
    other = ds.try_claim()
    other._written = None
    assert other.held_compare(ds.k.claim + other.slice_id).target == "value"
    assert ds.commit(other)
