"""Which slice each item of a batch came from, read off the batch itself.

Items carry their slice in one of three collate-friendly forms, so batches keep it too:

* a mapping with ``"slice_id"`` (and ``"claim"``, the attempt token) keys: the file datasets' dict
  items; ``default_collate`` turns them into lists, TensorFlow into string tensors;
* a ``slice_tags`` attribute: the table datasets' row lists (see
  :mod:`aimaster.frameworks.torch_table`), whose collate function concatenates the tags;
* a tuple whose last component is the slice ids: TensorFlow's ``(values, slice_id)`` elements.

A tag is ``(slice_id, token, units)``: ``token`` identifies the attempt (None when the reader ran in
this process and the slice id is enough), ``units`` counts input units (files, rows) in the item.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple

Tag = Tuple[str, Optional[str], int]


def _strings(value: Any) -> Optional[List[str]]:
    """A string, bytes, or a sequence / array / tensor of them, as a list of str; None otherwise."""
    if hasattr(value, "numpy") and callable(value.numpy):  # a TensorFlow tensor
        value = value.numpy()
    if isinstance(value, (str, bytes)):
        value = [value]
    elif hasattr(value, "tolist") and getattr(value, "dtype", None) is not None:
        if getattr(value.dtype, "kind", "") not in ("O", "S", "U"):
            return None
        value = value.tolist()
        if isinstance(value, (str, bytes)):
            value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        return None
    out = []
    for v in value:
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if not isinstance(v, str):
            return None
        out.append(v)
    return out


def tags_of(batch: Any) -> Optional[List[Tag]]:
    """The tags of every item in ``batch``, in order; None if the batch carries none."""
    tags = getattr(batch, "slice_tags", None)
    if tags is not None:
        return [(str(s), t, int(u)) for s, t, u in tags]
    if isinstance(batch, Mapping) and "slice_id" in batch:
        ids = _strings(batch["slice_id"])
        if ids is None:
            return None
        tokens: Sequence[Optional[str]] = (_strings(batch["claim"]) if "claim" in batch else None) or []
        if len(tokens) != len(ids):
            tokens = [None] * len(ids)
        return [(sid, tok, 1) for sid, tok in zip(ids, tokens)]
    if isinstance(batch, tuple) and len(batch) >= 2:
        ids = _strings(batch[-1])
        if ids is not None:
            return [(sid, None, 1) for sid in ids]
    return None
