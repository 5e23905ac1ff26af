"""The seed's MaxCompute PyTorch example: a DataLoader per table slice, rows written back.

    aimaster run -n 2 -- python examples/maxcompute_torch.py INPUT_TABLE OUTPUT_TABLE [options]
    python examples/maxcompute_torch.py INPUT_TABLE OUTPUT_TABLE [options]           # standalone

INPUT_TABLE has columns ``id BIGINT, x DOUBLE``; OUTPUT_TABLE ``id BIGINT, y DOUBLE``. Table URLs are
``odps://project/tables/name``: MaxCompute, or with ``AIMASTER_ODPS_WAREHOUSE=/dir`` a local
warehouse (``aimaster.io.tables.create_warehouse_table`` makes one). The "model" is a fixed affine
map, ``y = 2x + 1`` (NULL x reads as 0.0); ``maxcompute_tf_session.py`` and
``maxcompute_tf2_eager.py`` compute the same, so the three can be compared row for row.

The structure is the seed's: ``get_next_slice()`` commits the previous slice (after flushing the
rows written for it) and claims the next; a ``DataLoader`` whose workers split the slice's rows
reads it; ``writer.close()`` commits the last slice.
"""

import argparse

import torch

import aimaster
from aimaster import inference as elastic_inference


def fill_nulls(rows):
    """transform_fn: runs in the DataLoader workers on each read(batch_size) list of (id, x) rows."""
    return [(i, 0.0 if x is None else x) for i, x in rows]


def get_next_dataloader(mc_client, num_workers):
    # A table slice, e.g. odps://project/tables/test_input?start=0&end=1024; fetching it commits the
    # previous one. Raises aimaster.data.OutOfRangeException when no slice is left.
    table_path = mc_client.get_next_slice()
    table_dataset = mc_client.create_torch_dataset(table_path, batch_size=1, num_threads=2, capacity=512,
                                                   transform_fn=fill_nulls)
    return torch.utils.data.DataLoader(table_dataset, batch_size=128, num_workers=num_workers)


def predict(values):
    # Each item is read(1): a list of one (id, x) row; the DataLoader collates 128 of them into
    # [[ids, xs]]. Replace with a real model.
    ids, xs = values[0]
    ys = xs.double() * 2.0 + 1.0
    return list(zip(ids.tolist(), ys.tolist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input_table")
    parser.add_argument("output_table")
    parser.add_argument("--slice-size", type=int, default=1024)
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers per slice")
    args = parser.parse_args()
    torch.set_num_threads(1)

    mc_config = elastic_inference.MaxComputeTableConfig(args.input_table, slice_size=args.slice_size,
                                                        output_table=args.output_table)
    mc_client = elastic_inference.MaxComputeTableClient(mc_config)
    writer = mc_client.create_table_writer()
    while True:
        try:
            dataloader = get_next_dataloader(mc_client, args.num_workers)
        except aimaster.data.OutOfRangeException:
            print("All table data have been processed")
            break
        for data in dataloader:
            writer.write(predict(data), col_indices=(0, 1))
    writer.close()  # commits the last slice


if __name__ == "__main__":
    main()
