"""One contract, every backend: Parquet, the local warehouse, and MaxCompute (through pyodps with
only its HTTP layer faked). Each test runs once per backend via the ``backend`` fixture."""

from __future__ import annotations

import datetime

import pytest
from tables_helpers import read_all

from aimaster.data.outputs import sink_from_description
from aimaster.errors import InputNotFoundError, SchemaError
from aimaster.io.tables import Column, SliceRowWriter, open_table_source

COLUMNS = "id:BIGINT,small:INT,score:DOUBLE,ratio:FLOAT,name:STRING,flag:BOOLEAN,ts:DATETIME"
TYPES = ["BIGINT", "INT", "DOUBLE", "FLOAT", "STRING", "BOOLEAN", "DATETIME"]


def make_rows(n: int):
    base = datetime.datetime(2024, 3, 1, 12, 0, 0)
    rows = []
    for i in range(n):
        rows.append((i, i % 100, i * 0.25, float(i % 8) / 2, f"name-{i},\"q\"" if i % 5 == 0 else f"n{i}",
                     i % 3 == 0, base + datetime.timedelta(seconds=i, milliseconds=i % 1000)))
    rows.append((None, None, None, None, None, None, None))  # NULL in every column
    return rows


ROWS = make_rows(40)


@pytest.fixture
def table(backend):
    return backend.make_table("src", COLUMNS, ROWS)


def test_schema_names_and_types(backend, table):
    with open_table_source(table) as src:
        assert [c.name for c in src.schema] == ["id", "small", "score", "ratio", "name", "flag", "ts"]
        assert [c.type for c in src.schema] == TYPES
        assert src.row_count() == len(ROWS)


def test_whole_table_values_types_and_nulls(backend, table):
    rows = read_all(table)
    assert rows == ROWS
    first = rows[1]
    assert [type(v) for v in first] == [int, int, float, float, str, bool, datetime.datetime]
    assert rows[-1] == (None,) * 7


@pytest.mark.parametrize("start,end", [(0, 1), (3, 17), (6, 8), (13, 41), (40, 41), (39, 100), (0, 41)])
def test_row_ranges(backend, table, start, end):
    assert read_all(table, start=start, end=end, batch_rows=4) == ROWS[start:end]


def test_range_batches_are_bounded_and_ordered(backend, table):
    with open_table_source(table) as src:
        batches = list(src.read(2, 37, batch_rows=5))
    assert all(1 <= len(b) <= 5 for b in batches)
    assert [r for b in batches for r in b] == ROWS[2:37]


def test_empty_and_clipped_ranges(backend, table):
    with open_table_source(table) as src:
        assert list(src.read(10, 10)) == []
        assert list(src.read(500, 600)) == []
        with pytest.raises(ValueError):
            src.read(5, 2)


def test_column_selection_order_and_duplicates(backend, table):
    rows = read_all(table, start=4, end=9, columns=["name", "id", "name"])
    assert rows == [(r[4], r[0], r[4]) for r in ROWS[4:9]]


def test_unknown_column_names_column_and_table(backend, table):
    with open_table_source(table) as src:
        with pytest.raises(SchemaError, match="nope") as info:
            src.read(0, 3, columns=["id", "nope"])  # raised at the call, before any row is read
    assert table in str(info.value)


def test_strings_as_bytes(backend, table):
    with open_table_source(table) as src:
        rows = [r for b in src.read(0, 2, columns=["name", "id"], strings_as_bytes=True) for r in b]
    assert rows == [(ROWS[0][4].encode(), 0), (ROWS[1][4].encode(), 1)]


def test_missing_table_is_input_not_found(backend):
    url = backend.missing_url()
    with pytest.raises(InputNotFoundError, match="nope"):
        open_table_source(url)


def test_describe_reopens_the_source(backend, table):
    from aimaster.io.tables import source_from_description

    with open_table_source(table) as src:
        desc = src.describe()
    again = source_from_description(desc)
    assert [r for b in again.read(5, 9) for r in b] == ROWS[5:9]


# --- output: stage / publish / discard / finalize ------------------------------------------------

OUT = "a:BIGINT,b:STRING,c:DOUBLE"


def test_exactly_once_output(backend):
    url = backend.make_output("out", OUT)
    sink = backend.open_sink(url)
    winner0 = sink.stage("s00000", "0", [(1, "a", 0.5), (2, "b", None)])
    # slice 1: a backup attempt runs concurrently; attempt 1 wins, attempt 0 loses and is discarded
    loser1 = sink.stage("s00001", "0", [(100, "loser", 0.0)])
    winner1 = sink.stage("s00001", "1", [(3, "c", 1.5)])
    # slice 2: an attempt stages output and crashes before anyone discards it; attempt 1 commits
    crashed2 = sink.stage("s00002", "0", [(200, "crashed", 0.0)])
    winner2 = sink.stage("s00002", "1", [(4, None, 2.5), (5, "e", None)])
    assert backend.staged_count(url, crashed2) == 1  # staged durably: a commit could have named it
    committed = [("s00000", winner0), ("s00001", winner1), ("s00002", winner2)]
    # another process (the master) publishes from the refs alone, twice: publishing is idempotent
    other = sink_from_description(sink.describe())
    for slice_id, ref in committed:
        other.publish(slice_id, ref)
        other.publish(slice_id, ref)
    sink.discard(loser1)
    sink.discard(loser1)
    other.finalize(committed)
    assert backend.output_rows(url) == [(1, "a", 0.5), (2, "b", None), (3, "c", 1.5), (4, None, 2.5), (5, "e", None)]
    assert backend.staged_count(url, crashed2) == 0  # the crashed attempt's stage is gone (or emptied)
    assert backend.staged_count(url, loser1) == 0


def test_refs_are_json(backend):
    import json

    url = backend.make_output("out", OUT)
    sink = backend.open_sink(url)
    ref = sink.stage("s00007", "0", [(1, "a", 1.0)])
    assert json.loads(json.dumps(ref)) == ref
    assert ref["rows"] == 1
    assert json.loads(json.dumps(sink.describe())) == sink.describe()


def test_restaging_the_same_attempt_replaces_it(backend):
    url = backend.make_output("out", OUT)
    sink = backend.open_sink(url)
    sink.stage("s00003", "0", [(1, "first try", None)])
    ref = sink.stage("s00003", "0", [(2, "retry", None)])
    sink.publish("s00003", ref)
    sink.finalize([("s00003", ref)])
    assert backend.output_rows(url) == [(2, "retry", None)]


def test_col_indices_fill_some_columns_rest_null(backend):
    url = backend.make_output("out", OUT)
    sink = backend.open_sink(url)
    ref = sink.stage("s00000", "0", [(1.5, 7), (2.5, 8)], col_indices=(2, 0))
    sink.publish("s00000", ref)
    sink.finalize([("s00000", ref)])
    assert backend.output_rows(url) == [(7, None, 1.5), (8, None, 2.5)]


@pytest.mark.parametrize(
    "rows,col_indices,match",
    [
        ([(1, "x", "not a number")], None, "column c DOUBLE"),
        ([("1", "x", 1.0)], None, "column a BIGINT"),
        ([(1.5, "x", 1.0)], None, "column a BIGINT"),
        ([(1, 2, 1.0)], None, "column b STRING"),
        ([(1, "x")], None, "has 2 values"),
        ([(1,)], (5,), "out of range"),
        ([(1, 2)], (0, 0), "repeats"),
        ([(1, "x", 1.0), {"a": 1, "b": "x", "c": 1.0}], None, "row 1 .* is a dict"),
        ([(1, "x", 1.0), 7], None, "row 1 .* is a int"),
    ],
)
def test_schema_mismatch_raises_before_writing(backend, rows, col_indices, match):
    url = backend.make_output("out", OUT)
    sink = backend.open_sink(url)
    good = sink.stage("s00000", "0", [(1, "ok", 1.0)])
    with SliceRowWriter(sink) as writer:
        writer.begin_slice("s00001", "0")
        writer.write([(2, "kept", 2.0)])
        with pytest.raises(SchemaError, match=match):
            writer.write(rows, col_indices)
        writer.write([(3, "kept too", 3.0)])  # the failed call wrote nothing; the slice goes on
        second = writer.finish_slice()
    committed = [("s00000", good), ("s00001", second)]
    for slice_id, ref in committed:
        sink.publish(slice_id, ref)
    sink.finalize(committed)
    assert backend.output_rows(url) == [(1, "ok", 1.0), (2, "kept", 2.0), (3, "kept too", 3.0)]


def test_slice_row_writer_filters_rows(backend):
    url = backend.make_output("out", OUT)
    sink = backend.open_sink(url)
    writer = SliceRowWriter(sink, filter_value=-1)
    writer.begin_slice("s00004", "0")
    assert writer.write([(1, "keep", 1.0), (-1, "drop", 1.0), (2, "keep", -1.0)]) == 1
    assert writer.write([(3, "keep", 0.0)], col_indices=(0, 1, 2)) == 1
    ref = writer.finish_slice()
    writer.close()
    sink.publish("s00004", ref)
    sink.finalize([("s00004", ref)])
    assert backend.output_rows(url) == [(1, "keep", 1.0), (3, "keep", 0.0)]


def test_sink_schema(backend):
    url = backend.make_output("out", OUT)
    sink = backend.open_sink(url)
    assert sink.schema == [Column("a", "BIGINT"), Column("b", "STRING"), Column("c", "DOUBLE")]


def test_column_batches_write_what_their_rows_would(backend):
    """A TF session's tuple of column arrays and a 2-D numpy array go to Arrow column by column,
    with the same values, checks and errors as the same rows given as tuples."""
    np = pytest.importorskip("numpy")
    url = backend.make_output("out", OUT)
    sink = backend.open_sink(url)
    columns = (np.array([1, 2, 3]), np.array([b"x", b"y", b"z"], dtype=object), np.array([0.5, 1.5, 2.5]))
    with SliceRowWriter(sink, filter_value=b"y") as writer:
        writer.begin_slice("s00000", "0")
        assert writer.write(columns) == 2  # filtering sees rows, as with tuples
        writer.write(np.array([[7.0, 8.5], [9.0, 10.5]]), col_indices=(0, 2))  # 2-D: BIGINT from 7.0 is fine
        with pytest.raises(SchemaError, match="column a BIGINT"):
            writer.write(np.array([[7.5, 8.5]]), col_indices=(0, 2))  # 7.5 is no BIGINT, as in a tuple
        with pytest.raises(SchemaError, match="has 2 values but col_indices names 3"):
            writer.write(np.zeros((2, 2)))
        ref = writer.finish_slice()
    sink.publish("s00000", ref)
    sink.finalize([("s00000", ref)])
    assert backend.output_rows(url) == [(1, "x", 0.5), (3, "z", 2.5), (7, None, 8.5), (9, None, 10.5)]
