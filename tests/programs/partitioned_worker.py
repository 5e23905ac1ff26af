"""Claim a slice, wait for a go-ahead file, then process and commit it; then process the rest.

usage: partitioned_worker.py INPUT_DIR OUTPUT_DIR SLICE_SIZE GO_FILE
Prints "holding <slice>" once it holds its first slice, and "commit <slice> <True|False>" for each
commit. A test stops it (SIGSTOP) while it holds the first slice, past its lease TTL -- as if its
host were cut off from etcd -- and lets it go on (SIGCONT, GO_FILE) to see that the lost claim
cannot commit.
"""

import os
import sys
import time

import aimaster
from aimaster import inference as elastic_inference


def process(client, input_dir, paths):
    with client.open_slice_output(suffix=".txt") as out:
        for path in paths:
            out.write(os.path.relpath(path, input_dir) + "\n")
    print(f"commit {client.get_slice_id()} {client.commit_slice()}", flush=True)


def main() -> None:
    input_dir, output_dir, slice_size, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(input_dir, output_dir, slice_size))
    paths = client.get_next_slice()
    print(f"holding {client.get_slice_id()}", flush=True)
    while not os.path.exists(go):
        time.sleep(0.05)
    process(client, input_dir, paths)
    while True:
        try:
            paths = client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            break
        process(client, input_dir, paths)


if __name__ == "__main__":
    main()
