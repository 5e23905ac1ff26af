"""The one staging mechanism (aimaster.io.staging) under the file sink and the local table sinks:
refs read from etcd are refused unless they name this sink's own staged file, a staged file gone
unpublished is an error, publishing is idempotent, cleanup touches only the job's slices.
Real files in a temporary directory; no etcd."""

from __future__ import annotations

import os

import pytest
from helpers import spy_on_fsync

from aimaster.errors import EtcdDataError, TableIOError
from aimaster.io.files import STAGING_DIR, FileSink
from aimaster.io.staging import RefusedRefError, StagedOutputMissingError, Staging, TableStaging, belongs
from aimaster.io.tables import open_table_sink


def _stage_file(sink: FileSink, slice_id: str, attempt: str, text: str, name: str = ""):
    handle, ref = sink.open_staged(slice_id, attempt, name or f"{slice_id}.txt")
    with handle:
        handle.write(text)
    return ref


def test_a_forged_ref_is_refused_naming_it_and_touches_nothing(tmp_path):
    (tmp_path / "etc").mkdir()
    victim = tmp_path / "etc" / "x"
    victim.write_text("precious\n")
    out = tmp_path / "a" / "b"
    out.mkdir(parents=True)
    sink = FileSink(str(out))
    forged = {"staged": "../../etc/x", "final": "000000.txt"}
    with pytest.raises(RefusedRefError) as e:
        sink.publish("000000", forged)
    message = str(e.value)
    assert "\n" not in message and "'../../etc/x'" in message and "000000" in message
    assert isinstance(e.value, EtcdDataError) and isinstance(e.value, TableIOError)
    with pytest.raises(RefusedRefError):
        sink.discard(forged)
    table = TableStaging(str(out), "_staging", ".parquet")
    for method, args in ((table.publish_ref, ("000000", forged)), (table.discard_ref, (forged,))):
        with pytest.raises(RefusedRefError, match=r"'\.\./\.\./etc/x'.*does not name a file"):
            method(*args)
    assert victim.read_text() == "precious\n"
    assert os.listdir(out) == []


def test_a_ref_of_another_slice_is_refused(tmp_path):
    sink = FileSink(str(tmp_path / "out"))
    ref = _stage_file(sink, "000001", "w0.a", "one\n")
    with pytest.raises(RefusedRefError, match="not one of slice 000000"):
        sink.publish("000000", {"staged": ref["staged"], "final": "000001.txt"})
    assert os.path.isfile(tmp_path / "out" / ref["staged"])


def test_a_missing_staged_file_at_publish_is_an_error(tmp_path):
    out = tmp_path / "out"
    sink = FileSink(str(out))
    ref = _stage_file(sink, "000000", "w0.a", "zero\n")
    os.unlink(out / ref["staged"])
    with pytest.raises(StagedOutputMissingError, match="000000.txt was never published"):
        sink.publish("000000", ref)
    # The same rule for a table sink: a staged Parquet file gone unpublished.
    table = open_table_sink(str(tmp_path / "table"), schema="a:BIGINT")
    staged = table.stage("s0", "0", [(1,)])
    os.unlink(tmp_path / "table" / staged["staged"])
    with pytest.raises(StagedOutputMissingError, match="s0"):
        table.publish("s0", staged)


def test_publish_is_idempotent_on_retry(tmp_path):
    out = tmp_path / "out"
    sink = FileSink(str(out))
    ref = _stage_file(sink, "000000", "w0.a", "zero\n", name="sub/dir/000000.txt")
    sink.publish("000000", ref)
    sink.publish("000000", ref)  # a redo after a crash: the staged file is gone, the final one is there
    assert (out / "sub" / "dir" / "000000.txt").read_text() == "zero\n"
    assert not os.path.exists(out / STAGING_DIR), "the emptied staging directories were not pruned"
    table = open_table_sink(str(tmp_path / "table"), schema="a:BIGINT")
    staged = table.stage("s0", "0", [(1,)])
    table.publish("s0", staged)
    table.publish("s0", staged)
    assert os.path.isfile(tmp_path / "table" / "part-s0.parquet")


def test_a_retry_finding_another_file_of_other_size_is_an_error(tmp_path):
    table = open_table_sink(str(tmp_path / "table"), schema="a:BIGINT")
    staged = table.stage("s0", "0", [(1,)])
    table.publish("s0", staged)
    (tmp_path / "table" / "part-s0.parquet").write_bytes(b"x")  # not the published file
    with pytest.raises(StagedOutputMissingError):
        table.publish("s0", staged)


def test_the_directory_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    out = tmp_path / "out"
    sink = FileSink(str(out))
    ref = _stage_file(sink, "000000", "w0.a", "zero\n")
    synced = spy_on_fsync(monkeypatch)
    sink.publish("000000", ref)
    assert str(out) in synced


def test_file_sink_cleanup_removes_its_whole_staging_area(tmp_path):
    """The file sink's .aimaster-staging is the job's alone: losers' and failed slices' leftovers go."""
    out = tmp_path / "out"
    sink = FileSink(str(out))
    ours = _stage_file(sink, "000000", "w0.a", "zero\n")
    _stage_file(sink, "000000", "w1.b", "a loser\n")
    _stage_file(sink, "000001", "w1.b", "a slice that failed\n")
    sink.publish("000000", ours)
    sink.finalize([("000000", ours)])
    assert sorted(os.listdir(out)) == ["000000.txt"]
    assert (out / "000000.txt").read_text() == "zero\n"


def test_cleanup_removes_only_this_jobs_staging(tmp_path):
    """A table directory may be staged into by another job's writer: only this job's slices go."""
    out = tmp_path / "table"
    table = open_table_sink(str(out), schema="a:BIGINT")
    ref = table.stage("s1", "0", [(1,)])
    loser = table.stage("s1", "1", [(2,)])
    other = table.stage("x9", "0", [(3,)])
    table.publish("s1", ref)
    table.finalize([("s1", ref)])
    assert os.listdir(out / "_staging") == [os.path.basename(other["staged"])]
    assert not os.path.exists(out / loser["staged"])


def test_staging_survives_its_directory_vanishing(tmp_path):
    staging = Staging(str(tmp_path / "out"))
    path = staging.path + "/000000/w0.a/000000.txt"
    with staging.open_exclusive(path) as f:
        f.write(b"x")
    staging.cleanup(["000000"])
    assert not os.path.exists(staging.path)
    staging.cleanup()  # nothing left: fine
    with staging.open_exclusive(path) as f:  # a losing attempt starting after the cleanup
        f.write(b"y")
    assert open(path, "rb").read() == b"y"


def test_cleanup_of_given_slices_keeps_the_rest(tmp_path):
    staging = Staging(str(tmp_path / "out"), "_staging")
    for name in ("s1~0.csv", "s1~1.7-ab.tmp", "s2~0.csv"):
        staging.open_exclusive(f"{staging.path}/{name}").close()
    staging.cleanup({"s1"})
    assert os.listdir(staging.path) == ["s2~0.csv"]


def test_entries_belong_to_their_slice_only():
    assert belongs("000001", {"000001"}) and belongs("s1~0.parquet", {"s1"})
    assert not belongs("s10~0.parquet", {"s1"}) and not belongs("000010", {"000001"})
