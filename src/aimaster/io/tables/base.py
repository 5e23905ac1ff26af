"""The two interfaces every table backend implements: a row-range source and an exactly-once sink.

A backend only knows how to produce Arrow record batches for a row range and how to stage, publish
and discard a slice's rows. Everything users touch -- range checks, column selection and its
errors, conversion to Python tuples, batching, schema checks on writes -- lives here, once.
"""

from __future__ import annotations

import abc
import re
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import pyarrow as pa

from aimaster.data.outputs import OutputSink, StagedRef
from aimaster.errors import SchemaError
from aimaster.io.staging import StageLost
from aimaster.io.tables.rows import batch_to_rows, normalize_rows, rows_to_table
from aimaster.io.tables.types import Column

DEFAULT_BATCH_ROWS = 8192

__all__ = ["DEFAULT_BATCH_ROWS", "StageLost", "StageWriter", "TableSink", "TableSource", "check_id"]


class TableSource(abc.ABC):
    """A table (or one partition of it) that can be read by row range.

    Subclasses set ``url`` and ``schema`` and implement :meth:`row_count` and :meth:`_batches`.
    """

    url: str
    schema: List[Column]
    backend: str = ""

    @abc.abstractmethod
    def row_count(self) -> int:
        """Number of rows in the table."""

    @abc.abstractmethod
    def _batches(self, start: int, end: int, names: List[str]) -> Iterator[pa.RecordBatch]:
        """Record batches holding exactly rows ``[start, end)`` with columns ``names``, in order.

        Implementations must not read rows outside the range when the format lets them avoid it.
        """

    def describe(self) -> Dict[str, Any]:
        """JSON-able dict that reopens this source elsewhere (see ``source_from_description``)."""
        return {"backend": self.backend, "url": self.url}

    def column_names(self, columns: Optional[Sequence[str]] = None) -> List[str]:
        """Validate a column selection (None: all columns); SchemaError names an unknown column."""
        known = [c.name for c in self.schema]
        if columns is None:
            return known
        if isinstance(columns, str):
            columns = [c.strip() for c in columns.split(",") if c.strip()]
        known_set = set(known)
        for name in columns:
            if name not in known_set:
                raise SchemaError(f"column {name!r} does not exist in table {self.url} "
                                  f"(columns: {', '.join(known)})")
        return list(columns)

    def read_arrow(self, start: int = 0, end: Optional[int] = None,
                   columns: Optional[Sequence[str]] = None) -> Iterator[pa.RecordBatch]:
        """Rows ``[start, end)`` as Arrow record batches (``end`` defaults to, and is capped at, the
        row count)."""
        names = self.column_names(columns)
        start, end = self._clip(start, end)
        if end <= start:
            return iter(())
        return self._batches(start, end, names)

    def read(self, start: int = 0, end: Optional[int] = None, columns: Optional[Sequence[str]] = None,
             batch_rows: int = DEFAULT_BATCH_ROWS, strings_as_bytes: bool = False) -> Iterator[List[tuple]]:
        """Rows ``[start, end)`` as lists of at most ``batch_rows`` tuples of Python values.

        Arguments are checked here, at the call (an unknown column raises now, not at the first
        ``next``); rows are then read lazily.
        """
        if batch_rows <= 0:
            raise ValueError(f"batch_rows must be positive, got {batch_rows}")
        return self._rows(self.read_arrow(start, end, columns), batch_rows, strings_as_bytes)

    @staticmethod
    def _rows(batches: Iterator[pa.RecordBatch], batch_rows: int, strings_as_bytes: bool) -> Iterator[List[tuple]]:
        for batch in batches:
            for offset in range(0, batch.num_rows, batch_rows):
                rows = batch_to_rows(batch.slice(offset, batch_rows), strings_as_bytes)
                if rows:
                    yield rows

    def _clip(self, start: int, end: Optional[int]) -> tuple[int, int]:
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad row range [{start}, {end}) for {self.url}")
        count = self.row_count()
        end = count if end is None else min(end, count)
        return min(start, end), end

    def close(self) -> None:
        """Release files and sessions; the default holds none."""

    def __enter__(self) -> TableSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_id(value: Any, what: str) -> str:
    """Slice ids and attempts become file names and block numbers: keep them to a safe alphabet."""
    text = str(value)
    if not _SAFE_ID.fullmatch(text) or ".." in text:
        raise ValueError(f"{what} {value!r} must match [A-Za-z0-9][A-Za-z0-9._-]* (it names files)")
    return text


class StageWriter(abc.ABC):
    """One slice attempt's output being written: rows go in with :meth:`write` (checked against the
    schema first), :meth:`commit` makes them durable in the staging area and returns the ref."""

    def __init__(self, sink: TableSink, slice_id: str, attempt: str):
        self.sink = sink
        self.slice_id = check_id(slice_id, "slice id")
        self.attempt = check_id(attempt, "attempt")
        self.rows = 0
        self.closed = False

    def write(self, rows: Sequence[Sequence[Any]], col_indices: Optional[Sequence[int]] = None) -> int:
        """Check ``rows`` against the schema, then stage them; returns how many rows were taken.

        A SchemaError leaves the stage untouched: nothing of the failing call is written.
        """
        if self.closed:
            raise ValueError(f"stage of slice {self.slice_id} attempt {self.attempt} is closed")
        rows = normalize_rows(rows)
        schema = self.sink.schema_for_write(rows, col_indices)
        if schema is None:
            return 0  # a schema-less sink and no rows: nothing to check, nothing to write
        table = rows_to_table(rows, col_indices, schema, self.sink.url)
        if table.num_rows:
            self._write_table(table)
            self.rows += table.num_rows
        return table.num_rows

    @abc.abstractmethod
    def _write_table(self, table: pa.Table) -> None:
        """Append a full-width, already validated Arrow table to the stage."""

    @abc.abstractmethod
    def commit(self) -> StagedRef:
        """Make the staged rows durable (atomically visible in the staging area) and return the ref."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop whatever was written; idempotent."""


class TableSink(OutputSink):
    """An :class:`OutputSink` for a table: slices are staged as rows, published exactly once."""

    url: str

    @property
    @abc.abstractmethod
    def schema(self) -> Optional[List[Column]]:
        """The output table's columns (None while a Parquet sink's schema is still unknown)."""

    def schema_for_write(self, rows: Sequence[Sequence[Any]],
                         col_indices: Optional[Sequence[int]]) -> Optional[List[Column]]:
        """The schema ``rows`` are checked against; sinks that learn their schema from the first
        write override this (and may answer None for an empty write before they know it)."""
        schema = self.schema
        if schema is None:
            raise SchemaError(f"output table {self.url} has no schema")
        return schema

    @abc.abstractmethod
    def open_stage(self, slice_id: str, attempt: str, **options: Any) -> StageWriter:
        """Start staging one slice attempt's output incrementally.

        ``attempt`` names the attempt and must differ between any two attempts (speculative copies
        included) of a slice: it is the attempt's staging name, so a loser only ever touches its
        own. ``options`` are backend-specific (MaxCompute: the upload ``generation`` to stage into);
        backends ignore the ones they do not use.
        """

    def stage(self, slice_id: str, attempt: str, rows: Sequence[Sequence[Any]],
              col_indices: Optional[Sequence[int]] = None, **options: Any) -> StagedRef:
        """Stage all of a slice attempt's rows at once; durable when it returns.

        Staging the same (slice, attempt) again replaces the earlier staged output.
        """
        writer = self.open_stage(slice_id, attempt, **options)
        try:
            writer.write(rows, col_indices)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> TableSink:
        return cls(**{k: v for k, v in description.items() if k != "kind"})

    def close(self) -> None:
        """Release sessions and handles; the default holds none."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
