"""Rows of Python values <-> Arrow, in both directions, column at a time.

Reading converts each Arrow column with one ``to_pylist()`` call and zips the columns into row tuples:
the per-value work happens in Arrow's C++ code, which is what keeps reads close to raw pyarrow speed.
Writing goes the other way: rows are transposed column by column (``map(itemgetter(k), rows)``) and
each column is converted and checked by :func:`aimaster.io.tables.types.to_arrow`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence as SequenceABC
from operator import itemgetter
from typing import Any, Dict, List, Mapping, Optional, Sequence

import pyarrow as pa

from aimaster.errors import SchemaError
from aimaster.io.tables.types import Column, arrow_type, to_arrow


def batch_to_rows(batch: pa.RecordBatch, strings_as_bytes: bool = False) -> List[tuple]:
    """The rows of ``batch`` as tuples of Python values (STRING as ``bytes`` if asked)."""
    if batch.num_columns == 0:
        return [()] * batch.num_rows
    columns = [_column_to_pylist(col, strings_as_bytes) for col in batch.columns]
    return list(zip(*columns))


def _column_to_pylist(arr: pa.Array, strings_as_bytes: bool) -> List[Any]:
    kind = arr.type
    if pa.types.is_dictionary(kind):
        arr = arr.cast(kind.value_type)
        kind = arr.type
    if strings_as_bytes and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        # A zero-copy reinterpretation: Arrow hands back bytes objects without a Python encode loop.
        arr = arr.cast(pa.large_binary() if pa.types.is_large_string(kind) else pa.binary())
    elif pa.types.is_timestamp(kind) and kind.unit == "ns":
        # Python datetimes hold microseconds; nanosecond columns (pandas' default) would not convert.
        arr = arr.cast(pa.timestamp("us", kind.tz), safe=False)
    return arr.to_pylist()


class ColumnBatch(SequenceABC):
    """Rows that arrived as columns (one Python list per column): a sequence of row tuples to code
    that wants rows, and the columns as they are to :func:`rows_to_table`, which so skips turning
    an array batch into rows only to turn it back into columns."""

    __slots__ = ("columns", "_n")

    def __init__(self, columns: List[List[Any]]):
        if not columns:
            raise ValueError("a column batch needs at least one column")
        self.columns = columns
        self._n = len(columns[0])

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return list(zip(*(c[i] for c in self.columns)))
        return tuple(c[i] for c in self.columns)

    def __iter__(self):
        return zip(*self.columns)


def normalize_rows(values: Any) -> Sequence[Sequence[Any]]:
    """Accept a list of row tuples/lists, anything with ``tolist()`` (a 2-D numpy array), or a tuple
    of equally long 1-D column arrays, which is what a TF session returns for a batched dataset
    (``sess.run(batch)`` in PAI ElasticBatch's TF example). Column arrays and 2-D numpy arrays become a
    :class:`ColumnBatch` (each column converted by one ``tolist()`` call)."""
    if isinstance(values, ColumnBatch):
        return values
    if isinstance(values, tuple) and values and all(getattr(v, "ndim", None) == 1 for v in values):
        lengths = {len(v) for v in values}
        if len(lengths) == 1:
            return ColumnBatch([v.tolist() for v in values])
    np = sys.modules.get("numpy")
    if np is not None and isinstance(values, np.ndarray) and values.ndim == 2 and values.shape[1] > 0:
        return ColumnBatch(values.T.tolist())
    if isinstance(values, (list, tuple)):
        return values
    tolist = getattr(values, "tolist", None)
    if callable(tolist):
        return tolist()
    return list(values)


def check_col_indices(col_indices: Optional[Sequence[int]], schema: Sequence[Column], table: str) -> List[int]:
    """Validate ``col_indices`` against the output schema; ``None`` means every column in order."""
    width = len(schema)
    if col_indices is None:
        return list(range(width))
    try:
        indices = [int(i) for i in col_indices]
    except (TypeError, ValueError):
        raise SchemaError(f"col_indices {col_indices!r} for {table} must be integers")
    for i in indices:
        if not 0 <= i < width:
            raise SchemaError(f"column index {i} is out of range for {table}, which has {width} columns")
    if len(set(indices)) != len(indices):
        raise SchemaError(f"col_indices {list(indices)} for {table} repeats a column")
    return indices


def check_row(index: int, row: Any, table: str) -> None:
    """SchemaError unless ``row`` can be a row: a sequence of values, not a string or a mapping."""
    if isinstance(row, (str, bytes, Mapping)) or not hasattr(row, "__len__"):
        raise SchemaError(f"row {index} written to {table} is a {type(row).__name__}, not a tuple of values "
                          "(write a list of row tuples)")


def rows_to_table(
    rows: Sequence[Sequence[Any]],
    col_indices: Optional[Sequence[int]],
    schema: Sequence[Column],
    table: str,
) -> pa.Table:
    """A full-width Arrow table of ``rows``: the values fill ``col_indices``, other columns are NULL.

    Raises SchemaError (before the caller writes anything) when a row's length differs from
    ``col_indices``, an index is unknown, or a value does not fit its column's type.
    """
    indices = check_col_indices(col_indices, schema, table)
    rows = normalize_rows(rows)
    n = len(rows)
    if isinstance(rows, ColumnBatch):
        if len(rows.columns) != len(indices):
            raise SchemaError(f"row 0 written to {table} has {len(rows.columns)} values but col_indices names "
                              f"{len(indices)} columns ({indices})")
        return _columns_to_table(dict(zip(indices, rows.columns)) if n else {}, n, indices, schema, table)
    # Checks and transposition run in C loops (set/map/itemgetter): a Python step per row would cost
    # more than converting and encoding the values.
    if not set(map(type, rows)) <= {tuple, list}:
        for i, row in enumerate(rows):
            check_row(i, row, table)
    lengths = set(map(len, rows))
    if lengths and lengths != {len(indices)}:
        bad = next(i for i, r in enumerate(rows) if len(r) != len(indices))
        raise SchemaError(
            f"row {bad} written to {table} has {len(rows[bad])} values but col_indices names "
            f"{len(indices)} columns ({indices})"
        )
    columns_by_index: Dict[int, List[Any]] = {
        index: list(map(itemgetter(k), rows)) for k, index in enumerate(indices)} if n else {}
    return _columns_to_table(columns_by_index, n, indices, schema, table)


def _columns_to_table(columns_by_index: Dict[int, List[Any]], n: int, indices: List[int],
                      schema: Sequence[Column], table: str) -> pa.Table:
    arrays = []
    for j, column in enumerate(schema):
        if j in columns_by_index:
            arrays.append(to_arrow(columns_by_index[j], column, table))
        elif n == 0 and j in indices:
            arrays.append(pa.array([], arrow_type(column, table)))
        else:
            arrays.append(pa.nulls(n, arrow_type(column, table)))
    return pa.Table.from_arrays(arrays, names=[c.name for c in schema])


def drop_filtered(rows: Sequence[Sequence[Any]], filter_value: Any) -> Sequence[Sequence[Any]]:
    """Rows that contain no value equal to ``filter_value``.

    Booleans only match booleans (``filter_value=0`` must not drop every ``False``); numpy scalars
    match their Python equals; array-valued cells never match.
    """
    if filter_value is None:
        return rows
    fbool = isinstance(filter_value, bool)

    def matches(v: Any) -> bool:
        if isinstance(v, bool) != fbool:
            return False
        try:
            eq = v == filter_value
            return bool(eq) if getattr(eq, "shape", ()) == () else False
        except (TypeError, ValueError):
            return False

    return [r for r in rows if not any(matches(v) for v in r)]
