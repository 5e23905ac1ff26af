"""Slice row writers: the in-process one and the one that stages in a child interpreter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tables_helpers import read_all

from aimaster.errors import InputNotFoundError, SchemaError, TableIOError
from aimaster.io.tables import SliceRowWriter, SubprocessSliceRowWriter, create_warehouse_table, open_table_sink
from aimaster.io.tables.rows import drop_filtered


def publish_all(sink, refs):
    for slice_id, ref in refs:
        sink.publish(slice_id, ref)
    sink.finalize(refs)


def test_filter_compares_type_and_value():
    rows = [(0, "a"), (False, "b"), (1, None), (np.int64(0), "c"), ("", 0.0)]
    assert drop_filtered(rows, 0) == [(False, "b"), (1, None)]
    assert drop_filtered(rows, False) == [(0, "a"), (1, None), (np.int64(0), "c"), ("", 0.0)]
    assert drop_filtered(rows, "") == rows[:4]
    assert len(drop_filtered([(np.array([0, 1]),)], 0)) == 1  # array-valued cells never match


def test_slice_row_writer_life_cycle(tmp_path):
    sink = open_table_sink(str(tmp_path / "out"), schema="v:BIGINT,label:STRING")
    writer = SliceRowWriter(sink.describe())  # a description works as well as a sink
    with pytest.raises(ValueError, match="before begin_slice"):
        writer.write([(1, "x")])
    writer.begin_slice("s00000", "0")
    with pytest.raises(ValueError, match="still being written"):
        writer.begin_slice("s00001", "0")
    with pytest.raises(SchemaError, match="not a tuple"):
        writer.write(["seven"])  # a flat list is not a list of rows
    writer.write([(np.int64(7), "seven")])  # numpy scalars from a model are fine
    writer.write(np.array([[8], [9]]), col_indices=(0,))  # a 2-D array of rows
    ref = writer.finish_slice()
    assert ref["rows"] == 3
    writer.begin_slice("s00001", "0")
    writer.write([(10, "never committed")])
    writer.close()  # aborts the unfinished slice
    with pytest.raises(ValueError, match="closed"):
        writer.begin_slice("s00002", "0")
    publish_all(sink, [("s00000", ref)])
    assert read_all(str(tmp_path / "out")) == [(7, "seven"), (8, None), (9, None)]
    assert not os.path.exists(tmp_path / "out" / "_staging")  # finalize left nothing behind


def test_subprocess_writer_round_trip(tmp_path):
    sink = open_table_sink(str(tmp_path / "out"), schema="v:BIGINT,label:STRING")
    refs = []
    with SubprocessSliceRowWriter(sink, buffer_size=64, filter_value="drop") as writer:
        assert writer.column_names == ["v", "label"]
        for s in range(3):
            writer.begin_slice(f"s{s:05d}", "0")
            for i in range(50):
                writer.write([(s * 1000 + i, "drop" if i % 10 == 0 else f"r{i}")])
                assert sum(writer._in_flight) <= writer.buffer_size  # bounded, in rows
            writer.write([(s * 1000 + 99,)], col_indices=(0,))
            refs.append((f"s{s:05d}", writer.finish_slice()))
        pid = writer.pid
    assert [r["rows"] for _, r in refs] == [46, 46, 46]
    publish_all(sink, refs)
    rows = read_all(str(tmp_path / "out"))
    assert len(rows) == 138
    assert rows[:3] == [(1, "r1"), (2, "r2"), (3, "r3")]
    assert rows[45] == (99, None)
    with pytest.raises(OSError):
        os.kill(pid, 0)  # the child is gone after close()


def test_subprocess_writer_errors_keep_their_type(tmp_path, warehouse):
    url = create_warehouse_table("odps://prj/tables/out", "v:BIGINT,label:STRING")
    with SubprocessSliceRowWriter(open_table_sink(url), buffer_size=8) as writer:
        writer.begin_slice("s00000", "0")
        with pytest.raises(SchemaError, match="has 1 values"):  # shape errors: raised at the call
            writer.write([(1,)])
        with pytest.raises(SchemaError, match="out of range"):
            writer.write([(1,)], col_indices=(5,))
        writer.write([("not a number", "x")])  # type errors: found by the child ...
        with pytest.raises(SchemaError, match="column v BIGINT"):  # ... raised at the next call
            writer.finish_slice()
        writer.begin_slice("s00000", "1")  # the writer goes on with the next slice
        writer.write([(2, "ok")])
        ref = writer.finish_slice()
    sink = open_table_sink(url)
    publish_all(sink, [("s00000", ref)])
    assert read_all(url) == [(2, "ok")]
    with pytest.raises(InputNotFoundError, match="odps://prj/tables/absent"):
        SubprocessSliceRowWriter({"kind": "warehouse", "url": "odps://prj/tables/absent",
                                  "warehouse": str(warehouse)}, buffer_size=8)


def test_subprocess_writer_ships_numpy_batches_as_arrays(tmp_path):
    """2-D arrays and TF-style column tuples travel as arrays and land as the same rows as in process,
    mixed with row tuples, across chunk boundaries, with filtering done in the child."""
    schema = "v:BIGINT,score:DOUBLE,label:STRING"
    batches = [
        (np.column_stack([np.arange(10), np.arange(10) * 0.5]), (0, 1)),  # a 2-D float array
        ((np.arange(10, 17), np.linspace(0, 1, 7), np.array([b"a", b"b", b"c", b"d", b"e", b"f", b"g"],
                                                             dtype=object)), None),  # TF columns
        ([(100, 1.5, "row"), (101, -1.0, "drop")], None),  # plain rows in between
        (np.arange(40, dtype=np.int64).reshape(20, 2), (0, 1)),
    ]
    outputs = []
    for kind in ("inprocess", "subprocess"):
        sink = open_table_sink(str(tmp_path / kind), schema=schema)
        writer = (SliceRowWriter(sink, filter_value="drop") if kind == "inprocess"
                  else SubprocessSliceRowWriter(sink, buffer_size=8, filter_value="drop"))
        with writer:
            writer.begin_slice("s00000", "0")
            for values, indices in batches:
                writer.write(values, col_indices=indices)
            ref = writer.finish_slice()
        publish_all(sink, [("s00000", ref)])
        outputs.append(read_all(str(tmp_path / kind)))
    assert outputs[0] == outputs[1]
    assert len(outputs[1]) == 10 + 7 + 1 + 20
    assert outputs[1][10] == (10, 0.0, "a") and outputs[1][17] == (100, 1.5, "row")
    with SubprocessSliceRowWriter(open_table_sink(str(tmp_path / "subprocess")), buffer_size=8) as writer:
        writer.begin_slice("s00001", "0")
        with pytest.raises(SchemaError, match="have 3 values but 2 columns"):
            writer.write(np.zeros((4, 3)), col_indices=(0, 1))
        with pytest.raises(SchemaError, match="out of range"):
            writer.write(np.zeros((4, 2)), col_indices=(0, 7))


def test_subprocess_writer_rejects_a_bad_row_anywhere_in_a_call(tmp_path):
    sink = open_table_sink(str(tmp_path / "out"), schema="v:BIGINT,w:BIGINT")
    with SubprocessSliceRowWriter(sink, buffer_size=8) as writer:
        writer.begin_slice("s00000", "0")
        with pytest.raises(SchemaError, match="row 0 .* is a int, not a tuple"):
            writer.write([7, (1, 2)])
        with pytest.raises(SchemaError, match="row 1 .* is a int, not a tuple"):
            writer.write([(1, 2), 7, (3, 4)])  # nothing of the call is queued
        with pytest.raises(SchemaError, match="row 0 .* is a dict, not a tuple"):
            writer.write([{"v": 1, "w": 2}])  # as the in-process writer says it
        # A row of the wrong length between good ones: the child finds it; the slice fails.
        writer.write([(i, i) for i in range(3)] + [(9,)] + [(i, i) for i in range(3)])
        with pytest.raises(SchemaError, match="has 1 values"):
            writer.finish_slice()
        writer.begin_slice("s00000", "1")
        writer.write([(1, 2)])
        ref = writer.finish_slice()
    assert ref["rows"] == 1
    publish_all(sink, [("s00000", ref)])
    assert read_all(str(tmp_path / "out")) == [(1, 2)]


def test_sigkill_of_the_child_is_an_error_in_the_parent_not_a_hang(tmp_path):
    out = str(tmp_path / "out")
    sink = open_table_sink(out, schema="v:BIGINT")
    writer = SubprocessSliceRowWriter(sink, buffer_size=4)
    writer.begin_slice("s00000", "0")
    writer.write([(i,) for i in range(10)])
    ref = writer.finish_slice()
    writer.begin_slice("s00001", "0")
    writer.write([(100,)])
    os.kill(writer.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    with pytest.raises(TableIOError, match="SIGKILL") as info:
        while time.monotonic() < deadline:  # the next call raises (a write may still fit the pipe once)
            writer.write([(i,) for i in range(200)])
            writer.finish_slice()
    assert "s00001" in str(info.value)
    with pytest.raises(TableIOError, match="SIGKILL"):
        writer.begin_slice("s00002", "0")  # and every call after that
    writer.close()  # quiet: the death was reported already (a `with` block keeps the first error)
    publish_all(sink, [("s00000", ref)])
    assert [r[0] for r in read_all(out)] == list(range(10))  # slice 1 never became visible


def test_sigkill_while_idle_is_reported_by_close(tmp_path):
    sink = open_table_sink(str(tmp_path / "out"), schema="v:BIGINT")
    writer = SubprocessSliceRowWriter(sink, buffer_size=4)
    os.kill(writer.pid, signal.SIGKILL)
    with pytest.raises(TableIOError, match="SIGKILL"):
        writer.close()


UNGUARDED_SCRIPT = """
import sys
with open(sys.argv[1], "a") as f:  # top-level code with no __main__ guard, like the seed's examples
    f.write("ran\\n")
from aimaster.io.tables import SubprocessSliceRowWriter, open_table_sink
sink = open_table_sink(sys.argv[2], schema="v:BIGINT")
with SubprocessSliceRowWriter(sink, buffer_size=4) as writer:
    writer.begin_slice("s00000", "0")
    writer.write([(1,)])
    ref = writer.finish_slice()
sink.publish("s00000", ref)
"""


def test_the_child_does_not_rerun_an_unguarded_main_script(tmp_path):
    script = tmp_path / "infer.py"
    script.write_text(UNGUARDED_SCRIPT)
    marker = tmp_path / "marker"
    subprocess.run([sys.executable, str(script), str(marker), str(tmp_path / "out")], check=True, timeout=60)
    assert marker.read_text() == "ran\n"
    assert read_all(str(tmp_path / "out")) == [(1,)]
