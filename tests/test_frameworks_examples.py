"""The examples, run as users run them (`aimaster run -n 2 -- python examples/X.py` and standalone)
on small generated data, each output checked for exactly-once; the TensorFlow graph and eager
examples must agree with the PyTorch one row for row."""

from __future__ import annotations

import collections
import glob
import os
import random
import subprocess
import sys

import pytest
from helpers import REPO, clean_env, make_files, program, read_outputs, run_aimaster

EXAMPLES = os.path.join(REPO, "examples")


def example(name: str) -> str:
    return os.path.join(EXAMPLES, name)


def _run(tmp_path, job_id, script, *args, workers=2, env=None):
    r = run_aimaster("run", "-n", str(workers), "--job-id", job_id, "--state-dir", str(tmp_path / "state"),
                     "--quiet", "--", sys.executable, example(script), *args, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _standalone(script, *args, env=None):
    r = subprocess.run([sys.executable, example(script), *args], env=clean_env(env), capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _exactly_once(keys, expected):
    counts = collections.Counter(keys)
    assert [k for k, n in counts.items() if n > 1] == [], "duplicated outputs"
    assert sorted(counts) == sorted(expected)


def test_posix_simple_example_distributed_and_standalone(tmp_path):
    inp = tmp_path / "in"
    names = make_files(str(inp), 57)
    _run(tmp_path, "simple", "posix_simple.py", str(inp), str(tmp_path / "a"), "5")
    _standalone("posix_simple.py", str(inp), str(tmp_path / "b"), "5")
    for out in ("a", "b"):
        lines = read_outputs(str(tmp_path / out))
        _exactly_once([line.split("\t")[0] for line in lines], [str(inp / n) for n in names])
    assert sorted(os.listdir(tmp_path / "a")) == sorted(os.listdir(tmp_path / "b"))


def _make_images(directory, n: int):
    from PIL import Image

    rng = random.Random(7)
    paths = []
    for i in range(n):
        rel = f"{'night/' if i % 4 == 0 else ''}img{i:03d}.{'jpg' if i % 3 else 'png'}"
        image = Image.new("RGB", (rng.randint(48, 96), rng.randint(48, 96)),
                          tuple(rng.randrange(256) for _ in range(3)))
        for _ in range(64):
            image.putpixel((rng.randrange(image.width), rng.randrange(image.height)),
                           tuple(rng.randrange(256) for _ in range(3)))
        path = os.path.join(directory, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.convert("L" if i % 5 == 0 else "RGB").save(path)  # some grayscale, as real data has
        paths.append(path)
    broken = os.path.join(directory, "broken.png")
    with open(broken, "w") as f:
        f.write("not an image")
    return sorted(paths + [broken])


def _classifications(output_dir, expected):
    """{image path: classes in top-5 order, or 'invalid'} from every published slice file, each of
    the ``expected`` paths exactly once."""
    result = {}
    lines = read_outputs(str(output_dir))
    paths = [line.split("\t")[0] for line in lines]
    _exactly_once(paths, expected)
    for line in lines:
        path, top5 = line.split("\t")
        result[path] = top5 if top5 == "invalid" else [part.split(":")[0] for part in top5.split(", ")]
    return result


def test_image_classification_example(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("PIL")
    inp = tmp_path / "images"
    paths = _make_images(str(inp), 29)
    _run(tmp_path, "images", "image_classification.py", str(inp), str(tmp_path / "a"), "--slice-size", "4",
         "--batch-size", "3", "--num-workers", "2")
    _standalone("image_classification.py", str(inp), str(tmp_path / "b"), "--slice-size", "4", "--num-workers", "0")
    a, b = _classifications(tmp_path / "a", paths), _classifications(tmp_path / "b", paths)
    assert a[str(inp / "broken.png")] == "invalid"
    assert all(len(v) == 5 for k, v in a.items() if not k.endswith("broken.png"))
    assert a == b  # same model, same images: distribution changes nothing
    assert sorted(os.listdir(tmp_path / "a")) == [f"{i:06d}.txt" for i in range(8)]


def _table_outputs(warehouse, table, expected_ids):
    """{id: y} of a warehouse output table, each of ``expected_ids`` exactly once."""
    rows = []
    for path in glob.glob(os.path.join(warehouse, "p", "__tables__", table, "*.csv")):
        with open(path) as f:
            rows += [line.strip().split(",") for line in f if line.strip()]
    ids = [int(r[0]) for r in rows]
    _exactly_once(ids, expected_ids)
    return {int(r[0]): float(r[1]) for r in rows}


def test_table_examples_torch_tf_graph_tf_eager_agree(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    from aimaster.io.tables import create_warehouse_table

    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    env = {"AIMASTER_ODPS_WAREHOUSE": str(warehouse), "TF_CPP_MIN_LOG_LEVEL": "2"}
    src = "odps://p/tables/features"
    inputs = [(i, None if i % 13 == 0 else (i * 0.37) % 17.5 - 4.25) for i in range(1100)]
    create_warehouse_table(src, "id:BIGINT,x:DOUBLE", inputs, warehouse=str(warehouse))
    for name in ("torch_out", "graph_out", "eager_out"):
        create_warehouse_table(f"odps://p/tables/{name}", "id:BIGINT,y:DOUBLE", [], warehouse=str(warehouse))
    _run(tmp_path, "torch", "maxcompute_torch.py", src, "odps://p/tables/torch_out", "--slice-size", "100",
         "--num-workers", "2", env=env)
    _standalone("maxcompute_tf_session.py", src, "odps://p/tables/graph_out", "--slice-size", "100", env=env)
    # Two eager pipelines claiming lazily side by side.
    _run(tmp_path, "eager", "maxcompute_tf2_eager.py", src, "odps://p/tables/eager_out", "--slice-size", "100",
         env=env)
    expected = {i: (0.0 if x is None else x) * 2.0 + 1.0 for i, x in inputs}
    ids = [i for i, _ in inputs]
    torch_out = _table_outputs(str(warehouse), "torch_out", ids)
    assert torch_out == expected
    assert _table_outputs(str(warehouse), "graph_out", ids) == torch_out
    assert _table_outputs(str(warehouse), "eager_out", ids) == torch_out


def test_tf_eager_file_pipeline_with_shuffle(tmp_path):
    """PosixFileClient.create_tf_dataset: slices claimed as tf.data pulls paths; shuffled batches
    mixing slices are attributed item by item, each file exactly once in its own slice's output."""
    pytest.importorskip("tensorflow")
    inp, out = tmp_path / "in", tmp_path / "out"
    names = make_files(str(inp), 41)
    r = subprocess.run([sys.executable, program("tf_file_slices.py"), str(inp), str(out), "4"],
                       env=clean_env({"TF_CPP_MIN_LOG_LEVEL": "2"}), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "committed=11 lost=0" in r.stdout
    lines = read_outputs(str(out))
    _exactly_once([line.split("\t")[0] for line in lines], names)
    for index in range(11):
        with open(out / f"{index:06d}.txt") as f:
            got = sorted(line.split("\t")[0] for line in f)
        assert got == names[index * 4:(index + 1) * 4]
