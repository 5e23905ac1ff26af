"""A table worker that probes the subprocess writer's asynchronous commits; prints one JSON line.

usage: table_async_commit.py MODE INPUT_TABLE OUTPUT_TABLE SLICE_SIZE
modes:
  stopped    the writer child is SIGSTOPped while three slices are written and handed over: the
             worker must go on (nothing is committed meanwhile); after SIGCONT the job finishes.
  killed     the child is stopped, slice 0 handed over, slice 1 begun, then the child is SIGKILLed:
             the next call must raise TableIOError, and nothing of slices 0/1 may be committed.
  bad-row    slice 0 gets a row of the wrong type: SchemaError is raised (by a write, by
             get_next_slice or by close), and slice 0 must not be committed.
  full       every slice; at OutOfRangeException, every slice must already be committed.
  body-error an exception leaves a ``with writer:`` block while slice 0 is in flight: slice 0 is
             committed on the way out (its rows were complete).
  body-error-killed  the same after the child was SIGKILLed: slice 0 cannot be, so it is given
             back to the pool at once (not left claimed until this process exits).
"""

import json
import os
import signal
import sys

import aimaster
from aimaster import inference as elastic_inference
from aimaster.errors import SchemaError, TableIOError

mode, input_table, output_table, slice_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = elastic_inference.MaxComputeTableClient(
    elastic_inference.MaxComputeTableConfig(input_table, slice_size=slice_size, output_table=output_table))
writer = client.create_table_writer(buffer_size=1000)
child = writer._inner.pid
report = {"ds": client.dataset.ds_id, "slices": client.dataset.num_slices}


def rows_of(table_path):
    start, end = (int(part.split("=")[1]) for part in table_path.split("?")[1].split("&"))
    return [(i, i * 2.0) for i in range(start, end)]


def done():
    return sorted(sid for sid, _ in client.dataset.committed())


def write_remaining_slices(limit=None):
    """get_next_slice() until OutOfRangeException, writing each slice's rows (its first ``limit``)."""
    while True:
        try:
            path = client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            return
        writer.write(rows_of(path)[:limit], col_indices=(0, 1))


if mode == "stopped":
    os.kill(child, signal.SIGSTOP)
    handed = []
    for _ in range(3):  # three get_next_slice calls return while the child cannot stage anything
        path = client.get_next_slice()
        handed.append(client.get_slice_id())
        writer.write(rows_of(path)[:100], col_indices=(0, 1))
    report["handed"] = handed
    report["done_while_stopped"] = done()
    os.kill(child, signal.SIGCONT)
    write_remaining_slices(limit=100)
    writer.close()
    report["done_at_end"] = done()
elif mode == "killed":
    os.kill(child, signal.SIGSTOP)
    path = client.get_next_slice()
    report["in_flight"] = [client.get_slice_id()]
    # Fewer rows than buffer_size: with more, write() would rightly wait for the stopped child.
    writer.write(rows_of(path)[:100], col_indices=(0, 1))
    path = client.get_next_slice()  # slice 0 is handed to the (stopped) child to stage
    report["in_flight"].append(client.get_slice_id())
    writer.write(rows_of(path)[:100], col_indices=(0, 1))
    os.kill(child, signal.SIGKILL)
    writer._inner._proc.wait(timeout=30)  # dead, not merely signalled, before the next call
    try:
        client.get_next_slice()
    except TableIOError as e:
        report["error"] = str(e)
    report["done_after_error"] = done()
    listing = os.listdir(output_table) if os.path.isdir(output_table) else []
    report["published"] = sorted(p for p in listing if not p.startswith(("_", ".")))
elif mode == "bad-row":
    try:
        path = client.get_next_slice()
        report["bad_slice"] = client.get_slice_id()
        writer.write([("not a number", 1.0)], col_indices=(0, 1))
        writer.write(rows_of(path), col_indices=(0, 1))
        write_remaining_slices()
        writer.close()
    except SchemaError as e:
        report["error"] = str(e)
    report["done_after_error"] = done()
elif mode in ("body-error", "body-error-killed"):
    try:
        with writer:
            path = client.get_next_slice()
            report["in_flight"] = [client.get_slice_id()]
            writer.write(rows_of(path)[:100], col_indices=(0, 1))
            if mode == "body-error-killed":
                os.kill(child, signal.SIGSTOP)  # slice 0 is handed over but never staged
            client.get_next_slice()
            if mode == "body-error-killed":
                os.kill(child, signal.SIGKILL)
                writer._inner._proc.wait(timeout=30)
            raise RuntimeError("the model failed")
    except RuntimeError as e:
        report["error"] = str(e)
    report["done_after_error"] = done()
    report["counts"] = client.dataset.counts()
elif mode == "full":
    write_remaining_slices()
    report["done_at_out_of_range"] = done()
    writer.close()
print(json.dumps(report), flush=True)
