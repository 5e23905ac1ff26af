"""A torch file job (DataLoader, num_workers=0) that counts its etcd round trips by kind.

usage: one_trip_torch.py INPUT_DIR OUTPUT_DIR SLICE_SIZE
Prints a JSON line {"kinds": {...}, "committed": n}: with the reader in the consuming process, the
commit of a slice also claims a next one for the reader, so claims on their own are rare.
"""

import json
import sys
import time
from collections import Counter

import torch.utils.data

from aimaster import inference as elastic_inference


def main() -> None:
    input_dir, output_dir, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=slice_size))
    store = client.dataset.store
    kinds: Counter = Counter()
    call = store.call

    def counted(what, fn):
        result = call(what, fn)
        kinds[what.split(" ", 1)[0]] += 1
        return result

    store.call = counted
    dataset = client.create_torch_dataset(transform=lambda path: open(path).read())
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=0)
    stream = dataset.track(loader)
    for batch in stream:
        time.sleep(0.02)  # the model: a commit (in the background) takes less than a batch
        for sid, text in zip(batch["slice_id"], batch["data"]):
            stream.output(sid, suffix=".txt").write(text)
    print(json.dumps({"kinds": dict(kinds), "committed": stream.committed}), flush=True)


if __name__ == "__main__":
    main()
