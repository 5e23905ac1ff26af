"""The LLM batch-inference example (examples/llm/): the model's decoding, its batching, and a real job.

The job runs ``batch_generate.py`` under ``aimaster run -n 2`` over a Parquet table of prompts (of
very different lengths, non-ASCII, empty and NULL ones among them) and checks the output table: one
row per prompt, none twice, none missing, each with its generated text.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from helpers import REPO, run_aimaster

torch = pytest.importorskip("torch")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

EXAMPLE_DIR = os.path.join(REPO, "examples", "llm")
sys.path.insert(0, EXAMPLE_DIR)
from tiny_lm import ByteTokenizer, generate, length_batches, load_model  # noqa: E402


def test_length_batches_cover_every_prompt_once_within_the_budget():
    lengths = [(i * 37) % 90 + 1 for i in range(200)] + [500]  # the last is longer than the budget
    batches = length_batches(lengths, max_batch_tokens=256, max_batch_size=16)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 16
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 256
    assert [500] == [lengths[i] for i in batches[-1]]  # a batch of its own
    assert len(batches[0]) == 16 and len(batches[-2]) < len(batches[0])  # short prompts in big batches
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest == sorted(longest)


def test_cached_decoding_matches_full_recomputation_and_batching_does_not_change_the_text():
    model, tok = load_model(), ByteTokenizer()
    prompts = ["a", "a much longer prompt, so the batch needs left padding", "", "naïve café — ünïcode"]
    cached = generate(model, tok, prompts, max_new_tokens=12)
    assert cached == generate(model, tok, prompts, max_new_tokens=12, use_cache=False)
    assert cached == [generate(model, tok, [p], max_new_tokens=12)[0] for p in prompts]
    sampled = generate(model, tok, prompts, max_new_tokens=12, temperature=1.0)
    assert sampled == [generate(model, tok, [p], max_new_tokens=12, temperature=1.0)[0] for p in prompts]
    assert all(isinstance(t, str) and len(t.encode()) <= 12 for t in sampled)


def _prompts(path, n):
    words = "tell me about elastic batch inference on many machines with etcd".split()
    prompts = [" ".join(words[: 1 + (i * 7) % 11]) * (1 + i % 4) for i in range(n)]
    prompts[3], prompts[5], prompts[8] = "", None, "größer ≠ kleiner, 東京"
    pq.write_table(pa.table({"id": pa.array(range(n), pa.int64()), "prompt": pa.array(prompts, pa.string())}),
                   str(path))
    return prompts


def test_llm_job_generates_once_for_every_prompt(tmp_path):
    n = 150
    inp, out = tmp_path / "prompts.parquet", tmp_path / "generations"
    _prompts(inp, n)
    r = run_aimaster("run", "-n", "2", "--job-id", "llm", "--state-dir", str(tmp_path / "state"), "--quiet", "--",
                     sys.executable, os.path.join(EXAMPLE_DIR, "batch_generate.py"), str(inp), str(out),
                     "--slice-size", "20", "--max-new-tokens", "8", "--max-batch-tokens", "256", timeout=240)
    assert r.returncode == 0, r.stderr
    from aimaster.io.tables import open_table_source

    with open_table_source(str(out)) as table:
        assert [c.name for c in table.schema] == ["id", "text", "new_tokens"]
        rows = [row for batch in table.read() for row in batch]
    ids = [row[0] for row in rows]
    assert len(ids) == len(set(ids)), "a prompt was generated for twice"
    assert sorted(ids) == list(range(n)), f"{n - len(set(ids))} prompts missing"
    assert all(isinstance(text, str) and new == len(text.encode()) <= 8 for _, text, new in rows)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("part-")) == [
        f"part-{i:06d}.parquet" for i in range(8)]  # one part per slice, nothing staged left over
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    report = json.loads((tmp_path / "state" / "jobs" / "llm" / "report.json").read_text())
    assert report["state"] == "Succeeded" and report["slices"]["committed"] == 8


def test_vllm_example_pins_each_worker_to_its_own_gpus(monkeypatch):
    """The GPU example is not run here (no GPUs, no vLLM), but its GPU pinning is: slot k of g GPUs per
    engine gets GPUs k*g..k*g+g-1, and a launcher's own CUDA_VISIBLE_DEVICES is left alone."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vllm_generate", os.path.join(EXAMPLE_DIR, "vllm_generate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports vllm only in main()
    # pin_gpus sets os.environ itself: set (then delete) through monkeypatch first, so that its undo
    # removes what pin_gpus set. (It leaked "6,7" into this process, and a Ray cluster started by a
    # later test took its GPU ids from it.)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "unset-by-this-test")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("AIMASTER_WORKER_SLOT", "3")
    module.pin_gpus(2)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6,7"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    module.pin_gpus(2)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
