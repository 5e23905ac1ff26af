"""A test worker: an ordinary ElasticBatch file program with knobs for failure tests.

usage: file_worker.py INPUT_DIR OUTPUT_DIR SLICE_SIZE
env:   FILE_SLEEP      seconds of "inference" per file
       PROCESS_LOG     directory: each worker appends "<slice> <worker>" when it starts a slice
"""

import os
import sys
import time

import aimaster
from aimaster import inference as elastic_inference


def main() -> None:
    input_dir, output_dir, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sleep = float(os.environ.get("FILE_SLEEP", "0"))
    log_dir = os.environ.get("PROCESS_LOG")
    worker = os.environ.get("AIMASTER_WORKER_ID", f"standalone-{os.getpid()}")
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=slice_size))
    while True:
        try:
            paths = client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            break
        sid = client.get_slice_id()
        if log_dir:
            with open(os.path.join(log_dir, f"{worker}.log"), "a") as f:
                f.write(f"{sid} {worker}\n")
        with client.open_slice_output(suffix=".txt") as out:
            for path in paths:
                time.sleep(sleep)
                out.write(os.path.relpath(path, input_dir) + "\n")
        client.commit_slice()


if __name__ == "__main__":
    main()
