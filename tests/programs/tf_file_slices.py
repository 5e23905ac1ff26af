"""A TF2 eager file job: PosixFileClient.create_tf_dataset through .map/.batch/.prefetch.

usage: tf_file_slices.py INPUT_DIR OUTPUT_DIR SLICE_SIZE
One output line per input file, "<relative path>\t<file content>", in its slice's output file.
"""

import os
import sys

import tensorflow as tf

import aimaster.frameworks
from aimaster import inference as elastic_inference


def main() -> None:
    input_dir, output_dir, slice_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = elastic_inference.PosixFileClient(elastic_inference.PosixFileConfig(
        input_dir=input_dir, output_dir=output_dir, slice_size=slice_size))
    dataset = client.create_tf_dataset()
    dataset = dataset.map(lambda e: {"slice_id": e["slice_id"], "path": e["path"],
                                     "text": tf.strings.strip(tf.io.read_file(e["path"]))})
    dataset = dataset.shuffle(7, seed=1).batch(3).prefetch(2)  # shuffling mixes slices within batches
    stream = aimaster.frameworks.track(client, dataset)
    for batch in stream:
        for sid, path, text in zip(stream.slice_ids, batch["path"].numpy(), batch["text"].numpy()):
            rel = os.path.relpath(path.decode(), input_dir)
            stream.output(sid, suffix=".txt").write(f"{rel}\t{text.decode()}\n")
    print(f"committed={stream.committed} lost={stream.lost}", flush=True)


if __name__ == "__main__":
    main()
