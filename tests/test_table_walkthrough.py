"""The first table job of docs/table-job.md, run as the page says (examples/table_scores.py under
``aimaster run -n 2``): every input row scored once, the output columns named by ``col_names``."""

import collections
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import REPO, run_aimaster

import common_io
from aimaster.errors import ConfigError, SchemaError

ROWS = 3000


def _input(tmp_path):
    src = tmp_path / "texts"
    src.mkdir()
    for part in range(2):
        ids = list(range(part * ROWS // 2, (part + 1) * ROWS // 2))
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": [f"row {i}" for i in ids]}),
                       src / f"part-{part}.parquet")
    return src


def test_table_walkthrough_scores_every_row_once(tmp_path):
    src = _input(tmp_path)
    r = run_aimaster("run", "-n", "2", "--job-id", "scores", "--state-dir", str(tmp_path / "s"), "--quiet", "--",
                     sys.executable, os.path.join(REPO, "examples", "table_scores.py"), str(src),
                     str(tmp_path / "scores"), "--slice-size", "250", timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    table = pq.read_table(str(tmp_path / "scores"))
    assert table.column_names == ["id", "score"]
    assert table.schema.field("score").type == pa.float64()
    counts = collections.Counter(table.column("id").to_pylist())
    assert sorted(counts) == list(range(ROWS)) and set(counts.values()) == {1}
    sys.path.insert(0, os.path.join(REPO, "examples"))
    from table_scores import score

    scores = dict(zip(table.column("id").to_pylist(), table.column("score").to_pylist()))
    assert all(scores[i] == score(f"row {i}".encode()) for i in range(0, ROWS, 97))


def test_common_io_writer_names_parquet_columns(tmp_path):
    out = str(tmp_path / "named")
    with common_io.table.TableWriter(out, col_names=["key", "value"]) as w:
        w.write([(1, "a"), (2, "b")], col_indices=(0, 1))
    assert pq.read_table(out).column_names == ["key", "value"]
    # The names are recorded with the schema: a later writer naming them otherwise is refused.
    with pytest.raises(SchemaError, match="already has columns"):
        with common_io.table.TableWriter(out, col_names=["k", "v"]) as w:
            w.write([(3, "c")], col_indices=(0, 1))
    with common_io.table.TableWriter(out) as w:  # no names: the recorded ones
        w.write([(3, "c")], col_indices=(0, 1))
    assert pq.read_table(out).num_rows == 3


def test_col_names_mistakes_are_one_line(tmp_path):
    with pytest.raises(SchemaError, match="names 3 column"):
        with common_io.table.TableWriter(str(tmp_path / "o"), col_names=["a", "b", "c"]) as w:
            w.write([(1, 2)], col_indices=(0, 1))
    with pytest.raises(SchemaError, match="distinct"):
        common_io.table.TableWriter(str(tmp_path / "o2"), col_names=["a", "a"])
    with pytest.raises(ConfigError, match="has its own schema"):
        common_io.table.TableWriter("odps://prj/tables/scores", col_names=["a"])
