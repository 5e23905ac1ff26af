"""``aimaster demo``: a real job (embedded etcd, worker processes, a CNN on generated images) whose
closing line says what it showed; without torch, the text demo, saying why."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import clean_env, run_aimaster


def _outputs(workdir):
    out = os.path.join(workdir, "output")
    rows = []
    for name in sorted(os.listdir(out)):
        if name.endswith(".tsv"):
            with open(os.path.join(out, name)) as f:
                rows += [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return rows


def _report(workdir):
    jobs = os.path.join(workdir, "state", "jobs")
    [job] = os.listdir(jobs)
    with open(os.path.join(jobs, job, "report.json")) as f:
        return json.load(f)


def test_demo_classifies_generated_images_with_a_cnn(tmp_path):
    pytest.importorskip("torch")
    workdir = tmp_path / "demo"
    r = run_aimaster("demo", "-n", "2", "--files", "90", "--slice-size", "15", "--dir", str(workdir), timeout=240)
    assert r.returncode == 0, r.stderr
    text = r.stdout + r.stderr
    assert "torch is not installed" not in text
    assert "demo: 90 generated images in" in text
    assert "demo: a CNN classified all 90 images on 2 workers, each exactly once (90 output lines, 90 distinct)" \
        in text, text
    assert "images/s over" in text
    rows = _outputs(workdir)
    assert sorted(r[0] for r in rows) == [f"img_{i:06d}.ppm" for i in range(90)]
    assert all(label.startswith("class_") and 0.0 < float(p) <= 1.0 for _, label, p in rows)
    with open(workdir / "input" / "img_000000.ppm", "rb") as f:
        assert f.read(12) == b"P6\n64 64\n255"  # real image files
    report = _report(workdir)
    assert report["state"] == "Succeeded" and report["slices"]["committed"] == 6


def test_demo_without_torch_says_so_and_runs_the_text_demo(tmp_path):
    """torch made unimportable (``sys.modules["torch"] = None``: ``import torch`` raises ImportError)."""
    workdir = tmp_path / "demo"
    code = ("import sys; sys.modules['torch'] = None\n"
            "from aimaster.cli import main\n"
            f"main(['demo', '-n', '2', '--files', '40', '--slice-size', '10', '--dir', {str(workdir)!r}])\n")
    r = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    text = r.stdout + r.stderr
    assert "demo: torch is not installed (pip install torch), so no CNN: running the text demo instead" in text
    assert "demo: the workers labelled all 40 files on 2 workers, each exactly once" in text, text
    assert sorted(r[0] for r in _outputs(workdir)) == [f"doc_{i:06d}.txt" for i in range(40)]
    assert _report(workdir)["state"] == "Succeeded"
