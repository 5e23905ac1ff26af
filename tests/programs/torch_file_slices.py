"""A PyTorch file job through DataLoader workers, with knobs for the frameworks tests.

usage: torch_file_slices.py INPUT_DIR OUTPUT_DIR SLICE_SIZE NUM_WORKERS [START_METHOD] [BATCH_SIZE]
env:   BATCH_SLEEP   seconds the consumer spends per batch (so the loader workers run ahead)
       READ_LOG      directory: each reading process appends "<slice> <pid>" per item it reads
       SWAP_TO_FIFO  an input (relative path) replaced by a FIFO once the job is planned (an open()
                     of it would wait forever)
       SLOW_READER   "ID:SECONDS": the DataLoader worker ID takes that long over its first item (the
                     others run ahead, up to PREFETCH_FACTOR batches each)
       PREFETCH_FACTOR  the DataLoader's prefetch_factor (its default: 2)

One output line per input file, "<relative path>\t<file content>", in the output file of the
file's slice, written through the stream's per-slice output helper.
"""

import os
import sys
import time

import torch.utils.data

from aimaster import inference as elastic_inference

_first_read = True  # this process has read no item yet


def read_text(path: str) -> str:
    global _first_read
    slow_id, _, slow_s = os.environ.get("SLOW_READER", "").partition(":")
    info = torch.utils.data.get_worker_info()
    if slow_id and info is not None and info.id == int(slow_id) and _first_read:
        time.sleep(float(slow_s))
    _first_read = False
    log_dir = os.environ.get("READ_LOG")
    if log_dir:
        with open(os.path.join(log_dir, f"{os.getpid()}.log"), "a") as f:
            f.write(f"{os.path.basename(path)} {os.getpid()}\n")
    with open(path) as f:
        return f.read().strip()


def main() -> None:
    input_dir, output_dir, slice_size, num_workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    method = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "-" else None
    batch_size = int(sys.argv[6]) if len(sys.argv) > 6 else 3
    sleep = float(os.environ.get("BATCH_SLEEP", "0"))
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=slice_size))
    swap = os.environ.get("SWAP_TO_FIFO")
    if swap and not os.path.exists(os.path.join(output_dir, ".swapped")):
        open(os.path.join(output_dir, ".swapped"), "w").close()
        os.unlink(os.path.join(input_dir, swap))
        os.mkfifo(os.path.join(input_dir, swap))
    dataset = client.create_torch_dataset(transform=read_text)
    prefetch = {"prefetch_factor": int(os.environ["PREFETCH_FACTOR"])} if "PREFETCH_FACTOR" in os.environ else {}
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                         multiprocessing_context=method if num_workers else None, **prefetch)
    stream = dataset.track(loader)
    for batch in stream:
        time.sleep(sleep)
        for sid, path, text in zip(batch["slice_id"], batch["path"], batch["data"]):
            stream.output(sid, suffix=".txt").write(f"{os.path.relpath(path, input_dir)}\t{text}\n")
    print(f"committed={stream.committed} lost={stream.lost}", flush=True)


if __name__ == "__main__":
    main()
