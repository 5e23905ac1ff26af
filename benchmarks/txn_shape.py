"""The etcd cost of a commit's transaction alone, against raw compare-and-put, in the same run.

Run it from the repository root::

    python benchmarks/txn_shape.py            # 1, 8 and 32 client processes (about a minute)
    python benchmarks/txn_shape.py --quick    # CI smoke test (seconds)
    python benchmarks/txn_shape.py --json shape.json

Why: ``benchmarks/coordination.py`` measures aimaster's whole claim + commit path against raw etcd
transactions. This script splits that ratio in two. It sends, from clients that do nothing else
(requests built before the clock starts, no Python per slice), the very transaction a commit sends:
compare the slice's commit record absent and its claim still ours (by mod revision); write the
record; delete the claim, todo, failed, attempts and copy keys; write the heartbeat; claim the next
slice in a nested transaction (delete its todo key, write its claim and attempts keys). Against the
same etcd it sends the raw baseline (``version(k) == 0`` -> ``put``). The ratio of the two is the ceiling the
transaction's shape leaves; what aimaster loses below it is the client's own work per slice.

The replica is checked against the real thing first: the script runs one real
``Dataset.commit(claim, claim_next=True)`` of a registered worker, captures the request it sends,
and refuses to run if the replica's comparisons and operations differ from it in kind or number
(so a change to the commit cannot leave this benchmark measuring an old shape).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

PREFIX = b"/aimaster/jobs/bench-shape-00000000/ds/t-bench/"
RAW_VALUE = json.dumps({"a": 1, "at": "bench-000.0123abcd", "t": 1700000000.123456, "w": "bench-000"}).encode()
# Values of the sizes a commit writes (a commit record, a claim, an attempts record, a heartbeat).
DONE_VALUE = json.dumps({"a": 1, "at": "bench-000.0123abcd", "dt": 0.0123, "lc": 0.000123, "lm": 0.001234,
                         "n": 1, "t": 1764650000.123456, "w": "bench-000"}, separators=(",", ":")).encode()
CLAIM_VALUE = json.dumps({"a": 1, "at": "bench-000.0123abcd", "t": 1764650000.123456, "w": "bench-000"},
                         separators=(",", ":")).encode()
ATTEMPTS_VALUE = b'{"a":1,"b":0,"e":null,"w":"bench-000"}'
BEAT_VALUE = json.dumps({"held": ["t-bench/000001"], "slices": 1, "state": "working", "t": 1764650000.12},
                        separators=(",", ":")).encode()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------- requests
def _key(kind: bytes, i: int) -> bytes:
    return PREFIX + kind + b"/%010d" % i


def raw_request(r, i: int):
    key = _key(b"raw", i)
    return r.TxnRequest(compare=[r.Compare(key=key, result=r.Compare.EQUAL, target=r.Compare.VERSION, version=0)],
                        success=[r.RequestOp(request_put=r.PutRequest(key=key, value=RAW_VALUE))])


def commit_request(r, i: int, worker: int, lease: int):
    """Slice i's commit, as Dataset.commit(claim, claim_next=True) builds it, claiming slice i + 1."""
    def put(key, value, leased=False):
        return r.RequestOp(request_put=r.PutRequest(key=key, value=value, lease=lease if leased else 0))

    def delete(key, prefix=False):
        end = key[:-1] + bytes([key[-1] + 1]) if prefix else b""
        return r.RequestOp(request_delete_range=r.DeleteRangeRequest(key=key, range_end=end))

    nxt = i + 1
    nested = r.TxnRequest(
        compare=[r.Compare(key=_key(b"todo", nxt), result=r.Compare.GREATER, target=r.Compare.MOD, mod_revision=0)],
        success=[delete(_key(b"todo", nxt)), put(_key(b"claim", nxt), CLAIM_VALUE, leased=True),
                 put(_key(b"attempts", nxt), ATTEMPTS_VALUE)])
    return r.TxnRequest(
        compare=[r.Compare(key=_key(b"done", i), result=r.Compare.EQUAL, target=r.Compare.VERSION, version=0),
                 # The real commit compares the claim key's mod revision with the one its claim was
                 # written at; requests built before the clock cannot know it, and "> 0" costs etcd
                 # the same comparison of the same key.
                 r.Compare(key=_key(b"claim", i), result=r.Compare.GREATER, target=r.Compare.MOD, mod_revision=0)],
        success=[put(_key(b"done", i), DONE_VALUE), delete(_key(b"claim", i)), delete(_key(b"todo", i)),
                 delete(_key(b"failed", i)), delete(_key(b"attempts", i)), delete(_key(b"backup", i) + b"/", True),
                 put(PREFIX + b"beat/bench-%03d" % worker, BEAT_VALUE, leased=True),
                 r.RequestOp(request_txn=nested)],
        failure=[r.RequestOp(request_range=r.RangeRequest(key=_key(b"done", i)))])


def shape(request) -> Any:
    """A request's comparisons and operations by kind, nested transactions included."""
    def ops(branch):
        out = []
        for op in branch:
            kind = op.WhichOneof("request")
            out.append(("txn", shape(op.request_txn)) if kind == "request_txn" else
                       (kind, bool(getattr(op, kind).lease) if kind == "request_put" else None))
        return tuple(out)

    targets = tuple(sorted(c.target for c in request.compare))
    return targets, ops(request.success), ops(request.failure)


def real_commit_shape(endpoint: str) -> Any:
    """The shape of the request one real commit sends (a registered worker, claim_next=True)."""
    from aimaster.data import store as store_mod
    from aimaster.data.coordinator import Dataset, PlanData
    from aimaster.data.session import WorkerSession
    from aimaster.data.store import EtcdConfig, Store, job_prefix

    store = Store(EtcdConfig([endpoint]), job_prefix(f"shape-check-{time.time_ns()}"))
    session = WorkerSession(store, "shape-check")
    session.standalone = False  # as under `aimaster run`
    captured: List[Any] = []
    send = store_mod._send_txn

    def capture(client, request):
        captured.append(request)
        return send(client, request)

    try:
        ds = Dataset(session, "t")
        ds.ensure_plan(lambda: PlanData("table", 100, {}), slice_size=1)
        claim = ds.next_claim()
        store_mod._send_txn = capture
        try:
            # The first commit always carries the worker's counters; the steady state (the one
            # measured) carries them at most twice a second. Commit once, then measure the second.
            ds.commit(claim, claim_next=True)
            claim = ds.next_claim()
            captured.clear()
            session._stats_at = time.monotonic()  # as if the counters were just written
            assert ds.commit(claim, claim_next=True)
        finally:
            store_mod._send_txn = send
    finally:
        session.close()
    if len(captured) != 1:
        raise RuntimeError(f"a commit sent {len(captured)} transactions, expected one")
    return shape(captured[0])


# ---------------------------------------------------------------------------------------- children
def _child(endpoint: str, what: str, phase: int, idx: int, n: int, lease: int, ready_q, start_evt,
           out_q) -> None:
    try:
        import pyetcd
        from pyetcd.etcdrpc import rpc_pb2 as r

        host, _, port = endpoint.rpartition(":")
        client = pyetcd.client(host=host, port=int(port), timeout=30)
        base = phase * 100_000_000 + idx * 1_000_000 + 1  # keys of their own, per phase and client
        if what == "commit":
            # Slice `base` claimed by us and every later one free, as in a running job.
            for at in range(base + 1, base + n + 1, 500):
                client.kvstub.Txn(r.TxnRequest(success=[
                    r.RequestOp(request_put=r.PutRequest(key=_key(b"todo", i), value=b'{"a":0,"e":null}'))
                    for i in range(at, min(at + 500, base + n + 1))]), 30)
            client.kvstub.Txn(r.TxnRequest(success=[
                r.RequestOp(request_put=r.PutRequest(key=_key(b"claim", base), value=CLAIM_VALUE, lease=lease)),
                r.RequestOp(request_put=r.PutRequest(key=_key(b"attempts", base), value=ATTEMPTS_VALUE))]), 30)
            requests = [commit_request(r, base + j, idx, lease) for j in range(n)]
        else:
            requests = [raw_request(r, base + j) for j in range(n)]
        ready_q.put(idx)
        start_evt.wait()
        cpu0 = time.process_time()
        failed = 0
        for request in requests:
            failed += not client.kvstub.Txn(request, 30).succeeded
        out_q.put({"idx": idx, "end": time.monotonic(), "cpu": time.process_time() - cpu0, "failed": failed})
        client.close()
    except BaseException as e:  # the parent must hear about it
        out_q.put({"idx": idx, "error": f"{type(e).__name__}: {e}"})


def run_phase(ctx, etcd, what: str, phase: int, clients: int, total: int, lease: int) -> Dict[str, Any]:
    per = max(1, total // clients)
    ready_q, out_q, start_evt = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_child, args=(etcd.endpoint, what, phase, i, per, lease, ready_q, start_evt, out_q),
                         daemon=True) for i in range(clients)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready_q.get(timeout=300)
        etcd_cpu0 = cpu_seconds(etcd.process.pid)
        start = time.monotonic()
        start_evt.set()
        results = [out_q.get(timeout=600) for _ in procs]
        etcd_cpu = cpu_seconds(etcd.process.pid) - etcd_cpu0
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"{what} phase: {errors[0]}")
    failed = sum(r["failed"] for r in results)
    if failed:
        raise RuntimeError(f"{what} phase: {failed} transactions failed their comparisons")
    n = per * clients
    elapsed = max(r["end"] for r in results) - start
    return {"clients": clients, "txns": n, "rate": round(n / elapsed, 1),
            "client_cpu_ms": round(sum(r["cpu"] for r in results) / n * 1e3, 3),
            "etcd_cpu_ms": round(etcd_cpu / n * 1e3, 3)}


# ---------------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 and 4 clients, 400 transactions each (a smoke test)")
    ap.add_argument("--clients", help="comma-separated client process counts (default 1,8,32)")
    ap.add_argument("--txns", type=int, help="transactions per phase (default 8000)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = ap.parse_args(argv)
    clients = [int(x) for x in (args.clients or ("1,4" if args.quick else "1,8,32")).split(",")]
    total = args.txns or (400 if args.quick else 8000)

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
    import pyetcd
    from pyetcd.etcdrpc import rpc_pb2 as r

    from aimaster.data.etcd_server import EmbeddedEtcd

    ctx = mp.get_context("forkserver")  # no gRPC channel may cross a fork
    ctx.set_forkserver_preload(["pyetcd"])
    tmp = tempfile.mkdtemp(prefix="aimaster-shape-")
    etcd = EmbeddedEtcd(data_dir=os.path.join(tmp, "etcd")).start()
    try:
        real = real_commit_shape(etcd.endpoint)
        replica = shape(commit_request(r, 1, 0, 1))
        if real != replica:
            raise SystemExit(f"the replica no longer matches Dataset.commit's transaction:\n  real    {real}\n"
                             f"  replica {replica}\nupdate commit_request() in this script")
        probe = pyetcd.client(host="127.0.0.1", port=etcd.client_port, timeout=30)
        lease = probe.lease(3600).id
        rows = []
        for n in clients:
            print(f"{n} client(s) ...", flush=True)
            phase = 3 * len(rows)
            raw = run_phase(ctx, etcd, "raw", phase, n, total, lease)
            commit = run_phase(ctx, etcd, "commit", phase + 1, n, total, lease)
            raw2 = run_phase(ctx, etcd, "raw", phase + 2, n, total, lease)  # before and after: the machine drifts
            raw_rate = (raw["rate"] + raw2["rate"]) / 2
            rows.append({"clients": n, "raw": raw, "raw_after": raw2, "commit": commit,
                         "ratio": round(commit["rate"] / raw_rate, 3)})
        probe.close()
    finally:
        etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print("\nA commit's transaction alone (requests built in advance) vs raw compare-and-put, same etcd")
    print(f"{'clients':>7} | {'raw txn/s':>9} | {'commit txn/s':>12} | {'ratio':>6} | "
          f"{'cpu ms/txn raw cli+etcd':>23} | {'cpu ms/txn commit cli+etcd':>26}")
    for row in rows:
        raw, c = row["raw"], row["commit"]
        print(f"{row['clients']:>7} | {(raw['rate'] + row['raw_after']['rate']) / 2:>9.0f} | {c['rate']:>12.0f} | "
              f"{row['ratio']:>6.1%} | {raw['client_cpu_ms']:>11.3f} + {raw['etcd_cpu_ms']:<9.3f} | "
              f"{c['client_cpu_ms']:>13.3f} + {c['etcd_cpu_ms']:<9.3f}")
    print("\nThe ratio is the ceiling the transaction's shape leaves; benchmarks/coordination.py measures what\n"
          "aimaster's clients reach below it.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"clients": clients, "txns": total, "shape": repr(real), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
