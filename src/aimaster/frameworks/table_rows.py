"""Reading a table slice's rows the way ``common_io`` returns them, in any process.

Both framework adapters need the same two things: the column selection resolved once, with the
SDK's errors (``selected_cols`` and ``excluded_cols`` together, an unknown column), and the rows of a
row range as ``common_io``'s ``read(batch_size)`` would return them (tuples, STRING as ``bytes``,
every batch full but the slice's last). A reading process opens its own table source: file handles
and MaxCompute sessions never cross ``fork``.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

from aimaster.errors import ConfigError, SchemaError, TableIOError

_sources: Dict[Tuple[int, str], Any] = {}
_lock = threading.Lock()


def split_cols(cols: Any, what: str) -> List[str]:
    if cols is None or cols == "":
        return []
    if isinstance(cols, str):
        return [c.strip() for c in cols.split(",") if c.strip()]
    if isinstance(cols, (list, tuple)) and all(isinstance(c, str) for c in cols):
        return list(cols)
    raise ConfigError(f"{what} must be a comma-separated string of column names, got {cols!r}")


def source_for(url: str):
    """This process's source for ``url`` (opened once per process)."""
    from aimaster.io.tables import open_table_source

    key = (os.getpid(), url)
    with _lock:
        source = _sources.get(key)
        if source is None:
            source = _sources[key] = open_table_source(url)
        return source


def resolve_columns(url: str, selected_cols: Any, excluded_cols: Any) -> List[str]:
    """The column names to read, validated against the table's schema."""
    selected = split_cols(selected_cols, "selected_cols")
    excluded = split_cols(excluded_cols, "excluded_cols")
    if selected and excluded:
        raise ConfigError(f"selected_cols and excluded_cols cannot both be given (reading {url})")
    source = source_for(url)
    names = [c.name for c in source.schema]
    if excluded:
        unknown = [c for c in excluded if c not in names]
        if unknown:
            raise SchemaError(f"excluded column {unknown[0]!r} does not exist in table {url}")
        selected = [n for n in names if n not in excluded]
    return source.column_names(selected or None)


def read_batches(url: str, start: int, end: int, columns: Sequence[str], batch_size: int) -> List[List[tuple]]:
    """Rows ``[start, end)`` in lists of ``batch_size`` row tuples (the last may be shorter)."""
    rows: List[tuple] = []
    for part in source_for(url).read(start, end, list(columns), batch_rows=8192, strings_as_bytes=True):
        rows.extend(part)
    if len(rows) != end - start:
        raise TableIOError(f"table {url} returned {len(rows)} rows for rows [{start}, {end}): did it change "
                           "while the job was running?")
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def check_batch_size(batch_size: Any) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def slice_range(dataset, index: int) -> Tuple[str, int, int]:
    """(table URL, first row, end row) of a slice, from the dataset's plan."""
    source = dataset.plan["source"]
    lo, hi = dataset.item_range(index)
    offset = int(source.get("offset") or 0)
    return source["url"], offset + lo, offset + hi


def optional_int(value: Optional[int], what: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{what} must be a non-negative integer, got {value!r}")
    return value
