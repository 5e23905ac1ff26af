"""Parquet specifics: reading only what a range needs, directory layout, schema inference."""

from __future__ import annotations

import datetime
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tables_helpers import read_all

from aimaster.errors import EmptyInputError, InputNotFoundError, SchemaError, TableIOError, UrlError
from aimaster.io.tables import Column, open_table_sink, open_table_source


def write_files(directory, sizes, row_group_size):
    """Files f0.parquet, f1.parquet, ... with consecutive ids and the given row counts."""
    os.makedirs(directory, exist_ok=True)
    start = 0
    for i, n in enumerate(sizes):
        t = pa.table({"id": list(range(start, start + n)), "s": [f"v{j}" for j in range(start, start + n)],
                      "x": [float(j) for j in range(start, start + n)]})
        pq.write_table(t, os.path.join(directory, f"f{i}.parquet"), row_group_size=row_group_size)
        start += n
    return start


@pytest.fixture
def spy_reads(mocker):
    """Record which (file, row groups, columns) each read decodes."""
    calls = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        calls.append((os.path.basename(self.reader.source if hasattr(self.reader, "source") else ""),
                      tuple(kwargs.get("row_groups") or ()), tuple(kwargs.get("columns") or ())))
        return real(self, *args, **kwargs)

    mocker.patch.object(pq.ParquetFile, "iter_batches", spy)
    return calls


def test_range_reads_only_overlapping_files_and_row_groups(tmp_path, spy_reads):
    total = write_files(tmp_path / "d", [30, 30, 30], row_group_size=10)
    src = open_table_source(str(tmp_path / "d"))
    assert src.row_count() == total == 90
    rows = [r for b in src.read(35, 52, columns=["s"]) for r in b]
    assert rows == [(f"v{j}",) for j in range(35, 52)]
    # rows 35..51 live in file 1 (rows 30..59), row groups 0 (30..39) and 1 (40..49) and 2 (50..59)
    assert [(groups, cols) for _, groups, cols in spy_reads] == [((0, 1, 2), ("s",))]
    spy_reads.clear()
    rows = [r for b in src.read(28, 31) for r in b]
    assert [r[0] for r in rows] == [28, 29, 30]
    assert [groups for _, groups, _ in spy_reads] == [(2,), (0,)]  # last group of f0, first of f1


def test_files_in_sorted_path_order_recursively_skipping_hidden(tmp_path):
    d = tmp_path / "d"
    write_files(d / "b", [3], row_group_size=10)
    os.rename(d / "b" / "f0.parquet", d / "b" / "part.parquet")
    t = pa.table({"id": [100], "s": ["x"], "x": [1.0]})
    os.makedirs(d / "a")
    pq.write_table(t, d / "a" / "z.parquet")
    pq.write_table(t, d / "_hidden.parquet")
    os.makedirs(d / ".staging")
    pq.write_table(t, d / ".staging" / "y.parquet")
    (d / "notes.txt").write_text("not a table")
    assert [r[0] for r in read_all(str(d))] == [100, 0, 1, 2]


def test_single_file_and_file_url(tmp_path):
    write_files(tmp_path, [5], row_group_size=2)
    path = tmp_path / "f0.parquet"
    assert [r[0] for r in read_all(f"file://{path}", start=1, end=4)] == [1, 2, 3]


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(InputNotFoundError, match=str(tmp_path / "nope")):
        open_table_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyInputError, match="empty"):
        open_table_source(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(TableIOError, match="x.parquet"):
        open_table_source(str(tmp_path / "bad"))


def test_files_with_different_schemas_are_rejected(tmp_path):
    os.makedirs(tmp_path / "d")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "d" / "0.parquet")
    pq.write_table(pa.table({"a": ["x"]}), tmp_path / "d" / "1.parquet")
    with pytest.raises(SchemaError, match="1.parquet"):
        open_table_source(str(tmp_path / "d"))


def test_arrow_types_map_to_maxcompute_names(tmp_path):
    t = pa.table({
        "i8": pa.array([1], pa.int8()), "i16": pa.array([1], pa.int16()), "i32": pa.array([1], pa.int32()),
        "f32": pa.array([1.5], pa.float32()), "bin": pa.array([b"\x00"], pa.binary()),
        "d": pa.array([datetime.date(2020, 1, 2)]), "ns": pa.array([1_500_000_000_123_456_789], pa.timestamp("ns")),
        "lst": pa.array([[1, 2]]), "dict": pa.array(["a"]).dictionary_encode(),
    })
    pq.write_table(t, tmp_path / "t.parquet")
    src = open_table_source(str(tmp_path / "t.parquet"))
    assert [c.type for c in src.schema] == ["TINYINT", "SMALLINT", "INT", "FLOAT", "BINARY", "DATE", "DATETIME",
                                           "ARRAY<BIGINT>", "STRING"]
    (row,) = [r for b in src.read() for r in b]
    assert row[:6] == (1, 1, 1, 1.5, b"\x00", datetime.date(2020, 1, 2))
    assert row[6] == datetime.datetime(2017, 7, 14, 2, 40, 0, 123456)  # nanoseconds truncated to micros
    assert row[7:] == ([1, 2], "a")


def test_sink_infers_and_records_schema_from_first_write(tmp_path):
    out = str(tmp_path / "out")
    sink = open_table_sink(out)
    assert sink.schema is None
    ref = sink.stage("s1", "0", [(1, "a", 2.5, True, datetime.datetime(2020, 1, 1))])
    sink.publish("s1", ref)
    expected = [Column("_c0", "BIGINT"), Column("_c1", "STRING"), Column("_c2", "DOUBLE"), Column("_c3", "BOOLEAN"),
                Column("_c4", "DATETIME")]
    assert sink.schema == expected
    with open(os.path.join(out, "_aimaster_schema.json")) as f:
        assert json.load(f) == {"columns": "_c0:BIGINT,_c1:STRING,_c2:DOUBLE,_c3:BOOLEAN,_c4:DATETIME"}
    # another process opening the same output gets the recorded schema, and its checks
    other = open_table_sink(out)
    assert other.schema == expected
    with pytest.raises(SchemaError, match="_c0"):
        other.stage("s2", "0", [("x", "a", 2.5, True, None)])
    # and a writer that would infer a different schema is refused
    with pytest.raises(SchemaError, match="already has schema"):
        open_table_sink(out, schema="a:BIGINT").stage("s3", "0", [(1,)])


def test_sink_inference_needs_values(tmp_path):
    with pytest.raises(SchemaError, match="only NULLs"):
        open_table_sink(str(tmp_path / "o1")).stage("s1", "0", [(1, None)])
    with pytest.raises(SchemaError, match="col_indices"):
        open_table_sink(str(tmp_path / "o2")).stage("s1", "0", [(1,)], col_indices=(2,))
    sink = open_table_sink(str(tmp_path / "o3"))
    ref = sink.stage("s1", "0", [])
    sink.publish("s1", ref)  # an empty slice of a schema-less output publishes nothing
    assert not os.path.exists(tmp_path / "o3" / "part-s1.parquet")


def test_half_written_stage_is_invisible_and_row_groups_are_large(tmp_path):
    out = str(tmp_path / "out")
    sink = open_table_sink(out, schema="a:BIGINT", row_group_rows=100)
    ref = sink.stage("s0", "0", [(i,) for i in range(5)])
    sink.publish("s0", ref)
    stage = sink.open_stage("s1", "0")
    for i in range(250):
        stage.write([(i,)])  # many small writes ...
    assert [r[0] for r in read_all(out)] == [0, 1, 2, 3, 4]  # ... invisible while being written
    ref = stage.commit()
    assert [r[0] for r in read_all(out)] == [0, 1, 2, 3, 4]  # staged, still not published
    sink.publish("s1", ref)
    assert len(read_all(out)) == 255
    meta = pq.read_metadata(os.path.join(out, "part-s1.parquet"))
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [100, 100, 50]
    assert meta.schema.to_arrow_schema().metadata[b"aimaster.attempt"] == b"0"


def test_publish_of_a_vanished_stage_is_an_error(tmp_path):
    sink = open_table_sink(str(tmp_path / "out"), schema="a:BIGINT")
    ref = sink.stage("s0", "0", [(1,)])
    sink.discard(ref)
    with pytest.raises(TableIOError, match="s0"):
        sink.publish("s0", ref)


def test_aborted_stage_leaves_nothing_and_finalize_cleans_up(tmp_path):
    out = tmp_path / "out"
    sink = open_table_sink(str(out), schema="a:BIGINT", row_group_rows=1)  # every write hits the disk
    stage = sink.open_stage("s0", "0")
    stage.write([(1,)])
    assert os.path.exists(stage.temp)
    stage.abort()
    assert os.listdir(out / "_staging") == []
    crashed = sink.open_stage("s1", "0")  # a crashed writer leaves its temporary file behind
    crashed.write([(2,)])
    ref = sink.stage("s1", "1", [(3,)])
    sink.publish("s1", ref)
    assert len(os.listdir(out / "_staging")) == 1
    sink.finalize([("s1", ref)])
    assert sorted(os.listdir(out)) == ["_aimaster_schema.json", "part-s1.parquet"]


def test_a_tampered_ref_cannot_touch_other_files(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    sink = open_table_sink(str(tmp_path / "out"), schema="a:BIGINT")
    for staged in ("../victim.txt", "_staging/../../victim.txt", "elsewhere/x.parquet"):
        with pytest.raises(TableIOError, match="does not name a file"):
            sink.publish("s0", {"staged": staged, "rows": 1, "bytes": 7})
        with pytest.raises(TableIOError, match="does not name a file"):
            sink.discard({"staged": staged})
    assert victim.read_text() == "keep me"


def test_output_path_must_be_a_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UrlError, match="directory"):
        open_table_sink(str(tmp_path / "f"))


def test_bad_slice_ids_are_refused(tmp_path):
    sink = open_table_sink(str(tmp_path / "out"), schema="a:BIGINT")
    for bad in ("../x", "a/b", "", "a~b"):
        with pytest.raises(ValueError):
            sink.stage(bad, "0", [(1,)])
