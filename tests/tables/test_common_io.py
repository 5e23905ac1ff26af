"""The ``common_io`` shim: PAI's TableReader / TableWriter over every backend."""

from __future__ import annotations

import pytest
from tables_helpers import read_all

import common_io
from aimaster.errors import ConfigError, SchemaError, UrlError
from common_io.exception import OutOfRangeException
from common_io.table import TableReader, TableWriter

ROWS = [(i, f"name{i}", i * 0.5) for i in range(23)] + [(23, None, None)]


@pytest.fixture
def table(backend):
    return backend.make_table("src", "id:BIGINT,name:STRING,score:DOUBLE", ROWS)


def drain(reader, n):
    out = []
    while True:
        try:
            out.extend(reader.read(n))
        except OutOfRangeException:
            return out


def test_read_batches_bytes_and_end_of_table(backend, table):
    with TableReader(table) as reader:
        assert reader.get_row_count() == 24
        assert (reader.start_pos, reader.end_pos) == (0, 24)
        first = reader.read(5)
        assert first == [(i, f"name{i}".encode(), i * 0.5) for i in range(5)]
        assert reader.read() == [(5, b"name5", 2.5)]
        rest = reader.read(100)  # fewer rows than asked: what is left
        assert len(rest) == 18 and rest[-1] == (23, None, None)
        with pytest.raises(OutOfRangeException, match="End of table"):
            reader.read(1)


def test_url_range_then_slices_split_it_contiguously(backend, table):
    url = f"{table}?start=3&end=20"
    parts = []
    for slice_id in range(4):
        with TableReader(url, slice_id=slice_id, slice_count=4) as reader:
            parts.append((reader.start_pos, reader.end_pos, [r[0] for r in drain(reader, 2)]))
    assert [(a, b) for a, b, _ in parts] == [(3, 8), (8, 12), (12, 16), (16, 20)]
    assert [i for _, _, ids in parts for i in ids] == list(range(3, 20))


def test_selected_and_excluded_columns(backend, table):
    with TableReader(table, selected_cols="score,id") as reader:
        assert reader.read(2) == [(0.0, 0), (0.5, 1)]
        schema = reader.get_schema()
        assert list(schema["colname"]) == ["score", "id"]
        assert list(schema["typestr"]) == ["double", "bigint"]
        assert list(schema["pytype"]) == [float, int]
    with TableReader(table, excluded_cols="score") as reader:
        assert reader.read(1) == [(0, b"name0")]
        assert list(reader.get_schema()["pytype"]) == [int, bytes]
    with pytest.raises(ConfigError, match="selected_cols and excluded_cols"):
        TableReader(table, selected_cols="id", excluded_cols="name")
    with pytest.raises(SchemaError, match="nope"):
        TableReader(table, excluded_cols="nope")
    with pytest.raises(SchemaError, match="nope"):
        TableReader(table, selected_cols="id,nope")


def test_seek_takes_absolute_rows_within_the_slice(backend, table):
    with TableReader(f"{table}?start=10", slice_id=1, slice_count=2) as reader:
        assert (reader.start_pos, reader.end_pos) == (17, 24)
        reader.read(3)
        reader.seek(20)
        assert reader.read(2) == [(20, b"name20", 10.0), (21, b"name21", 10.5)]
        reader.seek(17)
        assert reader.read(1)[0][0] == 17
        reader.seek(24)
        with pytest.raises(OutOfRangeException):
            reader.read()
        with pytest.raises(OutOfRangeException, match="outside"):
            reader.seek(5)


@pytest.mark.parametrize("num_threads,capacity", [(1, 4), (3, 5), (0, 7), (2, 0)])
def test_prefetching_reads_the_same_rows(backend, table, num_threads, capacity):
    with TableReader(table, num_threads=num_threads, capacity=capacity) as reader:
        assert reader._prefetch
        got = drain(reader, 3)
        reader.seek(2)
        again = reader.read(4)
    assert [r[0] for r in got] == list(range(24))
    assert [r[0] for r in again] == [2, 3, 4, 5]


def test_bad_arguments(backend, table):
    with pytest.raises(ConfigError, match="slice_id"):
        TableReader(table, slice_id=2, slice_count=2)
    with TableReader(table) as reader:
        with pytest.raises(ValueError):
            reader.read(0)
    with pytest.raises(ValueError, match="closed"):
        reader.read(1)


def test_table_writer_writes_on_close(backend):
    url = backend.make_output("dst", "id:BIGINT,label:STRING")
    with TableWriter(url, slice_id=3) as writer:
        writer.write([(1, "a"), (2, "b")], col_indices=(0, 1))
        writer.write([("c",)], col_indices=[1])
        assert backend.output_rows(url) == []  # nothing visible before close
    with TableWriter(url) as writer:  # a second writer appends
        writer.write([(4, "d")], (0, 1))
    assert backend.output_rows(url) == [(1, "a"), (2, "b"), (None, "c"), (4, "d")]


def test_table_writer_discards_on_exception(backend):
    url = backend.make_output("dst", "id:BIGINT")
    with pytest.raises(RuntimeError):
        with TableWriter(url) as writer:
            writer.write([(1,)], (0,))
            raise RuntimeError("inference failed")
    assert backend.output_rows(url) == []
    with pytest.raises(UrlError, match="row range"):
        TableWriter(f"{url}?start=1")


def test_module_layout():
    assert common_io.table.TableReader is TableReader
    assert common_io.exception.OutOfRangeException is OutOfRangeException
    assert issubclass(OutOfRangeException, Exception)


def test_read_all_matches_common_io(backend, table):
    with TableReader(table) as reader:
        via_reader = [(i, None if s is None else s.decode(), x) for i, s, x in drain(reader, 7)]
    assert via_reader == read_all(table) == ROWS
