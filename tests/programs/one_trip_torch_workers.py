"""A torch file job whose DataLoader workers read, counting every process's etcd round trips.

usage: one_trip_torch_workers.py INPUT_DIR OUTPUT_DIR SLICE_SIZE NUM_WORKERS RPC_DIR
Each process (the consumer and every forked DataLoader worker) appends the kind of each of its etcd
round trips (the first word of ``Store.call``'s description) to ``RPC_DIR/<pid>``. Prints a JSON line
{"committed": n} at the end.
"""

import json
import os
import sys
import time

import torch.utils.data

from aimaster import inference as elastic_inference
from aimaster.data.store import Store


def count_every_process(rpc_dir: str) -> None:
    call = Store.call

    def counted(self, what, fn):
        result = call(self, what, fn)
        with open(os.path.join(rpc_dir, str(os.getpid())), "a") as f:
            f.write(what.split(" ", 1)[0] + "\n")
        return result

    Store.call = counted  # forked DataLoader workers inherit it


def main() -> None:
    input_dir, output_dir, slice_size, workers, rpc_dir = sys.argv[1:6]
    count_every_process(rpc_dir)
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=int(slice_size)))
    dataset = client.create_torch_dataset(transform=lambda path: open(path).read())
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=int(workers),
                                         multiprocessing_context="fork")
    stream = dataset.track(loader)
    for batch in stream:
        time.sleep(0.02)  # the model
        for sid, text in zip(batch["slice_id"], batch["data"]):
            stream.output(sid, suffix=".txt").write(text)
    print(json.dumps({"committed": stream.committed, "consumer": os.getpid()}), flush=True)


if __name__ == "__main__":
    main()
