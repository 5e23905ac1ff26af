"""End-to-end overhead of aimaster on a CPU-bound PyTorch inference job, and 2-worker scaling.

    python benchmarks/overhead.py [--images 3000] [--slice-size 128] [--repeats 3] [--json out.json]
    python benchmarks/overhead.py --quick         # 300 images, one repeat: a smoke test

The job: a small CNN (random weights) classifies generated 64x64 PNG images; the top-5 of each image
is written to one output file per group of ``--slice-size`` images. It runs as

  (a) ``plain``: a hand-written loop over a plain ``DataLoader`` (map-style dataset of the paths),
      one process, no aimaster;
  (b) ``aimaster run -n 1``: the same loop through ``PosixFileClient.create_torch_dataset`` and
      ``dataset.track(loader)`` (claims, adoption, atomic per-slice outputs, commits in etcd);
  (b') the same worker program started alone (``python overhead.py``: standalone mode, embedded
      etcd, no master), which separates the per-slice cost from the control plane's fixed cost;
  (c) ``aimaster run -n 2``: two such workers.

Every process uses ``torch.set_num_threads(1)`` and ``num_workers=0`` (decoding in the consumer), so
one worker is one core and (c) on a 2-core machine is a fair scaling test. (a) and (b) alternate,
``--repeats`` times; the figures are medians. Wall times are measured around the whole process
(interpreter start, torch import, etcd start and the master included); "loop" is the time the
program itself reports for its inference loop, from asking for the first batch to the last commit
(for a worker of a 2-worker job: the later of the two) ("loop_cpu": that loop's
process CPU time, reader threads included); "cpu" is the CPU time of
the whole process tree (master and etcd included), which a busy machine disturbs far less than wall
time.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)


# ---------------------------------------------------------------------------------------- the job
def _model_and_preprocess():
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(0)

    class CNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 32, 3, padding=1)
            self.c2 = torch.nn.Conv2d(32, 64, 3, padding=1)
            self.c3 = torch.nn.Conv2d(64, 128, 3, padding=1)
            self.fc = torch.nn.Linear(128, 100)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.c1(x)), 2)
            x = F.max_pool2d(F.relu(self.c2(x)), 2)
            x = F.relu(self.c3(x))
            return self.fc(x.mean(dim=(2, 3)))

    model = CNN().eval()

    def predict(images):
        with torch.no_grad():
            return torch.topk(F.softmax(model(images), dim=1), 5, dim=1)

    return predict


def load_image(path: str):
    import torch
    from PIL import Image

    with Image.open(path) as image:
        pixels = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
    return pixels.view(64, 64, 3).permute(2, 0, 1).float().div_(255.0)


class PathDataset:
    """(a)'s plain map-style dataset."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return {"path": self.paths[i], "image": load_image(self.paths[i])}


def _line(path, probs, cats) -> str:
    return path + "\t" + ", ".join(f"{c}:{p:.4f}" for p, c in zip(probs.tolist(), cats.tolist())) + "\n"


def run_plain(data: str, out: str, slice_size: int, batch_size: int) -> None:
    import torch

    predict = _model_and_preprocess()
    paths = sorted(os.path.join(data, n) for n in os.listdir(data))
    os.makedirs(out, exist_ok=True)
    loader = torch.utils.data.DataLoader(PathDataset(paths), batch_size=batch_size, num_workers=0)
    start, cpu = time.perf_counter(), time.process_time()
    done, files = 0, {}
    for batch in loader:
        probs, cats = predict(batch["image"])
        for i, path in enumerate(batch["path"]):
            group = done // slice_size
            if group not in files:
                files[group] = open(os.path.join(out, f"{group:06d}.txt"), "w")
            files[group].write(_line(path, probs[i], cats[i]))
            done += 1
    for f in files.values():
        f.close()
    _report(out, {"loop": time.perf_counter() - start, "loop_cpu": time.process_time() - cpu, "images": done})


def run_worker(data: str, out: str, slice_size: int, batch_size: int) -> None:
    import torch

    from aimaster import inference as elastic_inference

    predict = _model_and_preprocess()
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(data, out, slice_size))
    dataset = client.create_torch_dataset(transform=load_image)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0)
    stream = dataset.track(loader)
    start, cpu, done = time.perf_counter(), time.process_time(), 0
    for batch in stream:
        probs, cats = predict(batch["data"])
        for i, (sid, path) in enumerate(zip(batch["slice_id"], batch["path"])):
            stream.output(sid, suffix=".txt").write(_line(path, probs[i], cats[i]))
            done += 1
    _report(out, {"loop": time.perf_counter() - start, "loop_cpu": time.process_time() - cpu, "images": done,
                  "slices": stream.committed})


def _report(out: str, figures: dict) -> None:
    # Next to the outputs, not on stdout: `aimaster run` keeps worker output in its state directory.
    with open(os.path.join(os.path.dirname(out), f"timing-{os.path.basename(out)}-{os.getpid()}.json"), "w") as f:
        json.dump(figures, f)


# ---------------------------------------------------------------------------------------- driver
def make_images(directory: str, n: int) -> None:
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    rng = random.Random(0)
    for i in range(n):
        image = Image.effect_noise((64, 64), 40 + i % 50).convert("RGB")
        image.paste(tuple(rng.randrange(256) for _ in range(3)), (0, 0, rng.randrange(8, 64), rng.randrange(8, 64)))
        image.save(os.path.join(directory, f"img{i:06d}.png"))


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd, env, out: str) -> tuple:
    start, cpu = time.perf_counter(), _cpu_of_children()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _cpu_of_children() - cpu
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    pattern = os.path.join(os.path.dirname(out), f"timing-{os.path.basename(out)}-*.json")
    loops = [json.load(open(path)) for path in glob.glob(pattern)]
    return wall, loops, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--slice-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="300 images in 32-image slices, one repeat: a smoke test")
    parser.add_argument("--json", metavar="PATH", help="also write the report to PATH")
    parser.add_argument("--mode", choices=["plain", "worker"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "plain":
        return run_plain(args.data, args.out, args.slice_size, args.batch_size)
    if args.mode == "worker":
        return run_worker(args.data, args.out, args.slice_size, args.batch_size)
    if args.quick:  # smaller defaults; what is given explicitly stays
        for name, value in (("images", 300), ("repeats", 1), ("slice_size", 32)):
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMASTER_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="aimaster-overhead-") as tmp:
        data = os.path.join(tmp, "images")
        make_images(data, args.images)
        common = ["--data", data, "--slice-size", str(args.slice_size), "--batch-size", str(args.batch_size)]

        def job(kind: str, run: int, workers: int = 1):
            out = os.path.join(tmp, f"out-{kind}-{run}")
            if kind == "plain":
                return _timed([sys.executable, HERE, "--mode", "plain", "--out", out, *common], env, out)
            if kind == "standalone":
                return _timed([sys.executable, HERE, "--mode", "worker", "--out", out, *common], env, out)
            return _timed([sys.executable, "-m", "aimaster.cli", "run", "-n", str(workers), "--job-id", f"{kind}{run}",
                           "--state-dir", os.path.join(tmp, "state"), "--quiet", "--", sys.executable, HERE,
                           "--mode", "worker", "--out", out, *common], env, out)

        job("plain", -1)  # warm the page cache and the interpreter's imports
        results = {"plain": [], "standalone": [], "aimaster1": [], "aimaster2": []}
        for run in range(args.repeats):
            results["plain"].append(job("plain", run))
            results["standalone"].append(job("standalone", run))
            results["aimaster1"].append(job("aimaster1", run))
            results["aimaster2"].append(job("aimaster2", run, workers=2))

    def med(kind, what):
        if what == "wall":
            return statistics.median(w for w, _, _ in results[kind])
        if what == "cpu":
            return statistics.median(c for _, _, c in results[kind])
        return statistics.median(max(x[what] for x in loops) for _, loops, _ in results[kind])

    per_image = med("plain", "loop") / args.images
    report = {"images": args.images, "slice_size": args.slice_size, "batch_size": args.batch_size,
              "repeats": args.repeats, "cpus": os.cpu_count(),
              "work_per_slice_s": round(per_image * args.slice_size, 3)}
    for kind in results:
        for what in ("wall", "cpu", "loop", "loop_cpu"):
            report[f"{kind}_{what}_s"] = round(med(kind, what), 2)
    for kind in ("standalone", "aimaster1"):
        for what in ("wall", "cpu", "loop", "loop_cpu"):
            report[f"ratio_{kind}_{what}"] = round(report[f"{kind}_{what}_s"] / report[f"plain_{what}_s"], 3)
    for what in ("wall", "loop"):
        one, two = report[f"aimaster1_{what}_s"], report[f"aimaster2_{what}_s"]
        report[f"scaling_efficiency_{what}"] = round(one / (2 * two), 3)
    report["runs_wall_loop_s"] = {kind: [[round(w, 2), round(max(x["loop"] for x in loops), 2)] for w, loops, _ in runs]
                                  for kind, runs in results.items()}
    report["load_average"] = [round(x, 1) for x in os.getloadavg()]
    report["code"] = code_version()
    report["command"] = " ".join(["python", "benchmarks/overhead.py", *sys.argv[1:]])
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def code_version() -> dict:
    """The commit measured, and whether src/ or benchmarks/ differed from it: a figure is only
    reproducible from a commit when both are False."""
    root = os.path.dirname(os.path.dirname(HERE))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "benchmarks"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": head or None, "modified": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "modified": None}


if __name__ == "__main__":
    main()
