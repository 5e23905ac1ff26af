"""A file worker that counts its etcd round trips by kind: one transaction per slice is the claim.

usage: one_trip_worker.py INPUT_DIR OUTPUT_DIR SLICE_SIZE [MAX_SLICES | datawriter]
Writes one output per slice (its input's lines), and prints a JSON line {"kinds": {...}, "slices": n}.
With MAX_SLICES it stops after committing that many slices without asking for another (the slice the
last commit claimed ahead must then go back at exit). ``datawriter``: PAI's DataWriter order, each
slice committed only once the next one is in hand (nothing may be claimed ahead then).
"""

import json
import sys

from rpc_count import count_rpcs

import aimaster
from aimaster import inference as elastic_inference


def main() -> None:
    input_dir, output_dir, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else ""
    limit = int(mode) if mode.isdigit() else None
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=slice_size))
    kinds = count_rpcs(client.dataset.store)
    done = 0
    if mode == "datawriter":
        previous = None
        while True:
            try:
                paths = client.get_next_slice()
            except aimaster.data.OutOfRangeException:
                break
            if previous is not None:
                assert client.commit_slice(previous)
                done += 1
            previous = client.get_slice_id()
            with client.open_slice_output(suffix=".txt") as f:
                for p in paths:
                    with open(p) as src:
                        f.write(src.read())
        if previous is not None:
            assert client.commit_slice(previous)
            done += 1
        print(json.dumps({"kinds": dict(kinds), "slices": done}), flush=True)
        return
    while limit is None or done < limit:
        try:
            paths = client.get_next_slice()
        except aimaster.data.OutOfRangeException:
            break
        with client.open_slice_output(suffix=".txt") as f:
            for p in paths:
                with open(p) as src:
                    f.write(src.read())
        assert client.commit_slice()
        done += 1
    print(json.dumps({"kinds": dict(kinds), "slices": done}), flush=True)


if __name__ == "__main__":
    main()
