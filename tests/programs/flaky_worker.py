"""A test worker whose environment fails once per listed kind of failure, then works.

usage: flaky_worker.py INPUT_DIR OUTPUT_DIR SLICE_SIZE
env:   FLAKY_ERRORS   comma-separated kinds, each raised once in the whole job, half-way through a
                      slice: TableIOError (a storage blip), EtcdUnavailableError (etcd out of reach
                      past the retry window), EIO (a plain OSError from the program's own I/O)
       FLAKY_MARKERS  directory: the worker that creates <kind> there first is the one that fails
       FILE_SLEEP     seconds of "inference" per file
       RETRY_PROBE    file: each worker appends the etcd retry window it was given
"""

import errno
import os
import sys
import time

import aimaster
from aimaster import inference as elastic_inference
from aimaster.data.store import EtcdConfig
from aimaster.errors import EtcdUnavailableError, TableIOError

FAILURES = {
    "TableIOError": lambda: TableIOError("cannot write part file /warehouse/p/t/part-17.csv: connection reset"),
    "EtcdUnavailableError": lambda: EtcdUnavailableError(
        "etcd at 127.0.0.1:2379 unreachable for 60s (commit slice 000003: ConnectionFailedError)"),
    "EIO": lambda: OSError(errno.EIO, os.strerror(errno.EIO), "/mnt/nfs/model.bin"),
}


def _first_to_claim(markers: str, kind: str) -> bool:
    try:
        os.close(os.open(os.path.join(markers, kind), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def main() -> None:
    input_dir, output_dir, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kinds = [k for k in os.environ.get("FLAKY_ERRORS", "").split(",") if k]
    markers = os.environ.get("FLAKY_MARKERS", "")
    sleep = float(os.environ.get("FILE_SLEEP", "0"))
    probe = os.environ.get("RETRY_PROBE")
    if probe:
        with open(probe, "a") as f:
            f.write(f"{EtcdConfig.from_env().retry_seconds}\n")
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=slice_size))
    while True:
        try:
            paths = client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            break
        with client.open_slice_output(suffix=".txt") as out:
            for i, path in enumerate(paths):
                if i == len(paths) // 2:
                    for kind in kinds:
                        if _first_to_claim(markers, kind):
                            raise FAILURES[kind]()
                time.sleep(sleep)
                out.write(os.path.relpath(path, input_dir) + "\n")
        client.commit_slice()


if __name__ == "__main__":
    main()
