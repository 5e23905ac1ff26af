"""The same image job under aimaster and under Ray Data, clean and with one worker 10x slow.

    python benchmarks/vs_ray.py                      # 20,000 images, 2 workers, 1 round
    python benchmarks/vs_ray.py --images 5000 --workers 4 --repeat 3
    python benchmarks/vs_ray.py --quick              # 300 images, 16-image slices: a smoke test (~2-3 min)
    python benchmarks/vs_ray.py --json out.json
    python benchmarks/vs_ray.py --warm-spares 1     # aimaster run --warm-spares 1, clean and slow runs

The job is the project's image example (examples/image_classification.py): generated 64x64 PNG
images, decoded and normalized as the example's ``preprocess`` does, classified by its small CNN
(random weights from a fixed seed), the top-5 classes of every image written out.

* **aimaster**: ``aimaster run -n W -- python vs_ray.py --aimaster-worker ...``: the example's loop
  (``create_torch_dataset(transform=preprocess)``, a ``DataLoader`` with ``num_workers=0`` so a worker
  is one core, ``dataset.track(loader)``, ``stream.output(slice_id)``), one output file per slice.
* **Ray Data** (``ray[data]==2.60.0``, the ``[ray]`` extra): ``read_images(include_paths=True) ->
  map_batches(actor pool of W one-CPU actors running the same normalization and model) ->
  write_parquet``, in a local ``ray.init(num_cpus=W + 1)``: Ray needs one logical CPU more than the
  actors take for its read tasks, or the job hangs.

Each job is a fresh process tree timed whole, from start to exit (interpreter, imports, etcd and the
master, or Ray's start-up, included), and its outputs are counted afterwards: every input exactly
once, or the benchmark fails. With ``--slow-factor`` (10) one worker is that many times slower: after
each batch it sleeps (factor - 1) times what the batch took it. The slow one is the first worker
process to start (it takes a token file); a replacement aimaster launches is a healthy process, as on
a degraded machine. For Ray the slow actor's own work is the normalization and the model (decoding
is Ray's read tasks'); for aimaster a worker's own work includes decoding.

With ``--warm-spares N`` every aimaster run (clean and slow alike) is ``aimaster run --warm-spares N``:
N more worker processes start once the workers have registered and wait, imported, at their first
aimaster call; the slow worker's replacement is one of them instead of a fresh process.

Rounds run clean and slow for both systems back to back, so a busy spell of a shared machine hits
both alike; figures are medians over ``--repeat`` rounds. Printed: wall times, aimaster / Ray (clean),
and each system's straggler ratio (slow run / clean run).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

HERE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(HERE))
EXAMPLES = os.path.join(REPO, "examples")
TARGET_CLEAN = 0.5  # aimaster wall time / Ray Data's, no slow worker
TARGET_STRAGGLER = 1.15  # slow run / clean run


# ---------------------------------------------------------------------------------------- inputs
def make_pngs(directory: str, n: int, seed: int = 0) -> List[str]:
    """``n`` 64x64 PNG pictures (a disc, a square or stripes on noise); returns their paths."""
    import numpy as np
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:64, 0:64]
    paths = []
    for i in range(n):
        image = rng.integers(0, 80, (64, 64, 3), dtype=np.uint8)
        cy, cx, r = rng.integers(16, 48), rng.integers(16, 48), rng.integers(6, 16)
        kind = i % 3
        if kind == 0:
            mask = (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
        elif kind == 1:
            mask = (abs(ys - cy) <= r) & (abs(xs - cx) <= r)
        else:
            mask = ((xs + ys * (i % 2)) // 4) % 2 == 0
        image[mask] = rng.integers(80, 256, 3, dtype=np.uint8)
        path = os.path.join(directory, f"d{i % 16:02d}", f"img_{i:06d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(image).save(path, compress_level=1)
        paths.append(path)
    return sorted(paths)


def _example():
    sys.path.insert(0, EXAMPLES)
    import image_classification

    return image_classification


def _takes_token(token_dir: str) -> bool:
    """True for the first process to ask (the slow worker of a run)."""
    if not token_dir:
        return False
    try:
        os.close(os.open(os.path.join(token_dir, "slow"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


class _Slowness:
    """Makes a worker ``factor`` times slower: after each step, sleep (factor - 1) x its time."""

    def __init__(self, factor: float, token_dir: str):
        self.factor = factor if factor > 1 and _takes_token(token_dir) else 1.0
        self.last = time.perf_counter()

    def step_done(self, started: Optional[float] = None) -> None:
        now = time.perf_counter()
        if self.factor > 1:
            time.sleep((self.factor - 1) * (now - (self.last if started is None else started)))
        self.last = time.perf_counter()


# ---------------------------------------------------------------------------------------- aimaster
def aimaster_worker(inp: str, out: str, slice_size: int, batch_size: int, factor: float, token_dir: str) -> None:
    """examples/image_classification.py's loop (num_workers=0), optionally slowed down."""
    import torch

    from aimaster import inference as elastic_inference

    ex = _example()
    torch.set_num_threads(1)
    slow = _Slowness(factor, token_dir)
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=inp, output_dir=out, slice_size=slice_size))
    dataset = client.create_torch_dataset(transform=ex.preprocess)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0)
    classifier = ex.ImageClassifier()
    stream = dataset.track(loader)
    for batch in stream:
        top5_prob, top5_catid = classifier.predict(batch["image"])
        for i, (slice_id, path) in enumerate(zip(batch["slice_id"], batch["path"])):
            f = stream.output(slice_id, suffix=".txt")
            top5 = ", ".join(f"{ex.CATEGORIES[c]}: {p:.4f}"
                             for p, c in zip(top5_prob[i].tolist(), top5_catid[i].tolist()))
            f.write(f"{path}\t{top5}\n")
        slow.step_done()  # the batch's decoding (in the DataLoader fetch) and inference


def aimaster_outputs(out: str) -> List[str]:
    paths = []
    for name in glob.glob(os.path.join(out, "*.txt")):
        with open(name) as f:
            paths += [line.split("\t", 1)[0] for line in f if line.strip()]
    return paths


# ---------------------------------------------------------------------------------------- Ray Data
def ray_job(inp: str, out: str, workers: int, batch_size: int, factor: float, token_dir: str) -> None:
    import numpy as np
    import ray
    import torch

    ex = _example()
    ray.init(num_cpus=workers + 1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)

    class Classify:
        def __init__(self):
            torch.set_num_threads(1)
            self.ex = _example()
            self.classifier = self.ex.ImageClassifier()
            self.slow = _Slowness(factor, token_dir)

        def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
            started = time.perf_counter()
            pixels = torch.from_numpy(np.ascontiguousarray(batch["image"])).permute(0, 3, 1, 2).float() / 255.0
            top5_prob, top5_catid = self.classifier.predict((pixels - self.ex.MEAN) / self.ex.STD)
            top5 = [", ".join(f"{self.ex.CATEGORIES[c]}: {p:.4f}" for p, c in zip(ps, cs))
                    for ps, cs in zip(top5_prob.tolist(), top5_catid.tolist())]
            self.slow.step_done(started)
            return {"path": batch["path"], "top5": np.array(top5)}

    del ex
    ds = ray.data.read_images(inp, mode="RGB", include_paths=True)
    ds.map_batches(Classify, concurrency=workers, num_cpus=1, batch_size=batch_size).write_parquet(out)
    ray.shutdown()


def ray_outputs(out: str) -> List[str]:
    import pyarrow.parquet as pq

    paths: List[str] = []
    for name in glob.glob(os.path.join(out, "*.parquet")):
        paths += pq.read_table(name, columns=["path"]).column("path").to_pylist()
    return paths


# ---------------------------------------------------------------------------------------- runs
def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIMASTER_", "RAY_"))}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (EXAMPLES, env.get("PYTHONPATH", "")) if p))
    return env


def run_job(system: str, work: str, name: str, inp: str, inputs: List[str], args, slow: bool) -> float:
    """One whole job as a fresh process tree; its wall seconds. Fails unless every input is output once."""
    out = os.path.join(work, name, "out")
    tokens = os.path.join(work, name, "tokens")
    os.makedirs(tokens)
    factor = str(args.slow_factor if slow else 1)
    if system == "aimaster":
        cmd = [sys.executable, "-m", "aimaster.cli", "run", "-n", str(args.workers), "--job-id", name,
               "--state-dir", os.path.join(work, name, "state"), "--quiet",
               *(["--warm-spares", str(args.warm_spares)] if args.warm_spares else []), "--",
               sys.executable, HERE, "--aimaster-worker", inp, out, str(args.slice_size), str(args.batch_size),
               factor, tokens]
    else:
        cmd = [sys.executable, HERE, "--ray-job", inp, out, str(args.workers), str(args.batch_size), factor, tokens]
    log = os.path.join(work, name, "log")
    t0 = time.monotonic()
    with open(log, "w") as f:
        p = subprocess.run(cmd, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        with open(log) as f:
            raise SystemExit(f"{name}: exited {p.returncode}:\n{f.read()[-4000:]}")
    got = aimaster_outputs(out) if system == "aimaster" else ray_outputs(out)
    if len(got) != len(inputs) or sorted(got) != inputs:
        raise SystemExit(f"{name}: {len(got)} outputs ({len(set(got))} distinct) for {len(inputs)} inputs")
    shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    return round(wall, 2)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="rounds (each: both systems, clean and slow)")
    ap.add_argument("--quick", action="store_true", help="300 images, 16-image slices, one round: a smoke test")
    ap.add_argument("--slow-factor", type=float, default=10.0)
    ap.add_argument("--slice-size", type=int, default=64, help="images per aimaster slice")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--warm-spares", type=int, default=0, help="aimaster run --warm-spares N (0: none)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds a job may take before the run fails")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--aimaster-worker", nargs=6, help=argparse.SUPPRESS)
    ap.add_argument("--ray-job", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.aimaster_worker:
        inp, out, size, batch, factor, tokens = args.aimaster_worker
        aimaster_worker(inp, out, int(size), int(batch), float(factor), tokens)
        return 0
    if args.ray_job:
        inp, out, workers, batch, factor, tokens = args.ray_job
        ray_job(inp, out, int(workers), int(batch), float(factor), tokens)
        return 0
    if args.quick:  # smaller defaults; what is given explicitly stays
        for name, value in (("images", 300), ("repeat", 1), ("slice_size", 16)):
            if getattr(args, name) == ap.get_default(name):
                setattr(args, name, value)
    if args.images <= 0 or args.workers <= 0 or args.repeat <= 0:
        ap.error("--images, --workers and --repeat must be positive")
    if args.warm_spares < 0:
        ap.error("--warm-spares must be 0 or more")
    try:
        import ray  # noqa: F401
        has_ray = True
    except ImportError:
        has_ray = False
        print("Ray is not installed (pip install 'aimaster[ray]'): measuring aimaster only", flush=True)
    work = tempfile.mkdtemp(prefix="aimaster-vs-ray-")
    try:
        print(f"generating {args.images:,} 64x64 PNG images ...", flush=True)
        inp = os.path.join(work, "images")
        inputs = make_pngs(inp, args.images)
        systems = ["aimaster", "ray"] if has_ray else ["aimaster"]
        walls: Dict[str, List[float]] = {f"{s}_{k}": [] for s in systems for k in ("clean", "slow")}
        for r in range(args.repeat):
            for kind in ("clean", "slow"):
                for system in systems:
                    name = f"{system}-{kind}-{r}"
                    wall = run_job(system, work, name, inp, inputs, args, kind == "slow")
                    print(f"  {name:<20} {wall:8.2f} s", flush=True)
                    walls[f"{system}_{kind}"].append(wall)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = summarize(walls, args, systems)
    print_report(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


def summarize(walls: Dict[str, List[float]], args, systems: List[str]) -> Dict[str, Any]:
    med = {k: statistics.median(v) for k, v in walls.items()}
    res: Dict[str, Any] = {"images": args.images, "workers": args.workers, "repeat": args.repeat,
                           "slow_factor": args.slow_factor, "slice_size": args.slice_size,
                           "batch_size": args.batch_size, "warm_spares": args.warm_spares,
                           "walls_s": walls, "median_s": med,
                           "loadavg_end": [round(x, 2) for x in os.getloadavg()], "ratios": {}}
    for s in systems:
        res["ratios"][f"{s}_straggler"] = round(med[f"{s}_slow"] / med[f"{s}_clean"], 3)
    if "ray" in systems:
        res["ratios"]["aimaster_over_ray_clean"] = round(med["aimaster_clean"] / med["ray_clean"], 3)
        res["ratios"]["aimaster_over_ray_slow"] = round(med["aimaster_slow"] / med["ray_slow"], 3)
    return res


def print_report(res: Dict[str, Any]) -> None:
    med, r = res["median_s"], res["ratios"]
    print(f"\n{res['images']:,} images, {res['workers']} workers, one {res['slow_factor']:g}x slow in the slow runs; "
          f"median of {res['repeat']} round(s); load average at the end {res['loadavg_end']}"
          + (f"; aimaster with --warm-spares {res['warm_spares']}" if res.get("warm_spares") else ""))
    for s in ("aimaster", "ray"):
        if f"{s}_clean" in med:
            print(f"  {s:<9} clean {med[f'{s}_clean']:8.2f} s   slow {med[f'{s}_slow']:8.2f} s   "
                  f"straggler ratio {r[f'{s}_straggler']:.3f}")
    if "aimaster_over_ray_clean" in r:
        ok = r["aimaster_over_ray_clean"] <= TARGET_CLEAN
        print(f"  aimaster / Ray Data, clean: {r['aimaster_over_ray_clean']:.3f} "
              f"({'OK' if ok else 'MISS'}: target <= {TARGET_CLEAN})")
        print(f"  aimaster / Ray Data, slow:  {r['aimaster_over_ray_slow']:.3f}")
        ok = r["aimaster_straggler"] <= TARGET_STRAGGLER and r["aimaster_straggler"] < r["ray_straggler"]
        print(f"  straggler ratio aimaster {r['aimaster_straggler']:.3f} vs Ray Data {r['ray_straggler']:.3f} "
              f"({'OK' if ok else 'MISS'}: target <= {TARGET_STRAGGLER} and below Ray Data's)")


if __name__ == "__main__":
    sys.exit(main())
