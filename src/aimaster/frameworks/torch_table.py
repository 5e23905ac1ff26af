"""``MaxComputeTableClient.create_torch_dataset``: PyTorch datasets over table rows.

Each item is what ``common_io``'s ``TableReader.read(batch_size)`` returns -- a list of row tuples,
STRING values as ``bytes`` -- after ``transform_fn``. Two modes:

* ``table_path`` given (PAI ElasticBatch's style: ``get_next_slice()`` then a ``DataLoader`` per slice): the
  dataset reads that row range; under a ``DataLoader`` with workers each worker reads a contiguous
  part of it (``common_io``'s ``slice_id``/``slice_count`` split), so no row is read twice. The main
  process holds the slice; ``get_next_slice()`` / ``writer.close()`` commit it, as in PAI ElasticBatch.
* ``table_path=None``: the dataset walks every slice of the job; each reading process claims whole
  slices lazily (:mod:`aimaster.frameworks.feed`). Consume it through ``dataset.track(loader)``,
  which commits each slice once its rows were consumed and its output rows written with
  ``stream.write(...)``. To let the consumer know which slice a batch came from, items are list (or
  dict) subclasses carrying ``slice_tags``; they compare, index and collate like the plain values,
  and ``default_collate`` keeps the tags (a collate function registered for them).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch.utils.data
from torch.utils.data._utils.collate import default_collate, default_collate_fn_map

import aimaster.frameworks.table_rows as table_rows
from aimaster.errors import ConfigError
from aimaster.frameworks.claims import spec_of, token_of
from aimaster.frameworks.feed import SliceFeed, check_prefetch
from aimaster.frameworks.stream import SliceStream, binding_for


class TaggedRows(list):
    """A list (of rows, or of whatever ``transform_fn`` returned) that knows its slices.

    ``slice_tags``: ``[(slice_id, claim token, input rows)]`` for every item it holds.
    """

    slice_tags: List[tuple]


class TaggedDict(dict):
    """A dict returned by ``transform_fn``, tagged like :class:`TaggedRows`."""

    slice_tags: List[tuple]


def tag(value: Any, tags: List[tuple]) -> Any:
    """``value`` with ``tags`` attached if it is a list, tuple or dict (tuples become lists, as
    ``default_collate`` would make them anyway); other values are returned untagged."""
    if isinstance(value, dict):
        out: Any = TaggedDict(value)
    elif isinstance(value, (list, tuple)):
        out = TaggedRows(value)
    else:
        return value
    out.slice_tags = list(tags)
    return out


def collate_tagged(batch, *, collate_fn_map=None):
    """``default_collate`` of the plain values, tagged with every item's tags in order."""
    tags = [t for item in batch for t in item.slice_tags]
    plain = [dict(item) if isinstance(item, dict) else list(item) for item in batch]
    return tag(default_collate(plain), tags)


# Documented extension point of default_collate: batches of tagged items stay tagged.
default_collate_fn_map[TaggedRows] = collate_tagged
default_collate_fn_map[TaggedDict] = collate_tagged


class TableSliceDataset(torch.utils.data.IterableDataset):
    """Row batches of one slice (``table_path``) or of every slice of the job (``None``)."""

    def __init__(self, client, table_path: Optional[str], batch_size: int = 1, selected_cols=None,
                 excluded_cols=None, num_threads: int = 1, capacity: int = 1024,
                 transform_fn: Optional[Callable] = None, prefetch_slices: int = 1):
        if transform_fn is not None and not callable(transform_fn):
            raise ConfigError(f"transform_fn must be callable, got {transform_fn!r}")
        self._client = client
        self.table_path = table_path
        self.batch_size = table_rows.check_batch_size(batch_size)
        self.num_threads = table_rows.optional_int(num_threads, "num_threads")
        self.capacity = table_rows.optional_int(capacity, "capacity")
        self.transform_fn = transform_fn
        self.prefetch_slices = prefetch_slices
        self.selected_cols = selected_cols
        self.excluded_cols = excluded_cols
        self._spec = spec_of(client)
        url = client.dataset.plan["source"]["url"]
        # Column errors surface here, in the caller's process, not in a DataLoader worker.
        self._columns = table_rows.resolve_columns(url, selected_cols, excluded_cols)
        check_prefetch(prefetch_slices)
        if table_path is not None and (not isinstance(table_path, str) or not table_path):
            raise ConfigError(f"table_path must be a table URL from get_next_slice(), got {table_path!r}")

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None  # live etcd connections never cross into DataLoader workers
        return state

    def __iter__(self) -> Iterator[Any]:
        if self.table_path is not None:
            return self._one_slice()
        return self._all_slices()

    # ------------------------------------------------------------------ table_path: slice by slice
    def _one_slice(self) -> Iterator[Any]:
        from common_io.exception import OutOfRangeException
        from common_io.table import TableReader

        info = torch.utils.data.get_worker_info()
        part, parts = (info.id, info.num_workers) if info is not None else (0, 1)
        with TableReader(self.table_path, selected_cols=",".join(self._columns), slice_id=part, slice_count=parts,
                         num_threads=self.num_threads, capacity=self.capacity) as reader:
            while True:
                try:
                    rows = reader.read(self.batch_size)
                except OutOfRangeException:
                    return
                yield self.transform_fn(rows) if self.transform_fn is not None else rows

    # ------------------------------------------------------------------ every slice, claimed lazily
    def _load(self, dataset, claim) -> List[List[tuple]]:
        url, start, end = table_rows.slice_range(dataset, claim.index)
        claim.items = end - start
        return table_rows.read_batches(url, start, end, self._columns, self.batch_size)

    def _all_slices(self) -> Iterator[Any]:
        for claim, batches in SliceFeed(self._spec, self._load, self.prefetch_slices):
            token = token_of(claim)
            for rows in batches:
                value = self.transform_fn(rows) if self.transform_fn is not None else rows
                yield tag(value, [(claim.slice_id, token, len(rows))])

    def track(self, loader, on_slice_done: Optional[Callable[[str], None]] = None,
              filter_value: Any = None) -> SliceStream:
        """Iterate ``loader`` over this (``table_path=None``) dataset, committing slices as they
        complete; write output rows with ``stream.write(rows, col_indices)``."""
        if self.table_path is not None:
            raise ConfigError("a dataset over one table_path is committed by get_next_slice() / writer.close(); "
                              "track() is for create_torch_dataset(table_path=None)")
        if self._client is None or os.getpid() != self._spec.owner_pid:
            raise ConfigError("track() is called in the process that created the dataset")
        self._spec.tracked = True
        return SliceStream(binding_for(self._client, filter_value), loader, on_slice_done)
