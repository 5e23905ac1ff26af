"""create_torch_dataset(table_path=None) through DataLoader workers: every slice, claimed lazily.

usage: torch_table_slices.py INPUT_TABLE OUTPUT_TABLE SLICE_SIZE NUM_WORKERS READ_BATCH LOADER_BATCH
Writes (id, 2x+1) for every input row (id, x) through stream.write, one output row per input row,
with DataLoader batches that straddle slices. Then checks the errors of misuse, printing "ok: ..."
lines: an untracked dataset refuses to claim, drop_last is refused, and rows that cannot be
attributed to the slices of a straddling batch are refused.
"""

import sys

import torch.utils.data

from aimaster import inference as elastic_inference
from aimaster.errors import ConfigError


def main() -> None:
    input_table, output_table = sys.argv[1], sys.argv[2]
    slice_size, num_workers, read_batch, loader_batch = (int(a) for a in sys.argv[3:7])
    client = elastic_inference.MaxComputeTableClient(elastic_inference.MaxComputeTableConfig(
        input_table, slice_size=slice_size, output_table=output_table))

    untracked = client.create_torch_dataset(batch_size=read_batch)
    try:
        next(iter(untracked))
    except ConfigError as e:
        print(f"ok: untracked: {e}", flush=True)
    try:
        untracked.track(torch.utils.data.DataLoader(untracked, batch_size=2, drop_last=True))
    except ConfigError as e:
        print(f"ok: drop_last: {e}", flush=True)

    dataset = client.create_torch_dataset(batch_size=read_batch, selected_cols="id,x")
    loader = torch.utils.data.DataLoader(dataset, batch_size=loader_batch, num_workers=num_workers)
    stream = dataset.track(loader)
    refused = False
    for values in stream:
        ids, xs = values[0]  # items are read(1) lists of one (id, x) row, collated
        rows = [(int(i), float(x) * 2 + 1) for i, x in zip(ids, xs)]
        if not refused and len(set(stream.slice_ids)) > 1:
            try:
                stream.write(rows[:-1], col_indices=(0, 1))
            except ConfigError as e:
                refused = True
                print(f"ok: unattributable: {e}", flush=True)
        stream.write(rows, col_indices=(0, 1))
    print(f"committed={stream.committed} lost={stream.lost}", flush=True)


if __name__ == "__main__":
    main()
