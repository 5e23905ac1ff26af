"""A test worker that claims a slice, then fails with an error that reads differently every time.

usage: random_failure.py INPUT_DIR OUTPUT_DIR SLICE_SIZE

The message carries what varies between occurrences of one error in real life: a random attempt
id, a temporary path, an address, a duration, a pid. The master must still count them as the same
failure for --max-num-of-same-error.
"""

import os
import random
import sys
import uuid

from aimaster import inference as elastic_inference


def main() -> None:
    input_dir, output_dir, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=slice_size))
    client.get_next_slice()
    attempt = uuid.uuid4().hex
    raise RuntimeError(
        f"publish of attempt w{random.randrange(9)}.{attempt[:8]} failed: "
        f"/tmp/stage-{uuid.uuid4().hex}/{attempt}/out.txt unreachable at "
        f"10.{random.randrange(256)}.{random.randrange(256)}.7:{random.randrange(1024, 65535)} "
        f"after {random.randrange(10**6)} ms (pid {os.getpid()}, id {uuid.uuid4()})")


if __name__ == "__main__":
    main()
