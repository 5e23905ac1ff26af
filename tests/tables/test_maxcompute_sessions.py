"""MaxCompute upload and download sessions over time, through pyodps' real classes (``fake_mc``).

The stand-in enforces what the exactly-once scheme depends on -- sessions expire, a commit takes
the blocks in the order of the block list, requests carry a valid signature -- and the sink and the
SDK's generations (:mod:`aimaster.io.tables.odps_generations`) must live with it: nothing uploaded
into a session too old to be committed in time, sessions committed before they expire, commits
whose rows expired taken back to be redone.
"""

from __future__ import annotations

import time

import pytest
from tables_helpers import read_all

from aimaster.errors import CredentialsError, TableIOError
from aimaster.io.tables import open_table_sink, open_table_source

pytest.importorskip("odps")

LIFETIME = 4.0  # seconds: rotate after 1, nothing staged or committed after 2, sealed after 2.5


@pytest.fixture
def out(fake_mc):
    fake_mc.create_table("prj", "o", [("v", "bigint")])
    return "odps://prj/tables/o"


def _blocks(fake, session):
    return dict(fake.uploads[session]["blocks"])


# --- the stand-in ------------------------------------------------------------------------------------


def test_the_stand_in_expires_upload_sessions(fake_mc, out):
    sink = open_table_sink(out)
    ref = sink.stage("s00000", "0", [(1,)])
    fake_mc.advance(24 * 3600)
    assert fake_mc.upload_status(ref["session"]) == "expired"
    with pytest.raises(TableIOError, match="expired"):
        sink.upload_block(ref["session"], 1, [])
    with pytest.raises(TableIOError, match="lack committed blocks of 1 slice.*s00000"):
        sink.finalize([("s00000", ref)])
    assert fake_mc.rows("prj", "o") == [] and fake_mc.commits == []


def test_the_stand_in_commits_in_block_list_order(fake_mc, out):
    sink = open_table_sink(out)
    refs = {i: sink.stage(f"s{i:05d}", "0", [(i,)]) for i in (7, 2, 5)}  # blocks 56, 16, 40
    sink.stage("s00007", "0", [(70,)])  # replaced in place: keeps its position in the list
    sink.finalize(list((f"s{i:05d}", r) for i, r in refs.items()))
    assert fake_mc.commits == [(refs[7]["session"], [56, 16, 40])]
    assert fake_mc.rows("prj", "o") == [(70,), (2,), (5,)]


def test_the_stand_in_checks_the_signature(fake_mc, out, odps_config):
    from aimaster.io.tables.odps import clear_caches

    assert read_all(out) == []
    odps_config.write_text(odps_config.read_text().replace("access_key=test-sk", "access_key=wrong"))
    clear_caches()
    with pytest.raises(CredentialsError, match="SignatureNotMatch"):
        open_table_source(out)
    odps_config.write_text(odps_config.read_text().replace("access_id=test-ak", "access_id=nobody"))
    clear_caches()
    with pytest.raises(CredentialsError, match="invalid or missing"):
        open_table_source(out)


# --- the sink ----------------------------------------------------------------------------------------


def test_a_stage_into_a_committed_session_is_lost_not_an_error(fake_mc, out):
    from aimaster.io.tables.base import StageLost

    sink = open_table_sink(out)
    winner = sink.stage("s00003", "0", [(3,)])
    sink.finalize([("s00003", winner)])
    late = sink.open_stage("s00003", "1")  # a copy still running when the job ended
    late.write([(3,)])
    with pytest.raises(StageLost, match="committed or expired"):
        late.commit()
    sink.discard({"session": winner["session"], "block": 25, "rows": 1})  # and its discard is quiet
    assert fake_mc.rows("prj", "o") == [(3,)]


def test_nothing_is_uploaded_into_a_generation_too_old(fake_mc, out, monkeypatch):
    from aimaster.io.tables.base import StageLost

    monkeypatch.setenv("AIMASTER_ODPS_SESSION_LIFETIME", str(LIFETIME))
    sink = open_table_sink(out)
    old = {"g": 0, "sessions": sink.session_ids, "t": time.time() - LIFETIME / 2}
    stage = sink.open_stage("s00000", "0", generation=old)
    stage.write([(1,)])
    puts = len(fake_mc.requests_of("blockid", method="PUT"))
    with pytest.raises(StageLost, match="too old"):
        stage.commit()
    assert len(fake_mc.requests_of("blockid", method="PUT")) == puts
    fresh = dict(old, t=time.time())
    ref = sink.stage("s00000", "1.w0", [(1,)], generation=fresh)
    assert ref["t"] == fresh["t"] and ref["g"] == 0


def test_a_block_uploaded_while_the_session_is_committed_is_emptied(fake_mc, out):
    """A late loser uploads between the sink's look at the block list and the commit: pyodps'
    own check of the list catches it, the sink empties that block too and commits again."""
    sink = open_table_sink(out)
    winner = sink.stage("s00001", "0", [(1,)])
    session = winner["session"]
    loser = open_table_sink(out)  # another process's sink on the same sessions
    loser._session_ids = sink.session_ids
    reloads = []

    def late_upload(request):
        if request.method == "GET" and request.params.get("uploadid") == session:
            reloads.append(request)
            if len(reloads) == 2:  # pyodps' commit() reloads the list right before committing
                fake_mc.on_request = None
                loser.upload_block(session, 9, [_table([(99,)])])

    fake_mc.on_request = late_upload
    sink.finalize([("s00001", winner)])
    assert fake_mc.rows("prj", "o") == [(1,)]
    assert _blocks(fake_mc, session)[9] == []


def test_a_read_continues_on_a_new_download_session_after_expiry(fake_mc):
    fake_mc.create_table("prj", "t", [("v", "bigint")])
    fake_mc.add_rows("prj", "t", [(i,) for i in range(10)])
    src = open_table_source("odps://prj/tables/t")
    first = src.download_id
    fake_mc.advance(24 * 3600)
    assert [r for b in src.read(2, 5) for r in b] == [(2,), (3,), (4,)]
    assert src.download_id != first
    fake_mc.advance(24 * 3600)
    fake_mc.add_rows("prj", "t", [(10,)])  # the table changed meanwhile: no silent mismatch
    with pytest.raises(TableIOError, match="changed while the job read it"):
        list(src.read(0, 3))


def _table(rows):
    import pyarrow as pa

    return pa.table({"v": pa.array([r[0] for r in rows], pa.int64())})


# --- generations (the SDK's side, with the job's etcd) -------------------------------------------


@pytest.fixture
def generations(fake_mc, out, make_session, monkeypatch):
    """(dataset of 4 slices, its MaxCompute sink, UploadGenerations) with a 4-second lifetime."""
    from aimaster.data.coordinator import Dataset, PlanData
    from aimaster.io.tables.odps_generations import UploadGenerations

    monkeypatch.setenv("AIMASTER_ODPS_SESSION_LIFETIME", str(LIFETIME))
    fake_mc.upload_lifetime = LIFETIME
    ds = Dataset(make_session("w-gen"), "t-gen")
    ds.ensure_plan(lambda: PlanData("table", 4, {"url": "x"}), 1)
    sink = open_table_sink(out, slice_count=4, attempts_per_slice=4)
    ds.store.put(ds.k.base + "sink", sink.describe())
    return ds, sink, UploadGenerations(ds, sink)


def _commit(ds, sink, gens, rows):
    """Claim a slice, stage ``rows`` into the current generation, commit; the ref."""
    claim = ds.try_claim()
    ref = sink.stage(claim.slice_id, "0", rows, generation=gens.current())
    claim.add_output(sink, ref)
    assert ds.commit(claim)
    return claim.slice_id, ref


def test_generations_rotate_and_are_committed_before_they_expire(fake_mc, generations):
    ds, sink, gens = generations
    sid0, ref0 = _commit(ds, sink, gens, [(0,)])
    loser = sink.stage(sid0, "1", [(666,)], generation=gens.current())  # a copy that lost, not discarded
    time.sleep(LIFETIME / 4 + 0.1)
    sid1, ref1 = _commit(ds, sink, gens, [(1,)])
    assert (ref0["g"], ref1["g"]) == (0, 1) and ref0["session"] != ref1["session"]
    assert gens.committable(ref0) and gens.committable(ref1)
    time.sleep(LIFETIME * 5 / 8 - LIFETIME / 4)
    assert not gens.committable(ref0)  # too old to commit now: its attempt would be redone
    assert gens.maintain(force=True) == 0
    assert fake_mc.rows("prj", "o") == [(0,)]  # generation 0 committed mid-job, the loser emptied
    assert fake_mc.upload_status(ref0["session"]) == "closed"
    assert _blocks(fake_mc, loser["session"])[loser["block"]] == []
    assert fake_mc.upload_status(ref1["session"]) == "normal"
    assert ds.store.get_value(gens.prefix + "000000")["state"] == "sealed"
    sink.finalize([(sid0, ref0), (sid1, ref1)])  # the job's end: the rest, and nothing twice
    assert sorted(fake_mc.rows("prj", "o")) == [(0,), (1,)]


def test_commits_whose_rows_expired_are_taken_back(fake_mc, generations):
    ds, sink, gens = generations
    sid, ref = _commit(ds, sink, gens, [(5,)])
    fake_mc.expire_all()  # the job was down for longer than the sessions live
    time.sleep(LIFETIME * 5 / 8 + 0.05)
    assert gens.maintain(force=True) == 1
    assert ds.store.get_value(ds.k.done + sid) is None
    todo = ds.store.get_value(ds.k.todo + sid)
    assert todo["a"] == 1 and "expired" in todo["e"]
    # The redo stages into a new generation, with a new ordinal, and commits for real.
    claims = [ds.try_claim() for _ in range(4)]
    (claim,) = [c for c in claims if c is not None and c.slice_id == sid]
    assert claim.attempt_no == 2
    redo = sink.stage(sid, "2", [(5,)], generation=gens.current())
    assert redo["g"] == 1
    claim.add_output(sink, redo)
    assert ds.commit(claim)
    sink.finalize([(sid, redo)])
    assert fake_mc.rows("prj", "o") == [(5,)]
