"""TF2 eager: one ``tf.data`` pipeline over the whole job, slices claimed as rows are pulled.

    aimaster run -n 2 -- python examples/maxcompute_tf2_eager.py INPUT_TABLE OUTPUT_TABLE [--slice-size N]
    python examples/maxcompute_tf2_eager.py INPUT_TABLE OUTPUT_TABLE                     # standalone

Same tables and "model" as ``maxcompute_torch.py`` (``y = 2x + 1``, NULL x reads as 0.0). In eager
mode ``create_tf_dataset`` returns a ``tf.data.Dataset`` of ``(values, slice_id)`` over every slice
of the job; ``.batch``/``.map``/``.prefetch`` work as usual as long as ``slice_id`` stays the last
component. ``aimaster.frameworks.track`` consumes it and commits each slice once all its rows went
through the loop and their output rows were written with ``stream.write``.
"""

import argparse

import numpy as np
import tensorflow as tf

import aimaster.frameworks
from aimaster import inference as elastic_inference


def predict(values, slice_ids):
    ids, xs = values
    return (ids, xs * 2.0 + 1.0), slice_ids  # the "model"; replace with a real one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input_table")
    parser.add_argument("output_table")
    parser.add_argument("--slice-size", type=int, default=1024)
    args = parser.parse_args()

    mc_config = elastic_inference.MaxComputeTableConfig(args.input_table, slice_size=args.slice_size,
                                                        output_table=args.output_table)
    mc_client = elastic_inference.MaxComputeTableClient(mc_config)
    dataset = mc_client.create_tf_dataset(record_defaults=(0, np.float64(0.0)))
    dataset = dataset.batch(128).map(predict, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
    stream = aimaster.frameworks.track(mc_client, dataset)
    for (ids, ys), _slice_ids in stream:
        stream.write(list(zip(ids.numpy().tolist(), ys.numpy().tolist())), col_indices=(0, 1))
    print(f"All table data have been processed ({stream.committed} slices committed here)")


if __name__ == "__main__":
    main()
