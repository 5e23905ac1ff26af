"""The same small job under the ``local`` and ``ray`` launchers: wall time and start-up cost of each.

    python benchmarks/launchers.py                  # 400 files, 4 workers, 3 rounds
    python benchmarks/launchers.py --quick          # 100 files, 2 workers, 1 round: a smoke test
    python benchmarks/launchers.py --json out.json

The job: ``aimaster run -n W --launcher L -- python launchers.py --worker ...`` over generated text
files, ``--file-ms`` of simulated inference per file (a sleep: the launcher's cost is what is
measured, not the machine's CPU), 10-file slices, one output file per slice. For ``ray`` a local
two-node Ray cluster (``ray.cluster_utils.Cluster``: a head and one added node, W CPUs each) is
started once before the rounds; its start-up is reported on its own, as users start a cluster once
and run many jobs on it. Each job is a fresh ``aimaster run`` timed whole (interpreter, imports,
embedded etcd, the master, connecting to Ray and placing its actors included).

Reported per launcher (medians over ``--repeat`` rounds): ``wall_s`` (the whole job), ``first_worker_s``
and ``all_workers_s`` (from ``aimaster run`` starting to the first / last worker process running the
user's code: the start-up cost), and ``overhead_s`` (wall time minus the ideal ``files x file_ms / W``).
Every input must be in exactly one output, or the benchmark fails.
"""

from __future__ import annotations

import argparse
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


def worker(args: argparse.Namespace) -> None:
    """One worker: note when the user's code began, then the file loop of an ElasticBatch program."""
    import aimaster
    from aimaster import inference as elastic_inference

    wid = os.environ.get("AIMASTER_WORKER_ID", str(os.getpid()))
    with open(os.path.join(args.starts, wid), "w") as f:
        f.write(repr(time.time()))
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=args.input, output_dir=args.output, slice_size=10))
    while True:
        try:
            paths = client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            break
        with client.open_slice_output(suffix=".txt") as out:
            for path in paths:
                time.sleep(args.file_ms / 1000.0)
                out.write(os.path.relpath(path, args.input) + "\n")
        client.commit_slice()


def make_inputs(directory: str, n: int) -> List[str]:
    os.makedirs(directory)
    names = [f"f{i:05d}.txt" for i in range(n)]
    for name in names:
        with open(os.path.join(directory, name), "w") as f:
            f.write(name + "\n")
    return names


def check_once(output: str, names: List[str]) -> None:
    lines: List[str] = []
    for name in os.listdir(output):
        if name.endswith(".txt"):
            with open(os.path.join(output, name)) as f:
                lines += [x.strip() for x in f if x.strip()]
    if sorted(lines) != sorted(names):
        raise SystemExit(f"outputs are not every input exactly once: {len(lines)} lines for {len(names)} inputs")


def one_job(launcher: str, args: argparse.Namespace, names: List[str], work: str,
            ray_address: Optional[str]) -> Dict[str, float]:
    run_dir = tempfile.mkdtemp(dir=work)
    out, starts, state = (os.path.join(run_dir, d) for d in ("out", "starts", "state"))
    os.makedirs(starts)
    cmd = [sys.executable, "-m", "aimaster.cli", "run", "-n", str(args.workers), "--launcher", launcher,
           "--state-dir", state, "--quiet"]
    if ray_address:
        cmd += ["--ray-address", ray_address]
    cmd += ["--", sys.executable, HERE, "--worker", "--input", args.input, "--output", out, "--starts", starts,
            "--file-ms", str(args.file_ms)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMASTER_")}
    t0 = time.time()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    wall = time.time() - t0
    if r.returncode != 0:
        raise SystemExit(f"{launcher} job failed ({r.returncode}):\n{r.stderr[-3000:]}")
    check_once(out, names)
    began = sorted(float(open(os.path.join(starts, n)).read()) for n in os.listdir(starts))
    ideal = len(names) * args.file_ms / 1000.0 / args.workers
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"wall_s": wall, "first_worker_s": began[0] - t0, "all_workers_s": began[-1] - t0,
            "overhead_s": wall - ideal}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=400)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--file-ms", type=float, default=20.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="100 files, 2 workers, 1 round")
    p.add_argument("--json", metavar="PATH", help="also write the figures here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--starts", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.quick:
        args.files, args.workers, args.repeat = 100, 2, 1
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        raise SystemExit("benchmarks/launchers.py needs Ray: pip install 'aimaster[ray]'") from None
    work = tempfile.mkdtemp(prefix="aimaster-launchers-")
    cluster = None
    try:
        args.input = os.path.join(work, "in")
        names = make_inputs(args.input, args.files)
        t0 = time.time()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.workers})
        cluster.add_node(num_cpus=args.workers)
        cluster.wait_for_nodes()
        cluster_s = time.time() - t0
        rounds: Dict[str, List[Dict[str, float]]] = {"local": [], "ray": []}
        for _ in range(args.repeat):  # back to back, so a busy spell of the machine hits both alike
            rounds["local"].append(one_job("local", args, names, work, None))
            rounds["ray"].append(one_job("ray", args, names, work, cluster.address))
    finally:
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    result: Dict[str, Any] = {"files": args.files, "workers": args.workers, "file_ms": args.file_ms,
                              "repeat": args.repeat, "ray_cluster_start_s": round(cluster_s, 2)}
    print(f"{args.files} files x {args.file_ms:g} ms, {args.workers} workers, median of {args.repeat} round(s); "
          f"ideal {args.files * args.file_ms / 1000 / args.workers:.2f} s; Ray cluster start-up {cluster_s:.1f} s")
    print(f"{'launcher':<9} {'wall s':>8} {'first worker s':>15} {'all workers s':>14} {'overhead s':>11}")
    for name, runs in rounds.items():
        med = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
        result[name] = med
        print(f"{name:<9} {med['wall_s']:>8.2f} {med['first_worker_s']:>15.2f} {med['all_workers_s']:>14.2f} "
              f"{med['overhead_s']:>11.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
