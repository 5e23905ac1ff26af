"""A test worker that records what its launcher gave it, then processes file slices.

usage: env_recorder.py RECORD_DIR INPUT_DIR OUTPUT_DIR SLICE_SIZE
Writes RECORD_DIR/<worker id>.json with its pid, host, slot, $CUDA_VISIBLE_DEVICES and
$AIMASTER_RAY_NODE and $SLURM_STEP_ID (None when unset) before anything else, then writes each input's relative path
into its slice's output, like file_worker.py.
env:   FILE_SLEEP  seconds per file while RECORD_DIR/go does not exist (none once it does)
       HOLD_AFTER  slices a worker commits before it waits for RECORD_DIR/go: a test holds the job
                   running (no slice held) until it has seen what it waits for, then lets it finish
"""

import json
import os
import socket
import sys
import time

import aimaster
from aimaster import inference as elastic_inference


def main() -> None:
    record_dir, input_dir, output_dir, slice_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    worker = os.environ.get("AIMASTER_WORKER_ID", f"standalone-{os.getpid()}")
    tmp = os.path.join(record_dir, f".{worker}.tmp")
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "slot": os.environ.get("AIMASTER_WORKER_SLOT"),
                   "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "ray_node": os.environ.get("AIMASTER_RAY_NODE"), "slurm_step": os.environ.get("SLURM_STEP_ID")},
                  f)
    os.rename(tmp, os.path.join(record_dir, f"{worker}.json"))
    sleep = float(os.environ.get("FILE_SLEEP", "0"))
    gate = os.path.join(record_dir, "go")
    hold_after = int(os.environ.get("HOLD_AFTER", "-1"))
    done = 0
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=slice_size))
    while True:
        while done == hold_after and not os.path.exists(gate):
            time.sleep(0.05)
        try:
            paths = client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            break
        with client.open_slice_output(suffix=".txt") as out:
            for path in paths:
                if not os.path.exists(gate):
                    time.sleep(sleep)
                out.write(os.path.relpath(path, input_dir) + "\n")
        client.commit_slice()
        done += 1
        print(f"{worker} committed {len(paths)} file(s)", flush=True)


if __name__ == "__main__":
    main()
