"""The subprocess writer's asynchronous commits, with a real child process on a real etcd.

``get_next_slice()`` hands the finished slice to the writer child and returns at once; the slice is
committed only once the child reports its rows durable. These tests stop and kill the real child
(SIGSTOP, SIGKILL) to show both halves: the worker never waits on the child at a slice boundary,
and a slice whose rows were not staged is never committed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import clean_env, program

from aimaster.io.tables import create_warehouse_table, open_table_source

ROWS = 5000
SLICE = 1000


@pytest.fixture
def tables(tmp_path):
    src = tmp_path / "input.parquet"
    pq.write_table(pa.table({"id": pa.array(range(ROWS), pa.int64())}), src)
    return str(src), str(tmp_path / "output")


def run(job_env, mode, inp, out, check=True):
    proc = subprocess.run([sys.executable, program("table_async_commit.py"), mode, inp, out, str(SLICE)],
                          env=clean_env(job_env), capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    return json.loads(lines[-1])


def output_ids(out):
    with open_table_source(out) as source:
        return sorted(row[0] for batch in source.read() for row in batch)


def test_the_worker_goes_on_while_the_child_stages(job_env, tables):
    inp, out = tables
    report = run(job_env, "stopped", inp, out)
    # Three slices handed over to a stopped child: get_next_slice never waited for it, and nothing
    # was committed, because nothing was durable yet.
    assert len(report["handed"]) == 3
    assert report["done_while_stopped"] == []
    assert len(report["done_at_end"]) == report["slices"] == ROWS // SLICE
    ids = output_ids(out)
    assert len(ids) == len(set(ids)) == (ROWS // SLICE) * 100  # 100 rows written per slice, each once


def test_a_killed_child_leaves_its_slices_uncommitted_and_they_are_redone(job_env, tables):
    inp, out = tables
    report = run(job_env, "killed", inp, out)
    assert "SIGKILL" in report["error"]
    for sid in report["in_flight"]:
        assert sid in report["error"]  # the error names the slices whose rows were lost
    assert report["done_after_error"] == []
    assert report["published"] == []  # nothing of the unstaged slices became visible
    # Another worker of the same job redoes them: every row exactly once.
    final = run(job_env, "full", inp, out)
    assert len(final["done_at_out_of_range"]) == final["slices"]
    assert output_ids(out) == list(range(ROWS))


def test_a_row_error_found_by_the_child_fails_its_slice(job_env, tables, warehouse):
    inp, _ = tables
    out = create_warehouse_table("odps://prj/tables/out", "id:BIGINT,y:DOUBLE")  # typed columns
    job_env = dict(job_env, AIMASTER_ODPS_WAREHOUSE=str(warehouse))
    report = run(job_env, "bad-row", inp, out)
    assert "BIGINT" in report["error"]
    assert report["bad_slice"] not in report["done_after_error"]
    final = run(job_env, "full", inp, out)  # the slice goes back to the pool and is redone
    assert output_ids(out) == list(range(ROWS))
    assert len(final["done_at_out_of_range"]) == final["slices"]


def test_out_of_range_comes_after_every_slice_in_flight_is_committed(job_env, tables):
    inp, out = tables
    report = run(job_env, "full", inp, out)
    assert len(report["done_at_out_of_range"]) == report["slices"]
    assert output_ids(out) == list(range(ROWS))


def test_an_exception_in_a_writer_block_commits_complete_slices(job_env, tables):
    inp, out = tables
    report = run(job_env, "body-error", inp, out)
    assert report["error"] == "the model failed"  # the body's exception is the one that propagates
    assert report["done_after_error"] == report["in_flight"]


def test_an_exception_after_the_child_died_gives_its_slices_back(job_env, tables):
    inp, out = tables
    report = run(job_env, "body-error-killed", inp, out)
    assert report["error"] == "the model failed"
    assert report["done_after_error"] == []
    # Slice 0 is back in the pool now; only slice 1 (the current one, not handed over) is still held.
    assert report["counts"]["running"] == 1
    assert report["counts"]["todo"] == report["counts"]["total"] - 1
    final = run(job_env, "full", inp, out)
    assert len(final["done_at_out_of_range"]) == final["slices"]
    assert output_ids(out) == list(range(ROWS))
