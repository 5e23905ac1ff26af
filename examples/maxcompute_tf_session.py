"""The seed's TensorFlow example: TF1-style Session over table slices, on TensorFlow 2.

    aimaster run -n 2 -- python examples/maxcompute_tf_session.py INPUT_TABLE OUTPUT_TABLE [--slice-size N]
    python examples/maxcompute_tf_session.py INPUT_TABLE OUTPUT_TABLE                    # standalone

Same tables and "model" as ``maxcompute_torch.py`` (``y = 2x + 1``, NULL x reads as 0.0 through
``record_defaults``), computed in the graph. Corrected from the seed: ``tf.Session`` is
``tf.compat.v1.Session`` with eager execution disabled (TF2 has no ``tf.Session``), the slice loop
is inside the ``with`` block (the seed's indentation ran ``sess.run`` once, after every slice had
been claimed), and the fetched columns are turned into rows before ``writer.write``.
"""

import argparse

import numpy as np
import tensorflow as tf

import aimaster
from aimaster import inference as elastic_inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input_table")
    parser.add_argument("output_table")
    parser.add_argument("--slice-size", type=int, default=1024)
    args = parser.parse_args()
    tf.compat.v1.disable_eager_execution()

    mc_config = elastic_inference.MaxComputeTableConfig(args.input_table, slice_size=args.slice_size,
                                                        output_table=args.output_table)
    mc_client = elastic_inference.MaxComputeTableClient(mc_config)
    # One default per column: its type is the column's tensor type, its value replaces NULL.
    table_dataset, table_path_placeholder = mc_client.create_tf_dataset(record_defaults=(0, np.float64(0.0)))
    iterator = table_dataset.batch(128).make_initializable_iterator()
    ids, xs = iterator.get_next()
    ys = xs * 2.0 + 1.0  # the "model"; replace with a real graph
    writer = mc_client.create_table_writer()
    with tf.compat.v1.Session() as sess:
        while True:
            try:
                # A slice, e.g. odps://project/tables/test_input?start=0&end=1024; fetching it commits
                # the previous one (after flushing the rows written for it).
                table_path = mc_client.get_next_slice()
            except aimaster.data.OutOfRangeException:
                print("All table data have been processed")
                break
            sess.run(iterator.initializer, feed_dict={table_path_placeholder: table_path})
            while True:
                try:
                    id_values, y_values = sess.run((ids, ys))
                except tf.errors.OutOfRangeError:
                    break  # this slice is done
                writer.write(list(zip(id_values.tolist(), y_values.tolist())), col_indices=(0, 1))
    writer.close()  # commits the last slice


if __name__ == "__main__":
    main()
