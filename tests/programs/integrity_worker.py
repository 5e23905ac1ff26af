"""A test worker that reads its inputs (open + read, as real inference does) and lists them.

usage: integrity_worker.py INPUT_DIR OUTPUT_DIR SLICE_SIZE
env:   SKIP_UNREADABLE  "1": PosixFileConfig(skip_unreadable=True)
       SWAP_TO_FIFO     an input (relative path) that the first worker replaces by a FIFO right after
                        the job is planned (nobody ever writes to it: an open() for reading would wait
                        forever)
       FILE_SLEEP       seconds per file
Each output line is "<relative path>\t<bytes read>".
"""

import os
import sys
import time

import aimaster
from aimaster import inference as elastic_inference


def main() -> None:
    input_dir, output_dir, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    options = {"skip_unreadable": True} if os.environ.get("SKIP_UNREADABLE") == "1" else {}
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=slice_size, **options))
    swap = os.environ.get("SWAP_TO_FIFO")
    if swap:
        marker = os.path.join(output_dir, ".swapped")
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.unlink(os.path.join(input_dir, swap))
            os.mkfifo(os.path.join(input_dir, swap))
        except FileExistsError:
            pass
    sleep = float(os.environ.get("FILE_SLEEP", "0"))
    while True:
        try:
            paths = client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            break
        with client.open_slice_output(suffix=".txt") as out:
            for path in paths:
                with open(path, "rb") as f:
                    size = len(f.read())
                time.sleep(sleep)
                out.write(f"{os.path.relpath(path, input_dir)}\t{size}\n")
        client.commit_slice()


if __name__ == "__main__":
    main()
