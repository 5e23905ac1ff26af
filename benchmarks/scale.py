"""How aimaster's coordination cost grows with slices and workers, measured on a real etcd.

    python benchmarks/scale.py                  # ~2-3 min on 2 cores
    python benchmarks/scale.py --quick          # smoke test (< 1 min)
    python benchmarks/scale.py --json scale.json

Three measurements, each on one embedded etcd (what ``aimaster run`` starts):

* **Footprint**: a table dataset of ``--slices`` slices and ``--workers`` worker sessions (each its
  own lease, registered as a worker). The job's keys and bytes (key + value, as stored) are read by
  kind -- ``ds/*/todo/*``, ``ds/*/claim/*``, ``beat/*`` ... -- after planning, with one slice in
  flight per worker, and once every slice is committed; divided by slices or workers they give the
  per-slice and per-worker cost. A file dataset's file list is measured as bytes per file.
* **Reads that grow with the data**: with ``N`` free slices planned (``--range-sizes``), the time etcd
  takes for the two reads whose cost depends on ``N``: counting the free slices (what the master
  does every round for the progress line and its decisions) and a claim's 64-key candidate read in
  a bounded window (``CLAIM_WINDOW`` slices, whatever ``N`` is). etcd 3.5 walks every key of a range
  to count it, so the first grows with ``N`` and the second must not.
* **Lease keep-alives**: one per worker session every ``ttl / 3`` seconds, counted over a few
  seconds of an idle session (the count is the design's, the measurement checks it).

Claim conflicts as the number of client processes grows come from ``benchmarks/coordination.py``
(``--clients 1,8,32,64``: "claims lost per slice"); ``docs/benchmarks.md`` combines both into the
projection for 1,000 workers and 10 million files.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import uuid
from collections import Counter, defaultdict
from typing import Any, Dict, List, Optional, Sequence

_ID = re.compile(r"^[0-9]{6,}$")


def kind_of(rel: str) -> str:
    """A key's kind: its relative path with dataset, slice and worker ids replaced by ``*``."""
    parts = rel.split("/")
    if parts[0] == "ds" and len(parts) >= 3:
        head = ["ds", "*", parts[2]]
        rest = parts[3:]
        return "/".join(head + ["*" for _ in rest])
    if len(parts) == 2 and parts[0] in ("workers", "beat", "stats", "stop", "standby", "joiners"):
        return parts[0] + "/*"
    return rel


def footprint(store) -> Dict[str, Dict[str, int]]:
    """{kind: {"keys": n, "bytes": key + value bytes}} of everything under the store's job prefix."""
    out: Dict[str, Dict[str, int]] = defaultdict(lambda: {"keys": 0, "bytes": 0})
    prefix = store.prefix
    for value, meta in store.client.get_prefix(prefix):
        key = meta.key.decode()
        entry = out[kind_of(key[len(prefix):])]
        entry["keys"] += 1
        entry["bytes"] += len(meta.key) + len(value or b"")
    return dict(out)


def measure_footprint(endpoint: str, slices: int, workers: int) -> Dict[str, Any]:
    from aimaster.data.claim import PlanData
    from aimaster.data.coordinator import Dataset
    from aimaster.data.session import WorkerSession
    from aimaster.data.store import EtcdConfig, Store, job_prefix

    prefix = job_prefix("scale-" + uuid.uuid4().hex[:8])
    sessions, datasets = [], []
    for i in range(workers):
        store = Store(EtcdConfig([endpoint]), prefix)
        session = WorkerSession(store, f"w{i}")
        sessions.append(session)
        datasets.append(Dataset(session, "t-scale"))
    try:
        datasets[0].ensure_plan(lambda: PlanData("table", slices, {"table": "odps://p/tables/t"}), slice_size=1)
        for ds in datasets[1:]:
            ds.load_plan()
        store = sessions[0].store
        planned = footprint(store)
        held = [ds.next_claim() for ds in datasets]
        for ds in datasets:
            ds.session.beat(force=True)
        in_flight = footprint(store)
        for ds, claim in zip(datasets, held):
            ds.commit(claim)
        rest = datasets[0]
        while True:
            claim = rest.try_claim()
            if claim is None:
                break
            rest.commit(claim, claim_next=True)
        for session in sessions:
            session.publish_stats()
        done = footprint(store)
        db_mb = round(store.client.status().db_size / 1e6, 2)
    finally:
        for session in sessions:
            session.close()
    return {"slices": slices, "workers": workers, "planned": planned, "in_flight": in_flight, "done": done,
            "db_mb_after": db_mb}


def measure_file_list(endpoint: str, files: int) -> Dict[str, Any]:
    """Bytes of a file dataset's plan per file (names like ``dir0000/img_0000000.jpg`` under a base)."""
    from aimaster.data.claim import PlanData
    from aimaster.data.coordinator import Dataset
    from aimaster.data.session import WorkerSession
    from aimaster.data.store import EtcdConfig, Store, job_prefix

    store = Store(EtcdConfig([endpoint]), job_prefix("scale-files-" + uuid.uuid4().hex[:8]))
    session = WorkerSession(store, "planner")
    try:
        names = [f"dir{i // 1000:04d}/img_{i:07d}.jpg" for i in range(files)]
        Dataset(session, "f-scale").ensure_plan(lambda: PlanData("files", files, {"base": "/data"}, names),
                                                slice_size=100)
        fp = footprint(store)
    finally:
        session.close()
    items = fp.get("ds/*/items/*", {"keys": 0, "bytes": 0})
    name_bytes = sum(len(n) for n in names)
    return {"files": files, "item_chunks": items["keys"], "item_bytes": items["bytes"],
            "bytes_per_file": round(items["bytes"] / files, 1), "mean_name_bytes": round(name_bytes / files, 1)}


def measure_reads(endpoint: str, sizes: Sequence[int], repeat: int) -> List[Dict[str, Any]]:
    from aimaster.data import claiming
    from aimaster.data.claim import PlanData
    from aimaster.data.coordinator import Dataset
    from aimaster.data.session import WorkerSession
    from aimaster.data.store import EtcdConfig, Store, job_prefix

    out = []
    for n in sizes:
        store = Store(EtcdConfig([endpoint]), job_prefix("scale-reads-" + uuid.uuid4().hex[:8]))
        session = WorkerSession(store, "reader", register=False)
        try:
            ds = Dataset(session, "t-reads")
            t0 = time.perf_counter()
            ds.ensure_plan(lambda n=n: PlanData("table", n, {"table": "odps://p/tables/t"}), slice_size=1)
            plan_s = time.perf_counter() - t0
            counts, windows = [], []
            for i in range(repeat):
                t0 = time.perf_counter()
                got = ds.counts()["todo"]
                counts.append(time.perf_counter() - t0)
                assert got == n, (got, n)
                start = (i * 7919) % max(1, n - claiming.CLAIM_WINDOW)
                t0 = time.perf_counter()
                found = ds._todo_range(ds.k.todo + ds.slice_id(start),
                                       ds.k.todo + ds.slice_id(start + claiming.CLAIM_WINDOW))
                windows.append(time.perf_counter() - t0)
                assert len(found) == claiming.CANDIDATES
        finally:
            session.close()
        out.append({"free_slices": n, "plan_s": round(plan_s, 2),
                    "count_ms": round(statistics.median(counts) * 1000, 2),
                    "window_read_ms": round(statistics.median(windows) * 1000, 2)})
        print(f"  {n:>9,} free slices: count {out[-1]['count_ms']:8.2f} ms   64-key window read "
              f"{out[-1]['window_read_ms']:6.2f} ms   (planned in {plan_s:.1f} s)", flush=True)
    return out


def measure_keepalives(endpoint: str, ttl: int, seconds: float) -> Dict[str, Any]:
    from aimaster.data.session import WorkerSession
    from aimaster.data.store import EtcdConfig, Store, job_prefix

    store = Store(EtcdConfig([endpoint]), job_prefix("scale-lease-" + uuid.uuid4().hex[:8]))
    kinds: Counter = Counter()
    call = store.call

    def counted(what, fn):
        kinds[what.split(" ", 1)[0]] += 1
        return call(what, fn)

    store.call = counted
    session = WorkerSession(store, "idle", ttl=ttl)
    try:
        kinds.clear()
        time.sleep(seconds)
        refreshes = kinds.get("refresh", 0)
    finally:
        session.close()
    return {"ttl": ttl, "seconds": seconds, "refreshes": refreshes, "per_s": round(refreshes / seconds, 3),
            "design_per_s": round(3.0 / ttl, 3)}


def per_unit(fp: Dict[str, Dict[str, int]], kinds: Sequence[str], n: int) -> Dict[str, float]:
    keys = sum(fp.get(k, {}).get("keys", 0) for k in kinds)
    size = sum(fp.get(k, {}).get("bytes", 0) for k in kinds)
    return {"keys": round(keys / n, 3), "bytes": round(size / n, 1)}


def summarize(fp: Dict[str, Any]) -> Dict[str, Any]:
    s, w = fp["slices"], fp["workers"]
    slice_kinds = ("ds/*/todo/*", "ds/*/claim/*", "ds/*/attempts/*", "ds/*/done/*", "ds/*/backup/*/*")
    worker_kinds = ("workers/*", "beat/*", "stats/*")
    return {
        "per_planned_slice": per_unit(fp["planned"], slice_kinds, s),
        "per_slice_in_flight": per_unit(fp["in_flight"], ("ds/*/claim/*", "ds/*/attempts/*"), w),
        "per_committed_slice": per_unit(fp["done"], slice_kinds, s),
        "per_worker": per_unit(fp["done"], worker_kinds, w),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    ap.add_argument("--slices", type=int, default=5000, help="slices of the footprint dataset")
    ap.add_argument("--workers", type=int, default=16, help="worker sessions of the footprint run")
    ap.add_argument("--files", type=int, default=100_000, help="files of the file-list measurement")
    ap.add_argument("--range-sizes", default="10000,50000,200000", help="free-slice counts for the read timings")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    if args.quick:
        args.slices, args.workers, args.files, args.range_sizes, args.repeat = 400, 4, 5000, "2000,10000", 5
    sizes = [int(x) for x in args.range_sizes.split(",") if x]

    from aimaster.data.etcd_server import EmbeddedEtcd

    res: Dict[str, Any] = {}
    with EmbeddedEtcd() as etcd:
        print(f"footprint: {args.slices:,} slices, {args.workers} workers ...", flush=True)
        fp = measure_footprint(etcd.endpoint, args.slices, args.workers)
        res["footprint"] = fp
        res["summary"] = summarize(fp)
        print(f"file list: {args.files:,} files ...", flush=True)
        res["file_list"] = measure_file_list(etcd.endpoint, args.files)
        print("reads that grow with the data:", flush=True)
        res["reads"] = measure_reads(etcd.endpoint, sizes, args.repeat)
        print("lease keep-alives of an idle session ...", flush=True)
        res["keepalives"] = measure_keepalives(etcd.endpoint, ttl=3, seconds=3.5 if args.quick else 9.5)
    sm = res["summary"]
    for label, key in (("per planned slice (todo key)", "per_planned_slice"),
                       ("per slice in flight (claim + attempts)", "per_slice_in_flight"),
                       ("per committed slice (done record)", "per_committed_slice"),
                       ("per worker (registration, beat, stats)", "per_worker")):
        print(f"{label:<40} {sm[key]['keys']:.2f} keys, {sm[key]['bytes']:.0f} bytes")
    fl = res["file_list"]
    print(f"file list: {fl['bytes_per_file']} bytes per file (names of {fl['mean_name_bytes']} bytes), "
          f"{fl['item_chunks']} chunks for {fl['files']:,} files")
    r = res["reads"]
    if len(r) >= 2:
        a, b = r[0], r[-1]
        slope = (b["count_ms"] - a["count_ms"]) / max(1, b["free_slices"] - a["free_slices"]) * 1000
        res["count_us_per_key"] = round(slope, 3)
        print(f"counting free slices: {slope:.3f} us per key (grows with the data); a 64-key window read: "
              f"{a['window_read_ms']:.2f} -> {b['window_read_ms']:.2f} ms (bounded)")
    ka = res["keepalives"]
    print(f"lease keep-alives: {ka['per_s']}/s per worker with ttl {ka['ttl']} s "
          f"(design: 3 / ttl = {ka['design_per_s']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
