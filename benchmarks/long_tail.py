"""Long-tail benchmark: a slow or a hung worker, aimaster against a static even split.

    python benchmarks/long_tail.py [--quick] [--json PATH]

Four workers process the same files; each file costs ``--file-ms`` of "inference" (a sleep, so the
numbers measure scheduling, not this machine's CPU). One worker is ``--slow-factor`` times slower
per file, injected through the worker program's environment (``SLOW_WORKERS``): the slowness belongs
to that worker *process* -- a throttled GPU, a noisy neighbour -- so a replacement worker is healthy.

Measured in one run, each scenario as a ratio to the same system with no slow worker:

* **aimaster**: ``aimaster run -n 4`` with tests/programs/file_worker.py (dynamic slices, slow-worker
  replacement, speculative copies at the end); also with replacement disabled, to show what dynamic
  dispatch plus speculation alone give when the slow worker cannot be replaced.
* **static split**: what a Kubernetes Indexed Job or a ``DistributedSampler`` does: worker *i* of 4
  processes a fixed contiguous quarter of the sorted file list, writing one output file per
  ``--slice-size`` files (fsync'ed, like aimaster's staged outputs). The job ends when the last
  worker ends. No coordination, no etcd: the cheapest possible baseline.
* **hung worker** (aimaster only; a static split never finishes): one worker stops itself (SIGSTOP)
  half-way through a slice after a few slices; ``--enable-job-hang-detection`` with
  ``--hang-interval``. Target: wall time <= 1.25 x baseline + the hang interval.

Wall time is from starting the job's processes to the last one's exit, start-up included. The
scenarios run interleaved, ``--repeat`` rounds (the long static-split-with-a-slow-worker run once),
and each figure is the median of its rounds, so that a neighbour's load on a shared machine hits
a scenario and its baseline alike.
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
from typing import Any, Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "programs", "file_worker.py")
TARGET_RATIO = 1.25


def make_files(directory: str, n: int) -> List[str]:
    names = []
    for i in range(n):
        rel = f"d{i % 7}/f{i:05d}.txt"
        os.makedirs(os.path.join(directory, os.path.dirname(rel)), exist_ok=True)
        with open(os.path.join(directory, rel), "w") as f:
            f.write(f"file {i}\n")
        names.append(rel)
    return sorted(names)


def _env(extra: Dict[str, str]) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMASTER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.path.join(REPO, "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def count_output_lines(out_dir: str) -> int:
    n = 0
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if name.endswith(".txt") and os.path.isfile(path):
            with open(path) as f:
                n += sum(1 for line in f if line.strip())
    return n


# ---------------------------------------------------------------------------------- aimaster
def run_aimaster(work: str, name: str, inp: str, args, env: Dict[str, str], extra: Sequence[str] = ()) -> Dict:
    out, state = os.path.join(work, name, "out"), os.path.join(work, name, "state")
    cmd = [sys.executable, "-m", "aimaster.cli", "run", "-n", str(args.workers), "--job-id", name,
           "--state-dir", state, "--quiet", *extra, "--", sys.executable, WORKER, inp, out, str(args.slice_size)]
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=_env(dict(env, FILE_SLEEP=str(args.file_ms / 1000.0))), capture_output=True,
                       text=True, timeout=args.timeout)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"{name}: aimaster exited {r.returncode}\n{r.stderr[-3000:]}")
    with open(os.path.join(state, "jobs", name, "report.json")) as f:
        report = json.load(f)
    lines = count_output_lines(out)
    if lines != args.files:
        raise SystemExit(f"{name}: {lines} output lines for {args.files} inputs")
    return {"wall_s": round(wall, 2), "relaunches": report["relaunches"], "speculation": report["speculation"],
            "replaced_slow": report["replaced_slow"]}


# ---------------------------------------------------------------------------------- static split
def static_worker(rank: int, world: int, inp: str, out: str, slice_size: int, per_file: float) -> None:
    """Worker ``rank`` of a static split: a fixed contiguous share, no coordination.

    Per file it does what the dynamic runs' worker (tests/programs/file_worker.py) does: the
    simulated inference (a sleep) and one output line naming the file; it does not read the input,
    which the dynamic worker does not either. Per slice, like aimaster's staged outputs: one file
    written under a temporary name, fsync'ed, renamed into place.
    """
    names = []
    for dirpath, dirnames, filenames in os.walk(inp):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names += [os.path.relpath(os.path.join(dirpath, f), inp) for f in filenames if not f.startswith(".")]
    names.sort()
    per = (len(names) + world - 1) // world
    mine = names[rank * per:(rank + 1) * per]
    os.makedirs(out, exist_ok=True)
    for start in range(0, len(mine), slice_size):
        chunk = mine[start:start + slice_size]
        tmp = os.path.join(out, f".r{rank}-{start}.tmp")
        with open(tmp, "w") as f:
            for name in chunk:
                time.sleep(per_file)
                f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(out, f"r{rank}-{start:06d}.txt"))


def run_static(work: str, name: str, inp: str, args, slow_rank: Optional[int]) -> Dict:
    out = os.path.join(work, name, "out")
    t0 = time.monotonic()
    procs = []
    for rank in range(args.workers):
        factor = args.slow_factor if rank == slow_rank else 1.0
        procs.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--static-worker", str(rank), str(args.workers), inp, out,
             str(args.slice_size), str(args.file_ms / 1000.0 * factor)], env=_env({})))
    for p in procs:
        if p.wait(args.timeout) != 0:
            raise SystemExit(f"{name}: a static worker exited {p.returncode}")
    wall = time.monotonic() - t0
    lines = count_output_lines(out)
    if lines != args.files:
        raise SystemExit(f"{name}: {lines} output lines for {args.files} inputs")
    return {"wall_s": round(wall, 2)}


# ---------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--file-ms", type=float, default=20.0, help="milliseconds of work per file")
    ap.add_argument("--slice-size", type=int, default=10)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--slow-factor", type=float, default=10.0)
    ap.add_argument("--hang-interval", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; figures are medians")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--quick", action="store_true",
                    help="400 files of 20 ms, one round, no static split with a slow worker: a smoke test (~1 min)")
    ap.add_argument("--skip-static-slow", action="store_true", help="skip the longest run (static split, slow)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    ap.add_argument("--static-worker", nargs=6, metavar="X", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.static_worker:
        rank, world, inp, out, size, per_file = args.static_worker
        static_worker(int(rank), int(world), inp, out, int(size), float(per_file))
        return 0
    if args.quick:  # smaller defaults; what is given explicitly stays
        for name, value in (("files", 400), ("repeat", 1)):
            if getattr(args, name) == ap.get_default(name):
                setattr(args, name, value)
        args.skip_static_slow = True

    work = tempfile.mkdtemp(prefix="aimaster-longtail-")
    try:
        inp = os.path.join(work, "in")
        make_files(inp, args.files)
        slow = {"SLOW_WORKERS": "w1", "SLOW_FACTOR": str(args.slow_factor)}
        res: Dict[str, Any] = {"params": {k: getattr(args, k) for k in
                                          ("files", "file_ms", "slice_size", "workers", "slow_factor",
                                           "hang_interval")}}
        print(f"{args.files} files x {args.file_ms:g} ms, slices of {args.slice_size}, {args.workers} workers; "
              f"slow worker {args.slow_factor:g}x; hang interval {args.hang_interval:g}s", flush=True)
        hung = {"HANG_WORKERS": "w1", "HANG_AFTER": "3"}
        hang_flags = ["--enable-job-hang-detection", "--job-hang-interval", str(args.hang_interval),
                      "--lease-ttl", str(max(2, int(args.hang_interval)))]
        steps = [
            ("aimaster_base", lambda r: run_aimaster(work, f"am-base-{r}", inp, args, {})),
            ("aimaster_slow", lambda r: run_aimaster(work, f"am-slow-{r}", inp, args, slow)),
            ("aimaster_slow_no_replacement", lambda r: run_aimaster(work, f"am-slow-norep-{r}", inp, args, slow,
                                                                    ["--slow-worker-multiplier", "0"])),
            ("aimaster_hung", lambda r: run_aimaster(work, f"am-hung-{r}", inp, args, hung, hang_flags)),
            ("static_base", lambda r: run_static(work, f"st-base-{r}", inp, args, None)),
        ]
        if not args.skip_static_slow:
            steps.append(("static_slow", lambda r: run_static(work, f"st-slow-{r}", inp, args, 1)))
        runs: Dict[str, List[Dict[str, Any]]] = {}
        for round_no in range(max(1, args.repeat)):
            for name, step in steps:
                if name == "static_slow" and round_no > 0:
                    continue  # ~10x the others; its ratio does not need a median
                print(f"  round {round_no + 1}: {name} ...", end=" ", flush=True)
                runs.setdefault(name, []).append(step(round_no))
                last = runs[name][-1]
                extra = f"  relaunches {last['relaunches']}" if last.get("relaunches") else ""
                print(f"{last['wall_s']:.1f} s{extra}", flush=True)
        for name, results in runs.items():
            walls = [r["wall_s"] for r in results]
            median = statistics.median(walls)
            res[name] = dict(min(results, key=lambda r: abs(r["wall_s"] - median)), wall_s=round(median, 2),
                             walls=walls)
        base, sbase = res["aimaster_base"]["wall_s"], res["static_base"]["wall_s"]
        res["ratios"] = {
            "aimaster_slow": round(res["aimaster_slow"]["wall_s"] / base, 3),
            "aimaster_slow_no_replacement": round(res["aimaster_slow_no_replacement"]["wall_s"] / base, 3),
            "aimaster_hung": round(res["aimaster_hung"]["wall_s"] / base, 3),
            "aimaster_hung_minus_interval": round((res["aimaster_hung"]["wall_s"] - args.hang_interval) / base, 3),
        }
        if "static_slow" in res:
            res["ratios"]["static_slow"] = round(res["static_slow"]["wall_s"] / sbase, 3)
        print_report(res, args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2, sort_keys=True)
                f.write("\n")
        r = res["ratios"]
        ok = r["aimaster_slow"] <= TARGET_RATIO and r["aimaster_hung_minus_interval"] <= TARGET_RATIO
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_report(res: Dict[str, Any], args) -> None:
    r = res["ratios"]
    base, sbase = res["aimaster_base"]["wall_s"], res["static_base"]["wall_s"]

    def verdict(ok: bool) -> str:
        return "OK" if ok else "MISS"

    print("\nwall time as a ratio to the same system with no slow worker:")
    print(f"  aimaster, one {args.slow_factor:g}x slow worker   {res['aimaster_slow']['wall_s']:7.1f} s / "
          f"{base:5.1f} s = {r['aimaster_slow']:5.2f}x   target <= {TARGET_RATIO}x "
          f"{verdict(r['aimaster_slow'] <= TARGET_RATIO)}  (replaced: "
          f"{', '.join(res['aimaster_slow']['replaced_slow']) or 'none'}; speculative copies won: "
          f"{res['aimaster_slow']['speculation']['won']})")
    print(f"    ... slow worker not replaced       {res['aimaster_slow_no_replacement']['wall_s']:7.1f} s / "
          f"{base:5.1f} s = {r['aimaster_slow_no_replacement']:5.2f}x   (dynamic slices + speculation only; "
          f"copies won: {res['aimaster_slow_no_replacement']['speculation']['won']})")
    if "static_slow" in res:
        print(f"  static even split, one slow worker  {res['static_slow']['wall_s']:7.1f} s / "
              f"{sbase:5.1f} s = {r['static_slow']:5.2f}x")
    print(f"  aimaster, one hung worker           {res['aimaster_hung']['wall_s']:7.1f} s / {base:5.1f} s = "
          f"{r['aimaster_hung']:5.2f}x   ({r['aimaster_hung_minus_interval']:.2f}x + the "
          f"{args.hang_interval:g} s hang interval; target <= {TARGET_RATIO}x + interval "
          f"{verdict(r['aimaster_hung_minus_interval'] <= TARGET_RATIO)}; relaunches "
          f"{res['aimaster_hung']['relaunches']})")
    print("  static even split, one hung worker  never ends (nothing re-dispatches its share)")


if __name__ == "__main__":
    sys.exit(main())
