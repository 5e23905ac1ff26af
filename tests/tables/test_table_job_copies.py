"""Speculative copies of table slices under `aimaster run`, on every backend: every row once.

Two slices' first attempts are slow (tests/programs/table_worker.py, SLOW_SLICE): idle workers copy the
older one at once (--speculation-multiplier 0), several copies run side by side (--max-slice-copies 2
or 3; each copy waits until all of them have started, so that workers that started late cannot make
them run one after the other), one copy wins and the others lose -- while the other slow slice keeps
the job open, so the losers discard their output before the job ends -- then the same for the other
slice. There are enough idle workers to give both slow slices all their copies at once: two idle
workers racing to copy the same slice can end up one on each (the loser of the race copies the next
slice), and with one copy per slice no copy could lose (CI saw won 2, lost 0). The slow primaries are
still running when the last copy commits: the master stops them as moot, and finalizes the output only
once every worker has exited, so no late loser can stage into a sealed upload session or a cleaned-up
staging area. Each attempt and copy must stage under a name (a block) of its own: with shared names a
loser's discard emptied the winner's block and the MaxCompute output lost the slice.
"""

from __future__ import annotations

import pytest
from jobs import failed_exits, report, run_job

SLICE = 1000
ROWS = 8 * SLICE


@pytest.mark.parametrize("copies", [2, 3])
@pytest.mark.parametrize("backend", ["odps", "warehouse", "parquet"])
def test_copies_of_a_slow_slice_commit_every_row_once(tmp_path, job_tables, backend, copies):
    tables = job_tables(backend, ROWS)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {"SLOW_SLICE": "000002,000005", "SLOW_MARK": str(marks), "READ_BATCH": "250", "BATCH_SLEEP": "0.02",
           "COPIES": str(copies), "BUFFER_SIZE": "2048" if copies == 3 else "0"}
    r = run_job(tmp_path / "state", "copies", tables, SLICE, "--max-slice-copies", str(copies),
                "--speculation-multiplier", "0", env=env, workers=2 * copies + 2)
    assert r.returncode == 0, r.stderr
    tables.assert_exactly_once()
    rep = report(tmp_path / "state", "copies")
    assert failed_exits(rep) == [], "a losing attempt was reported as a failure"
    spec = rep["speculation"]
    assert spec["copies_started"] >= copies, spec
    assert spec["won"] >= 1 and spec["lost"] >= 1, spec  # copies both won and lost
    assert spec["primaries_beaten"] >= 1, spec
    assert tables.staging_left() == []
