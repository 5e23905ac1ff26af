"""The seed's TF example writes what ``sess.run(batch)`` returns: a tuple of column arrays."""

import numpy as np
import pyarrow.parquet as pq

from aimaster.io.tables import SliceRowWriter, open_table_sink


def test_tuple_of_column_arrays_is_written_as_rows(tmp_path):
    sink = open_table_sink(str(tmp_path / "out"), schema="id:BIGINT,name:STRING")
    writer = SliceRowWriter(sink)
    writer.begin_slice("000000", "0")
    writer.write((np.array([1, 2, 3]), np.array([b"a", b"b", b"c"])), col_indices=(0, 1))
    ref = writer.finish_slice()
    sink.publish("000000", ref)
    table = pq.read_table(tmp_path / "out" / "part-000000.parquet")
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.column("name").to_pylist() == ["a", "b", "c"]
