"""A test worker in the usual PAI table style: slices from MaxComputeTableClient, rows via common_io.

usage: table_worker.py INPUT_TABLE OUTPUT_TABLE SLICE_SIZE
env:   BUFFER_SIZE   the table writer's buffer_size (0: write in process)
       BATCH_SLEEP   seconds of "inference" per batch of 1000 rows
       SLICE_LOG     directory: each worker appends the slice ids it starts
"""

import os
import sys
import time

import aimaster
import common_io
from aimaster import inference as elastic_inference

input_table, output_table, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
sleep = float(os.environ.get("BATCH_SLEEP", "0"))
log_dir = os.environ.get("SLICE_LOG")
worker = os.environ.get("AIMASTER_WORKER_ID", f"standalone-{os.getpid()}")

client = elastic_inference.MaxComputeTableClient(
    elastic_inference.MaxComputeTableConfig(input_table, slice_size=slice_size, output_table=output_table))
writer = client.create_table_writer(buffer_size=int(os.environ.get("BUFFER_SIZE", "0")))
while True:
    try:
        table_path = client.get_next_slice()  # commits the previous slice
    except aimaster.data.OutOfRangeException:
        break
    if log_dir:
        with open(os.path.join(log_dir, f"{worker}.log"), "a") as f:
            f.write(f"{client.get_slice_id()}\n")
    with common_io.table.TableReader(table_path, selected_cols="id,x") as reader:
        while True:
            try:
                rows = reader.read(1000)
            except common_io.exception.OutOfRangeException:
                break
            time.sleep(sleep)
            writer.write([(row[0], row[1] * 2.0) for row in rows], col_indices=(0, 1))
writer.close()
