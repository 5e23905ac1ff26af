"""A torch file job (DataLoader, num_workers=0) that counts its etcd round trips by kind.

usage: one_trip_torch.py INPUT_DIR OUTPUT_DIR SLICE_SIZE
Prints a JSON line {"kinds": {...}, "committed": n}: with the reader in the consuming process, the
commit of a slice also claims a next one for the reader, so claims on their own are rare.
"""

import json
import sys
import time

import torch.utils.data
from rpc_count import count_rpcs

from aimaster import inference as elastic_inference


def main() -> None:
    input_dir, output_dir, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=slice_size))
    kinds = count_rpcs(client.dataset.store)
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
