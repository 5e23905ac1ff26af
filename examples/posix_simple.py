"""The seed's simple POSIX example, corrected: claim slices until none is left, commit each.

    aimaster run -n 2 -- python examples/posix_simple.py INPUT_DIR OUTPUT_DIR
    python examples/posix_simple.py INPUT_DIR OUTPUT_DIR          # standalone, same result

Each slice's output (one line per input file: its path and size) is written through the atomic
output helper, so it appears in OUTPUT_DIR as <slice id>.txt exactly once.
"""

import os
import sys

import aimaster
from aimaster import inference as elastic_inference


def main(input_dir: str, output_dir: str, slice_size: int = 16) -> None:
    data_config = elastic_inference.PosixFileConfig(
        input_dir=input_dir,
        slice_size=slice_size,
        output_dir=output_dir,
        auto_create_output_dir=True)
    pf_client = elastic_inference.PosixFileClient(data_config)
    while True:
        try:
            # A slice: a list of at most slice_size file paths.
            file_slice = pf_client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            print("All file data have been processed")
            break
        with pf_client.open_slice_output(suffix=".txt") as out:
            for path in file_slice:
                out.write(f"{path}\t{os.path.getsize(path)}\n")
        # Commit: the slice is done; its output is published now (if this attempt won).
        pf_client.commit_slice()


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 16)
