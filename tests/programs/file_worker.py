"""A test worker: an ordinary ElasticBatch file program with knobs for failure tests.

usage: file_worker.py INPUT_DIR OUTPUT_DIR SLICE_SIZE
env:   FILE_SLEEP      seconds of "inference" per file
       PROCESS_LOG     directory: each worker appends "<slice> <worker>" when it starts a slice
       STARTED_LOG     directory: each worker process creates "<worker>.started" before anything else
       SLOW_WORKERS    comma-separated worker ids that are SLOW_FACTOR times slower per file (a
                       degraded machine: a replacement worker, having another id, is not slow)
       POISON_FILE     an input (relative path) this program cannot handle: it prints
                       "poisoned input <file>: cannot decode it" to stderr and dies (POISON_MODE=exit, the
                       default: os._exit(17), like a crash in native code) or raises (POISON_MODE=raise)
       HANG_WORKERS    comma-separated worker ids that stop themselves (SIGSTOP) half-way through the
                       slice after HANG_AFTER committed ones (hung while holding a slice)
"""

import os
import signal
import sys
import time

import aimaster
from aimaster import inference as elastic_inference


def _ids(name: str) -> set:
    return {x for x in os.environ.get(name, "").split(",") if x}


def main() -> None:
    input_dir, output_dir, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    worker = os.environ.get("AIMASTER_WORKER_ID", f"standalone-{os.getpid()}")
    started_dir = os.environ.get("STARTED_LOG")
    if started_dir:
        open(os.path.join(started_dir, f"{worker}.started"), "w").close()
    sleep = float(os.environ.get("FILE_SLEEP", "0"))
    if worker in _ids("SLOW_WORKERS"):
        sleep *= float(os.environ.get("SLOW_FACTOR", "10"))
    log_dir = os.environ.get("PROCESS_LOG")
    poison = os.environ.get("POISON_FILE")
    hang_after = int(os.environ.get("HANG_AFTER", "3")) if worker in _ids("HANG_WORKERS") else None
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=slice_size))
    done = 0
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
            for i, path in enumerate(paths):
                if hang_after is not None and done >= hang_after and i == len(paths) // 2:
                    os.kill(os.getpid(), signal.SIGSTOP)
                rel = os.path.relpath(path, input_dir)
                if poison and rel == poison:
                    message = f"poisoned input {rel}: cannot decode it"
                    if os.environ.get("POISON_MODE", "exit") == "raise":
                        raise ValueError(message)
                    print(message, file=sys.stderr, flush=True)
                    os._exit(17)
                time.sleep(sleep)
                out.write(rel + "\n")
        client.commit_slice()
        done += 1


if __name__ == "__main__":
    main()
