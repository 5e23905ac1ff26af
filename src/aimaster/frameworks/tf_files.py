"""``PosixFileClient.create_tf_dataset``: a TF2 ``tf.data.Dataset`` over a file job's slices.

Elements are ``{"slice_id": tf.string, "path": tf.string}``; slices are claimed lazily as the
pipeline pulls paths. Read and decode in ``.map`` (``tf.io.read_file``, ``tf.io.decode_png``), keep
``slice_id`` in the element, and consume with ``aimaster.frameworks.track(client, dataset)``, which
commits each slice once all its files were consumed and its outputs (``stream.output(slice_id)``)
written.
"""

from __future__ import annotations

from typing import Dict, Iterator

import numpy as np
import tensorflow as tf

from aimaster.errors import ConfigError
from aimaster.frameworks.claims import spec_of
from aimaster.frameworks.feed import SliceFeed, check_prefetch, load_file_slice


def create_tf_dataset(client, prefetch_slices: int = 1) -> tf.data.Dataset:
    if not tf.executing_eagerly():
        raise ConfigError("PosixFileClient.create_tf_dataset() is for TF2 eager code; in graph mode feed the "
                          "paths from get_next_slice() to your own placeholder")
    spec = spec_of(client)
    check_prefetch(prefetch_slices)

    def generate() -> Iterator[Dict[str, np.ndarray]]:
        for claim, paths in SliceFeed(spec, load_file_slice, prefetch_slices):
            yield {"slice_id": np.full(len(paths), claim.slice_id.encode(), dtype=object),
                   "path": np.array([p.encode("utf-8") for p in paths], dtype=object)}

    signature = {"slice_id": tf.TensorSpec([None], tf.string), "path": tf.TensorSpec([None], tf.string)}
    return tf.data.Dataset.from_generator(generate, output_signature=signature).unbatch()
