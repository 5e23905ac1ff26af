"""An attempt that loses to the end of the job: it stages after the job's finalize cleaned up.

One run in five of a warehouse job used to record a worker failure ("cannot stage
.../.aimaster-staging/000005~1.csv: No such file or directory"): a speculative copy still writing
when the finalize removed the staging area. Such an attempt has simply lost; its commit must say so
(False), quietly, on every backend and with either writer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import clean_env, program

from aimaster.errors import TableIOError
from aimaster.io.tables import open_table_sink

SLICE = 500


def _start_late(tables, job_env, buffer_size):
    env = clean_env(dict(tables.env, **job_env))
    return subprocess.Popen([sys.executable, program("table_late_stage.py"), tables.input, tables.output,
                             str(SLICE), str(buffer_size)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("buffer_size", [0, 1000])
@pytest.mark.parametrize("backend", ["warehouse", "parquet", "odps"])
def test_a_copy_that_stages_after_the_finalize_loses_quietly(job_env, job_tables, backend, buffer_size):
    tables = job_tables(backend, SLICE)  # one slice
    late = _start_late(tables, job_env, buffer_size)
    try:
        assert late.stdout.readline().startswith("claimed 000000"), late.stderr.read()
        # Another worker copies the slice at once, commits it, finalizes the job and exits.
        copier = subprocess.run(
            [sys.executable, program("table_worker.py"), tables.input, tables.output, str(SLICE)],
            env=clean_env(dict(tables.env, **job_env, AIMASTER_SPECULATION_MULTIPLIER="0",
                               AIMASTER_MAX_SLICE_COPIES="1")), capture_output=True, text=True, timeout=60)
        assert copier.returncode == 0, copier.stderr
        out, err = late.communicate(timeout=60)
    finally:
        if late.poll() is None:
            late.kill()
    assert late.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"committed": False, "finalized": True}, err
    assert "error" not in err.lower(), err
    tables.assert_exactly_once()
    assert tables.staging_left() == []


@pytest.mark.parametrize("backend", ["warehouse", "parquet"])
def test_staging_after_cleanup_raises_stage_lost(tmp_path, backend, warehouse):
    """The root: a stage whose temporary file the cleanup removed is lost, not an I/O error; a stage
    begun after the cleanup removed the staging directory still works."""
    if backend == "warehouse":
        from aimaster.io.tables import create_warehouse_table

        url = create_warehouse_table("odps://prj/tables/o", "id:BIGINT")
        sink = open_table_sink(url)
    else:
        sink = open_table_sink(str(tmp_path / "out"), schema="id:BIGINT", row_group_rows=1)
    winner = sink.stage("000001", "0.w0", [(1,)])
    sink.publish("000001", winner)
    loser = sink.open_stage("000001", "2.w1")
    loser.write([(1,)])  # a row group of one: the Parquet stage's file exists now
    sink.finalize([("000001", winner)])  # removes the loser's temporary file and the staging directory
    assert not os.path.isdir(sink.staging.staging)
    with pytest.raises(TableIOError, match="000001") as lost:
        loser.commit()
    assert type(lost.value).__name__ == "StageLost", lost.value  # not a plain I/O error
    late = sink.stage("000002", "0.w1", [(2,)])  # the directory is created again
    sink.discard(late)
    assert not os.path.isdir(sink.staging.staging), "an emptied staging area is removed"
