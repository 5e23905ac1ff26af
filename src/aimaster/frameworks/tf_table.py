"""``MaxComputeTableClient.create_tf_dataset``: TensorFlow datasets over table rows.

* **Graph mode** (TF1 style, ``tf.compat.v1.disable_eager_execution()``): returns
  ``(dataset, table_path_placeholder)`` like PAI's ``TableRecordDataset``. Feed a path from
  ``get_next_slice()`` to the placeholder when running ``iterator.initializer``; the dataset yields
  that slice's rows as tuples of scalar tensors typed by ``record_defaults``. The dataset is a
  ``tf.compat.v1.data.Dataset``, so PAI ElasticBatch's ``dataset.batch(128).make_initializable_iterator()``
  works unchanged. ``get_next_slice()`` / ``writer.close()`` commit, as in PAI ElasticBatch.
* **Eager mode** (TF2): returns a ``tf.data.Dataset`` over every slice of the job, claimed lazily
  as the pipeline pulls rows; elements are ``(values, slice_id)`` with ``values`` the same tuple.
  Keep ``slice_id`` as the last component through ``.map``; consume with
  ``aimaster.frameworks.track(client, dataset)``, which commits each slice once its rows were
  consumed and its output rows written (``stream.write``).

Rows travel through ``from_generator`` as column arrays and are unbatched in TensorFlow, so the
per-row Python cost is only the type conversion, done by the prefetching thread.
"""

from __future__ import annotations

from typing import Any, Iterator, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

import aimaster.frameworks.table_rows as table_rows
from aimaster.errors import SchemaError
from aimaster.frameworks.claims import spec_of
from aimaster.frameworks.feed import SliceFeed, check_prefetch
from aimaster.frameworks.tf_types import ColumnDefault, parse_record_defaults, to_columns

CHUNK_ROWS = 1024


def create_tf_dataset(client, record_defaults, selected_cols=None, excluded_cols=None, num_threads=1,
                      capacity=1024, prefetch_slices: int = 1):
    """See the module docstring: a ``(dataset, placeholder)`` pair in graph mode, a dataset in eager."""
    defaults = parse_record_defaults(record_defaults)
    url = client.dataset.plan["source"]["url"]
    names = table_rows.resolve_columns(url, selected_cols, excluded_cols)
    if len(names) != len(defaults):
        raise SchemaError(f"record_defaults has {len(defaults)} entries but {len(names)} columns are read from "
                          f"{url} ({', '.join(names)}): give one default per column")
    table_rows.optional_int(num_threads, "num_threads")
    capacity = table_rows.optional_int(capacity, "capacity")
    if tf.executing_eagerly():
        return _buffered(_job_dataset(client, names, defaults, prefetch_slices), capacity)
    return _slice_dataset_v1(names, defaults, capacity)


def _buffered(dataset, capacity: int):
    """``capacity``: rows read ahead in the background, as in PAI's TableRecordDataset. (Its
    ``num_threads`` is accepted for compatibility: one generator thread feeds a dataset.)"""
    return dataset.prefetch(capacity) if capacity > 0 else dataset


def _signature(defaults: Sequence[ColumnDefault]) -> Tuple[tf.TensorSpec, ...]:
    return tuple(tf.TensorSpec([None], tf.as_dtype(d.dtype)) for d in defaults)


def slice_columns(table_path: str, names: List[str], defaults: Sequence[ColumnDefault]) -> Iterator[tuple]:
    """The rows of ``table_path`` (with its ``?start=&end=``) as typed column arrays, in chunks.

    Reads through this process's cached table source: opening a table per slice would redo its
    schema and row counting every time.
    """
    from aimaster.io.tables import parse_table_url

    url, start, end = parse_table_url(table_path)
    source = table_rows.source_for(url)
    for rows in source.read(start or 0, end, names, batch_rows=CHUNK_ROWS, strings_as_bytes=True):
        yield to_columns(rows, defaults, names, table_path)


def _slice_dataset_v1(names: List[str], defaults: Sequence[ColumnDefault], capacity: int):
    placeholder = tf.compat.v1.placeholder(tf.string, shape=[], name="table_path")

    def generate(path: bytes) -> Iterator[tuple]:
        yield from slice_columns(path.decode("utf-8"), names, defaults)

    dataset = tf.compat.v1.data.Dataset.from_generator(generate, output_signature=_signature(defaults),
                                                       args=(placeholder,))
    return _buffered(dataset.unbatch(), capacity), placeholder


def _job_dataset(client, names: List[str], defaults: Sequence[ColumnDefault], prefetch_slices: int):
    spec = spec_of(client)

    def load(dataset, claim) -> List[tuple]:
        url, start, end = table_rows.slice_range(dataset, claim.index)
        claim.items = end - start
        return [to_columns(rows, defaults, names, url)
                for rows in table_rows.read_batches(url, start, end, names, CHUNK_ROWS)]

    check_prefetch(prefetch_slices)

    def generate() -> Iterator[Tuple[tuple, Any]]:
        for claim, chunks in SliceFeed(spec, load, prefetch_slices):
            sid = claim.slice_id.encode()
            for columns in chunks:
                yield columns, np.full(len(columns[0]), sid, dtype=object)

    signature = (_signature(defaults), tf.TensorSpec([None], tf.string))
    return tf.data.Dataset.from_generator(generate, output_signature=signature).unbatch()
