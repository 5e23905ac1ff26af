"""Table I/O benchmark: reading through aimaster vs pyarrow, and what the subprocess writer hides.

    python benchmarks/tables.py [--rows 1000000] [--quick] [--json out.json]

1. Rows/s reading a 10-column Parquet table through ``MaxComputeTableClient.create_torch_dataset``
   (batch_size 256, default num_threads/capacity, slice by slice, as the seed's PyTorch example does)
   as a ratio to pyarrow reading the same rows into Python tuples, measured in the same run. The job's
   start-up (embedded etcd, planning; about a second, once per job) is excluded. Target: >= 0.8.
2. Writer throughput: a compute-bound loop that writes its results with ``buffer_size=0`` (in process)
   and ``buffer_size>0`` (child process), against the same loop without writing. The fraction of the
   in-process write time that the subprocess writer hides is
   ``(t_inprocess - t_subprocess) / (t_inprocess - t_compute_only)``. Target: >= 0.8. Measured twice:
   with results as Python row tuples, and as numpy columns (how model outputs arrive), since the
   parent's cost of handing rows to the child differs between the two.

Both run standalone (a private embedded etcd), on real files, with everything real.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = 10
_READ_T0 = 0.0
_COMPUTE_S = 0.0  # time the write loop spent computing (the rest is reading, writing, coordinating)


def make_table(path: str, rows: int) -> None:
    data = {"id": pa.array(range(rows), pa.int64())}
    for c in range(1, COLUMNS):
        if c % 3 == 0:
            data[f"s{c}"] = pa.array([f"v{i % 1000}" for i in range(rows)])
        else:
            data[f"f{c}"] = pa.array([i * 0.25 + c for i in range(rows)], pa.float64())
    pq.write_table(pa.table(data), path, row_group_size=65536)


def read_pyarrow(path: str, batch: int) -> int:
    """The baseline: pyarrow batches converted to Python row tuples, column-wise.

    Like with like: aimaster yields STRING values as ``bytes`` (as PAI's ``common_io`` does), so the
    baseline converts string columns to ``bytes`` too (a zero-copy cast to binary, then
    ``to_pylist``); decoding them to ``str`` instead costs more than the whole difference measured.
    """
    n = 0
    for rb in pq.ParquetFile(path).iter_batches(batch_size=65536):
        cols = [(col.cast(pa.binary()) if pa.types.is_string(col.type) else col).to_pylist() for col in rb.columns]
        rows = list(zip(*cols))
        for i in range(0, len(rows), batch):
            n += len(rows[i:i + batch])
    return n


def read_aimaster(path: str, batch: int, slice_size: int) -> int:
    import torch  # noqa: F401 - imported before the clock starts, like any training script does

    import aimaster
    from aimaster import inference as elastic_inference

    client = elastic_inference.MaxComputeTableClient(
        elastic_inference.MaxComputeTableConfig(path, slice_size=slice_size))
    global _READ_T0
    _READ_T0 = time.perf_counter()  # the job's start-up (embedded etcd, planning) is not reading
    n = 0
    while True:
        try:
            table_path = client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            break
        for item in client.create_torch_dataset(table_path, batch_size=batch):
            n += len(item)
    return n


def _compute(rows, work: int, output: str = "rows"):
    """Stand-in for model inference: pure-Python arithmetic, proportional to the rows.

    ``output="rows"``: a list of ``(id, score)`` tuples. ``output="arrays"``: the same as two numpy
    columns, the way model outputs arrive (``tensor.numpy()``, a TF session's batch).
    """
    out = []
    for r in rows:
        acc = 0.0
        for k in range(work):
            acc += (r[0] * k) % 7
        out.append((r[0], acc))
    if output == "arrays":
        import numpy as np

        return (np.fromiter((r[0] for r in out), np.int64, len(out)), np.fromiter((r[1] for r in out), np.float64,
                                                                                   len(out)))
    return out


def write_loop(path: str, out_dir: str, slice_size: int, buffer_size: int, work: int, write: bool,
               output: str = "rows") -> float:
    import aimaster
    from aimaster import inference as elastic_inference

    client = elastic_inference.MaxComputeTableClient(elastic_inference.MaxComputeTableConfig(
        path, slice_size=slice_size, output_table=out_dir if write else None))
    writer = client.create_table_writer(buffer_size=buffer_size) if write else None
    from aimaster.io.tables import open_table_source

    source = open_table_source(path)
    t0 = time.perf_counter()
    while True:
        try:
            table_path = client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            break
        start, end = [int(x.split("=")[1]) for x in table_path.split("?")[1].split("&")]
        for rows in source.read(start, end, columns=["id"], batch_rows=4096):
            c0 = time.perf_counter()
            result = _compute(rows, work, output)
            global _COMPUTE_S
            _COMPUTE_S += time.perf_counter() - c0
            if writer is not None:
                writer.write(result, col_indices=(0, 1))
    if writer is not None:
        writer.close()
    return time.perf_counter() - t0


MAXCOMPUTE_OUTPUT = "odps://prj/tables/out"


def sink_work(args: argparse.Namespace, sink: str) -> int:
    """Compute per row for a sink: the loop stays compute-bound (about 3x that sink's write time)."""
    return args.maxcompute_work if sink == "maxcompute" else args.work


def start_maxcompute(work: str):
    """The MaxCompute stand-in over HTTP (benchmarks/maxcompute_http.py); its process and config."""
    import subprocess

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import maxcompute_http

    server = subprocess.Popen([sys.executable, maxcompute_http.__file__], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    endpoints = json.loads(server.stdout.readline())
    return server, maxcompute_http.write_config(os.path.join(work, "odps_config.ini"), endpoints)


def output_rows(sink: str, out: str, odps_config: str) -> int:
    """Rows committed to a write mode's output, counted in the output itself (after the timing)."""
    if sink == "maxcompute":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import maxcompute_http

        return maxcompute_http.committed_rows(odps_config)
    if not os.path.isdir(out):
        return 0
    return sum(pq.ParquetFile(os.path.join(out, name)).metadata.num_rows for name in os.listdir(out)
               if name.endswith(".parquet") and not name.startswith(("_", ".")))


def run_child(args: argparse.Namespace, mode: str) -> float:
    """Each measurement in a fresh process: its own standalone job, no warm caches shared."""
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--child", mode, "--table", args.table, "--rows",
                          str(args.rows), "--work", str(args.work), "--maxcompute-work", str(args.maxcompute_work),
                          "--out", args.out,
                          "--slice-size", str(args.slice_size)],
                         capture_output=True, text=True, check=False,
                         env=dict({k: v for k, v in os.environ.items() if not k.startswith("AIMASTER_")},
                                  **({"ODPS_CONFIG_FILE_PATH": args.odps_config} if args.odps_config else {})))
    if out.returncode != 0:
        raise SystemExit(f"benchmark child {mode} failed:\n{out.stderr}")
    wall, compute = out.stdout.strip().splitlines()[-1].split()
    return float(wall), float(compute)


def child(args: argparse.Namespace) -> None:
    mode = args.child
    if mode == "read-pyarrow":
        t0 = time.perf_counter()
        n = read_pyarrow(args.table, 256)
        dt = time.perf_counter() - t0
    elif mode == "read-aimaster":
        n = read_aimaster(args.table, 256, 65536)
        dt = time.perf_counter() - _READ_T0
    elif mode.startswith("upload-"):  # "upload-<records|arrow>": MaxCompute uploads alone, no compute
        os.environ["AIMASTER_ODPS_UPLOAD"] = "records" if mode == "upload-records" else "auto"
        config = args.odps_config or os.environ.get("ODPS_CONFIG_FILE_PATH", "")
        before = output_rows("maxcompute", MAXCOMPUTE_OUTPUT, config)
        dt = write_loop(args.table, MAXCOMPUTE_OUTPUT, args.slice_size, 0, 0, True, "arrays")
        n = output_rows("maxcompute", MAXCOMPUTE_OUTPUT, config) - before
    else:  # "<compute|inprocess|subprocess>-<rows|arrays>-<parquet|maxcompute>"
        kind, output, sink = mode.split("-")
        buffer_size = 8192 if kind == "subprocess" else 0
        if sink == "maxcompute":
            out = MAXCOMPUTE_OUTPUT
        else:
            out = os.path.join(args.out, mode)
            shutil.rmtree(out, ignore_errors=True)
        write = kind != "compute"
        config = args.odps_config or os.environ.get("ODPS_CONFIG_FILE_PATH", "")
        before = output_rows(sink, out, config) if write else 0
        dt = write_loop(args.table, out, args.slice_size, buffer_size, sink_work(args, sink), write, output)
        # The MaxCompute output is shared by the modes: what this run added must be every row, once.
        n = output_rows(sink, out, config) - before if write else args.rows
    assert n == args.rows, f"{mode}: {n} rows read or written, expected {args.rows}"
    print(dt, _COMPUTE_S)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--work", type=int, default=48,
                   help="compute per row writing to Parquet (48: well over the in-process write time)")
    p.add_argument("--maxcompute-work", type=int, default=144,
                   help="compute per row writing to MaxCompute, whose writes cost ~10x more (144: ~3x them)")
    p.add_argument("--slice-size", type=int, default=65536,
                   help="rows per slice in the writer benchmark (65,536: as in the read benchmark)")
    p.add_argument("--sinks", default="parquet,maxcompute",
                   help="output tables of the writer benchmark: a Parquet directory, and MaxCompute (pyodps over "
                        "HTTP to the stand-in in benchmarks/maxcompute_http.py)")
    p.add_argument("--quick", action="store_true", help="100,000 rows")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--table", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--odps-config", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.quick:  # smaller defaults; what is given explicitly stays
        for name, value in (("rows", 100_000), ("repeat", 1)):
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    work = tempfile.mkdtemp(prefix="aimaster-bench-tables-")
    sinks = [name.strip() for name in args.sinks.split(",") if name.strip()]
    server = None
    try:
        args.table = os.path.join(work, "table.parquet")
        args.out = work
        make_table(args.table, args.rows)
        if "maxcompute" in sinks:
            server, args.odps_config = start_maxcompute(work)
        outputs = ("rows", "arrays")
        writes = [f"{kind}-{output}-{sink}" for sink in sinks for output in outputs
                  for kind in ("compute", "inprocess", "subprocess")]
        uploads = ("upload-records", "upload-arrow") if "maxcompute" in sinks else ()
        modes = ("read-pyarrow", "read-aimaster", *uploads, *writes)
        times = {mode: [] for mode in modes}
        outside = {mode: [] for mode in modes}  # wall time minus the loop's compute time
        # Round robin, not one mode after the other: a slow spell of a shared machine then hits
        # every mode alike instead of skewing one ratio.
        for _ in range(args.repeat):
            for mode in modes:
                wall, compute = run_child(args, mode)
                times[mode].append(wall)
                outside[mode].append(wall - compute)
        best = {mode: min(t) for mode, t in times.items()}
        report(args, sinks, outputs, best, times, {mode: min(t) for mode, t in outside.items()})
    finally:
        if server is not None:
            server.stdin.close()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


def report(args, sinks, outputs, best, times, outside) -> None:
    read_ratio = best["read-pyarrow"] / best["read-aimaster"]
    print(f"rows: {args.rows:,} x {COLUMNS} columns (Parquet), best of {args.repeat}")
    print(f"read   pyarrow -> tuples (STRING as bytes, as aimaster yields them) "
          f"{args.rows / best['read-pyarrow']:>12,.0f} rows/s")
    print(f"read   create_torch_dataset(bs=256)   {args.rows / best['read-aimaster']:>12,.0f} rows/s"
          f"   ratio {read_ratio:.2f} (target >= 0.8)")
    upload = {}
    if "upload-records" in best:
        upload = {kind: args.rows / best[f"upload-{kind}"] for kind in ("records", "arrow")}
        print(f"upload to MaxCompute, no compute (buffer_size=0, {args.slice_size:,}-row blocks, id BIGINT + y DOUBLE)")
        print(f"         protobuf record writer         {upload['records']:>12,.0f} rows/s")
        print(f"         Arrow writer                   {upload['arrow']:>12,.0f} rows/s   "
              f"{upload['arrow'] / upload['records']:.2f}x")
    hidden, paired, loop = {}, {}, {}
    for sink in sinks:
        for output in outputs:
            names = [f"{kind}-{output}-{sink}" for kind in ("compute", "inprocess", "subprocess")]
            compute, inproc, subproc = (best[name] for name in names)
            fraction = _hidden(compute, inproc, subproc)
            # The same fraction within each round (the three runs back to back, so a slow spell of a
            # shared machine hits them alike); their median is the steadier figure.
            rounds = [_hidden(*(times[name][r] for name in names)) for r in range(args.repeat)]
            # And from the loop's own accounting: its time outside the compute function (reading,
            # writing, waiting, committing), which a machine's speed swings barely move -- but which
            # leaves out the child slowing the compute down by sharing the cores.
            in_loop = _hidden(*(outside[name] for name in names))
            hidden[f"{output}-{sink}"], paired[f"{output}-{sink}"], loop[f"{output}-{sink}"] = \
                fraction, rounds, in_loop
            print(f"write  to {sink}, results as {output} ({args.slice_size:,}-row slices, "
                  f"work {sink_work(args, sink)})")
            print(f"         compute only                   {compute:>8.2f} s")
            print(f"         compute + writer buffer_size=0 {inproc:>8.2f} s   (write time {inproc - compute:.2f} s)")
            print(f"         compute + writer buffer_size>0 {subproc:>8.2f} s   hides {100 * fraction:.0f}% "
                  "of write time (target >= 80%)")
            valid = [f for f in rounds if f == f]
            print(f"         per round: {' '.join(f'{100 * f:.0f}%' for f in rounds)}; median "
                  f"{100 * statistics.median(valid) if valid else float('nan'):.0f}%")
            print(f"         loop time outside compute: {outside[names[0]]:.2f} / {outside[names[1]]:.2f} / "
                  f"{outside[names[2]]:.2f} s -> hides {100 * in_loop:.0f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": args.rows, "slice_size": args.slice_size, "work": args.work,
                       "maxcompute_work": args.maxcompute_work, "best_s": best,
                       "times_s": times, "read_ratio": read_ratio, "upload_rows_per_s": upload,
                       "write_hidden_fraction": hidden,
                       "write_hidden_fraction_per_round": paired, "outside_compute_s": outside,
                       "write_hidden_fraction_in_loop": loop}, f, indent=2)


def _hidden(compute: float, inproc: float, subproc: float) -> float:
    """The fraction of the in-process write time that the subprocess writer hides."""
    write_time = inproc - compute
    return (inproc - subproc) / write_time if write_time > 0 else float("nan")


if __name__ == "__main__":
    main()
