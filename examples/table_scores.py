"""A first table job: score every row of a Parquet table, write (id, score) to another, exactly once.

    aimaster run -n 2 -- python examples/table_scores.py INPUT OUTPUT [--slice-size N]

INPUT is a Parquet file or directory with columns ``id`` (int) and ``text`` (string); OUTPUT is a
directory that receives one ``part-<slice>.parquet`` per committed slice, with the columns
``id`` and ``score``. The same program runs unchanged against MaxCompute
(``odps://project/tables/t``, without ``col_names``: the output table has its own schema).
"""

import argparse

import aimaster
import common_io
from aimaster import inference as elastic_inference


def score(text: bytes) -> float:
    """The "model": a stand-in a real job replaces with its own inference. ``common_io`` reads
    STRING columns as ``bytes``, as PAI's does."""
    return float(sum(text) % 1000) / 1000.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--slice-size", type=int, default=1000)
    args = parser.parse_args()

    client = elastic_inference.MaxComputeTableClient(elastic_inference.MaxComputeTableConfig(
        args.input, slice_size=args.slice_size, output_table=args.output))
    writer = client.create_table_writer(col_names=["id", "score"])  # Parquet output: name its columns
    while True:
        try:
            path = client.get_next_slice()  # commits the previous slice; INPUT?start=..&end=..
        except aimaster.data.OutOfRangeException:
            break
        with common_io.table.TableReader(path, selected_cols="id,text") as reader:
            while True:
                try:
                    rows = reader.read(256, allow_smaller_final_batch=True)
                except common_io.exception.OutOfRangeException:  # this slice's rows are all read
                    break
                writer.write([(row_id, score(text)) for row_id, text in rows], col_indices=(0, 1))
    writer.close()  # commits the last slice


if __name__ == "__main__":
    main()
