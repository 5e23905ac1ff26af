"""Claim one slice and hold it, busy, until killed (a peer mid-slice, for waiting tests).

usage: hold_slice.py INPUT_DIR OUTPUT_DIR SLICE_SIZE   (prints "holding <slice id>" once it holds one)
"""

import sys
import time

from aimaster import inference as elastic_inference


def main() -> None:
    input_dir, output_dir, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(input_dir, output_dir, slice_size))
    client.get_next_slice()
    print(f"holding {client.get_slice_id()}", flush=True)
    while True:
        time.sleep(0.2)
        client.dataset.session.beat()  # busy: heartbeats of a worker at work


if __name__ == "__main__":
    main()
