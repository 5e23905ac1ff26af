"""A test worker whose trouble is in the data: it cannot handle a file whose content starts with
``POISON`` (it raises, naming the file) and loops forever on one starting with ``HANG`` (a decoder
stuck on one input, inside a healthy process whose lease stays alive).

usage: content_worker.py INPUT_DIR OUTPUT_DIR SLICE_SIZE
env:   HANG_ONCE_DIR   with it, a HANG file hangs only the first time (a marker file is left there),
                       as an input that hangs on a transient condition would
       FILE_SLEEP      seconds spent on each file before reading it (default 0)
Each processed file is written to the slice output as its relative path, one per line.
"""

import os
import sys
import time

import aimaster
from aimaster import inference as elastic_inference


def main() -> None:
    input_dir, output_dir, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    once = os.environ.get("HANG_ONCE_DIR")
    delay = float(os.environ.get("FILE_SLEEP", "0"))
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=slice_size))
    while True:
        try:
            paths = client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            break
        with client.open_slice_output(suffix=".txt") as out:
            for path in paths:
                rel = os.path.relpath(path, input_dir)
                time.sleep(delay)
                with open(path) as f:
                    content = f.read()
                if content.startswith("POISON"):
                    raise ValueError(f"cannot decode {rel}: bad header")
                if content.startswith("HANG"):
                    marker = os.path.join(once, rel.replace("/", "_")) if once else None
                    if marker is None or not os.path.exists(marker):
                        if marker is not None:
                            open(marker, "w").close()
                        while True:  # stuck on this input; the lease keep-alive thread runs on
                            time.sleep(1)
                out.write(rel + "\n")
        client.commit_slice()


if __name__ == "__main__":
    main()
