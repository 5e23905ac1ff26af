"""A PyTorch ``IterableDataset`` over a file job's slices (``PosixFileClient.create_torch_dataset``).

Each process that iterates it (every ``DataLoader`` worker, or the main process with
``num_workers=0``) claims whole slices lazily, so no item is read twice and none is skipped whatever
the number of workers or the start method. Items are dicts, which ``default_collate`` batches key by
key::

    {"slice_id": "000042", "claim": "1:w0.1234.ab12cd34", "path": "/data/x.jpg", "data": transform(path)}

``slice_id`` names the slice (use it to name outputs); ``claim`` identifies the attempt, for the
consumer's :class:`~aimaster.frameworks.stream.SliceStream`, which commits each slice once all its
items were consumed and its outputs written (``dataset.track(loader)``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional

import torch.utils.data

from aimaster.errors import ConfigError
from aimaster.frameworks.claims import spec_of, token_of
from aimaster.frameworks.feed import SliceFeed, check_prefetch, load_file_slice
from aimaster.frameworks.stream import SliceStream, binding_for

RESERVED = ("slice_id", "claim", "path")


class FileSliceDataset(torch.utils.data.IterableDataset):
    """Dict items over the files of a job's slices; see the module docstring."""

    def __init__(self, client, transform: Optional[Callable[[str], Any]] = None, prefetch_slices: int = 1):
        if transform is not None and not callable(transform):
            raise ConfigError(f"transform must be callable, got {transform!r}")
        self._client = client
        self._spec = spec_of(client)
        self.transform = transform
        self.prefetch_slices = check_prefetch(prefetch_slices)

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None  # live etcd connections never cross into DataLoader workers
        return state

    def _load(self, dataset, claim) -> List[str]:
        return load_file_slice(dataset, claim)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for claim, paths in SliceFeed(self._spec, self._load, self.prefetch_slices):
            sid, token = claim.slice_id, token_of(claim)
            for path in paths:
                item: Dict[str, Any] = {"slice_id": sid, "claim": token, "path": path}
                if self.transform is not None:
                    data = self.transform(path)
                    if isinstance(data, dict):
                        clash = [k for k in data if k in RESERVED]
                        if clash:
                            raise ConfigError(f"transform returned reserved key(s) {clash} for {path}")
                        item.update(data)
                    else:
                        item["data"] = data
                yield item

    def track(self, loader, on_slice_done: Optional[Callable[[str], None]] = None) -> SliceStream:
        """Iterate ``loader`` (a DataLoader over this dataset), committing slices as they complete.

        Write a slice's outputs with ``stream.output(slice_id)`` (or the client's
        ``open_slice_output(slice_id=...)``) while its items are in hand.
        """
        if self._client is None:
            raise ConfigError("track() is called in the process that created the dataset")
        self._spec.tracked = True
        return SliceStream(binding_for(self._client), loader, on_slice_done)
