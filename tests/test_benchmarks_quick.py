"""Every benchmark's ``--quick`` mode runs end to end and validates what it measured.

Each benchmark checks its own outputs (every input committed exactly once, the rows counted in the
output table, the slices counted in etcd) and fails otherwise; its JSON report is written only after
all of that. So these tests fail on a wrong count or a crash, never on a missed target: figures on a
shared 2-core CI runner are not the point here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, clean_env

pytestmark = pytest.mark.slow  # each is a real job or several (30 s to a few minutes on 2 cores)


def _run(tmp_path, script: str, *args: str, timeout: float = 900) -> dict:
    out = tmp_path / "result.json"
    r = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", script), *args, "--json", str(out)],
                       env=clean_env(), capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path))
    assert out.exists(), f"{script} wrote no report (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(out.read_text())


def test_coordination_quick(tmp_path):
    res = _run(tmp_path, "coordination.py", "--quick", "--plan-files", "2000", "--no-meta-file", "--rounds", "2")
    for row in res["coordination"]:
        # One transaction per slice (the commit claims the next), give or take lost races.
        assert row["files"]["txns_per_slice"] < 1.8, row["files"]  # two per slice before
        assert row["aimaster"]["ops"] == row["files"]["ops"] == res["params"]["slices"]
    # Two rounds per client count, the phases in alternating order; the targets judge the medians.
    assert [(row["clients"], row["round"], row["order"]) for row in res["coordination"]] == [
        (1, 1, ["table", "files"]), (8, 1, ["table", "files"]), (1, 2, ["files", "table"]), (8, 2, ["files", "table"])]
    for med in res["medians"]:
        mine = [row for row in res["coordination"] if row["clients"] == med["clients"]]
        assert med["ratios"] == [row["ratio"] for row in mine] and med["ratio"] == sum(med["ratios"]) / 2
        assert med["files_ratios"] == [row["files_ratio"] for row in mine]
    assert any(f"(median of {res['medians'][0]['ratios'][0]:.1%}" in line for line in res["verdicts"]), res["verdicts"]


def test_txn_shape_quick(tmp_path):
    # The script refuses to run when its replica of the commit's transaction differs from the one a
    # real Dataset.commit sends, and fails when any transaction's comparisons fail.
    res = _run(tmp_path, "txn_shape.py", "--quick")
    assert [row["clients"] for row in res["rows"]] == [1, 4]
    for row in res["rows"]:
        assert row["commit"]["txns"] == row["raw"]["txns"] == 400 and row["ratio"] > 0


def test_scale_quick(tmp_path):
    res = _run(tmp_path, "scale.py", "--quick")
    summary = res["summary"]
    assert summary["per_planned_slice"]["keys"] == 1.0  # one todo key per free slice
    assert summary["per_committed_slice"]["keys"] == 1.0  # a committed slice leaves its commit record only
    assert summary["per_worker"]["keys"] == 3.0
    assert res["keepalives"]["refreshes"] >= 2  # an idle session keeps its lease alive
    assert [r["free_slices"] for r in res["reads"]] == [2000, 10000]


def test_tables_quick(tmp_path):
    res = _run(tmp_path, "tables.py", "--quick", "--rows", "20000", "--slice-size", "8192")
    assert set(res["upload_rows_per_s"]) == {"records", "arrow"}
    assert res["read_ratio"] > 0


def test_long_tail_quick(tmp_path):
    res = _run(tmp_path, "long_tail.py", "--quick", "--files", "200")
    assert {"aimaster_slow", "aimaster_hung"} <= set(res["ratios"])


def test_overhead_quick(tmp_path):
    pytest.importorskip("torch")
    res = _run(tmp_path, "overhead.py", "--quick", "--images", "160")
    assert res["images"] == 160 and res["ratio_aimaster1_loop"] > 0


def test_vs_ray_quick(tmp_path):
    pytest.importorskip("torch")
    res = _run(tmp_path, "vs_ray.py", "--quick", "--images", "120")
    assert res["images"] == 120 and "aimaster_straggler" in res["ratios"]
    if importlib.util.find_spec("ray") is not None:
        assert {"ray_straggler", "aimaster_over_ray_clean"} <= set(res["ratios"])
