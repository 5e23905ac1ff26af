"""A test worker in the usual PAI table style: slices from MaxComputeTableClient, rows via common_io.

usage: table_worker.py INPUT_TABLE OUTPUT_TABLE SLICE_SIZE
env:   BUFFER_SIZE   the table writer's buffer_size (0: write in process)
       BATCH_SLEEP   seconds of "inference" per batch read
       READ_BATCH    rows per read (1000)
       SLICE_LOG     directory: each worker appends the slice ids it starts
       SLOW_SLICE    slice ids (comma-separated) whose first attempt is slow: it waits until another
                     attempt (a speculative copy) committed the slice and the job finalized its output
                     (SLOW_UNTIL=finalized, the default) or only committed it (SLOW_UNTIL=done),
                     then writes its rows anyway -- a late loser. Every other attempt at such a slice
                     first waits until COPIES copies of it have started (at most 30 s), then takes
                     COPY_SECONDS (1.5) longer: several copies run at once however late the
                     workers started, so one wins and the others lose.
       SLOW_MARK     directory for the marker that tells the first attempt from the others
"""

import os
import sys
import time

import aimaster
import common_io
from aimaster import inference as elastic_inference

input_table, output_table, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
sleep = float(os.environ.get("BATCH_SLEEP", "0"))
read_batch = int(os.environ.get("READ_BATCH", "1000"))
log_dir = os.environ.get("SLICE_LOG")
slow_slices = set(filter(None, os.environ.get("SLOW_SLICE", "").split(",")))
worker = os.environ.get("AIMASTER_WORKER_ID", f"standalone-{os.getpid()}")

client = elastic_inference.MaxComputeTableClient(
    elastic_inference.MaxComputeTableConfig(input_table, slice_size=slice_size, output_table=output_table))
writer = client.create_table_writer(buffer_size=int(os.environ.get("BUFFER_SIZE", "0")))


def first_attempt(slice_id):
    try:
        os.close(os.open(os.path.join(os.environ["SLOW_MARK"], f"{slice_id}.first"), os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def wait_for_copies(slice_id):
    """Sleep until COPIES speculative copies of this slice have started (the attempts record's "b")."""
    want = int(os.environ.get("COPIES", "0"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = client.dataset.store.get_value(client.dataset.k.attempts + slice_id)
        if isinstance(record, dict) and isinstance(record.get("b"), int) and record["b"] >= want:
            return
        time.sleep(0.05)


def wait_until_beaten(slice_id):
    """Sleep until another attempt committed this slice (and, by default, the job finalized)."""
    ds = client.dataset
    key = ds.k.finalized if os.environ.get("SLOW_UNTIL", "finalized") == "finalized" else ds.k.done + slice_id
    deadline = time.monotonic() + 60
    while ds.store.get_value(key) is None and time.monotonic() < deadline:
        time.sleep(0.05)


while True:
    try:
        table_path = client.get_next_slice()  # commits the previous slice
    except aimaster.data.OutOfRangeException:
        break
    slice_id = client.get_slice_id()
    if log_dir:
        with open(os.path.join(log_dir, f"{worker}.log"), "a") as f:
            f.write(f"{slice_id}\n")
    late = slice_id in slow_slices and first_attempt(slice_id)
    if slice_id in slow_slices and not late:
        wait_for_copies(slice_id)
        time.sleep(float(os.environ.get("COPY_SECONDS", "1.5")))
    with common_io.table.TableReader(table_path, selected_cols="id,x") as reader:
        while True:
            try:
                rows = reader.read(read_batch)
            except common_io.exception.OutOfRangeException:
                break
            time.sleep(sleep)
            if late:
                wait_until_beaten(slice_id)
                late = False
            writer.write([(row[0], row[1] * 2.0) for row in rows], col_indices=(0, 1))
writer.close()
