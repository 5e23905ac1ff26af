"""``common_io.table``: PAI's TableReader / TableWriter on top of :mod:`aimaster.io.tables`.

Behaviour follows PAI's COMMON_IO guide:

* ``read(n)`` returns a list of row tuples (STRING values as ``bytes``); near the end it returns the
  rows that are left, and once none are left it raises
  :class:`common_io.exception.OutOfRangeException`. ``allow_smaller_final_batch`` is accepted for
  signature compatibility (a short final batch is always returned, so no row is ever dropped).
* ``?start=&end=`` in the table path limit the rows; ``slice_id``/``slice_count`` then split that range
  into contiguous, near-equal parts; ``start_pos``/``end_pos`` are the absolute row numbers of this
  reader's part and ``seek(offset)`` takes an absolute row number within them.
* ``num_threads`` / ``capacity`` > 0 turn on background prefetching: ``num_threads`` readers fetch
  chunks ahead, in order, never more than ``capacity`` rows at a time.
* ``TableWriter`` writes straight to the table: its rows are staged and published when it is closed
  (for MaxCompute: uploaded in its own upload session, committed on close); leaving its ``with``
  block on an exception discards them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import secrets
import time
from typing import Any, Deque, Iterator, List, Optional, Sequence

from aimaster.errors import ConfigError, SchemaError, UrlError
from aimaster.io.tables import open_table_sink, open_table_source, parse_table_url
from aimaster.io.tables.rows import normalize_rows
from aimaster.io.tables.types import python_type_of
from common_io.exception import OutOfRangeException

_SYNC_CHUNK_ROWS = 4096
_DEFAULT_CAPACITY = 1024


def _split_cols(cols: Any) -> List[str]:
    if not cols:
        return []
    if isinstance(cols, str):
        return [c.strip() for c in cols.split(",") if c.strip()]
    return [str(c) for c in cols]


MIN_PREFETCH_ROWS = 65536


class TableReader:
    """Reads a table (a row range of it, a slice of that) as lists of row tuples."""

    def __init__(self, table: str, selected_cols: Any = "", excluded_cols: Any = "", slice_id: int = 0,
                 slice_count: int = 1, num_threads: int = 0, capacity: int = 0):
        selected, excluded = _split_cols(selected_cols), _split_cols(excluded_cols)
        if selected and excluded:
            raise ConfigError(f"selected_cols and excluded_cols cannot both be given (reading {table})")
        if slice_count < 1 or not 0 <= slice_id < slice_count:
            raise ConfigError(f"slice_id {slice_id} must be in [0, slice_count={slice_count}) (reading {table})")
        if num_threads < 0 or capacity < 0:
            raise ConfigError(f"num_threads and capacity must be >= 0 (reading {table})")
        base, start, end = parse_table_url(table)
        self.table = table
        self._source = open_table_source(base)
        try:
            total = self._source.row_count()
            lo = min(start or 0, total)
            hi = total if end is None else min(end, total)
            hi = max(hi, lo)
            size, extra = divmod(hi - lo, slice_count)
            self.start_pos = lo + slice_id * size + min(slice_id, extra)
            self.end_pos = self.start_pos + size + (1 if slice_id < extra else 0)
            names = [c.name for c in self._source.schema]
            if excluded:
                unknown = [c for c in excluded if c not in names]
                if unknown:
                    raise SchemaError(f"excluded column {unknown[0]!r} does not exist in table {base}")
                selected = [n for n in names if n not in excluded]
            self._columns = self._source.column_names(selected or None)
        except BaseException:
            self._source.close()
            raise
        self._types = {c.name: c.type for c in self._source.schema}
        self._prefetch = num_threads > 0 or capacity > 0
        self._threads = max(1, num_threads)
        self._capacity = capacity or _DEFAULT_CAPACITY * self._threads
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._pos = self.start_pos
        self._closed = False
        self._restart(self.start_pos)

    # --- public API ------------------------------------------------------------------------------
    def get_row_count(self) -> int:
        """Rows this reader covers (its slice of the range)."""
        return self.end_pos - self.start_pos

    def get_schema(self):
        """The selected columns as a numpy structured array of (colname, typestr, pytype)."""
        entries = [(name, self._types[name].lower(), python_type_of(self._types[name])) for name in self._columns]
        entries = [(n, t, bytes if p is str else p) for n, t, p in entries]
        try:
            import numpy as np
        except ImportError:  # numpy is optional: the same triples as a list
            return entries
        return np.array(entries, dtype=[("colname", object), ("typestr", object), ("pytype", object)])

    def read(self, num_records: int = 1, allow_smaller_final_batch: bool = False) -> List[tuple]:
        """The next ``num_records`` rows (fewer at the end); OutOfRangeException when none are left."""
        self._check_open()
        if num_records <= 0:
            raise ValueError(f"num_records must be positive, got {num_records}")
        out: List[tuple] = []
        while len(out) < num_records:
            if self._buf_i >= len(self._buf):
                chunk = self._next_chunk()
                if chunk is None:
                    break
                self._buf, self._buf_i = chunk, 0
            take = min(num_records - len(out), len(self._buf) - self._buf_i)
            out.extend(self._buf[self._buf_i:self._buf_i + take])
            self._buf_i += take
        if not out:
            raise OutOfRangeException("End of table reached!")
        self._pos += len(out)
        return out

    def seek(self, offset: int = 0) -> None:
        """Continue reading at absolute row ``offset`` (``start_pos <= offset <= end_pos``)."""
        self._check_open()
        if not self.start_pos <= offset <= self.end_pos:
            raise OutOfRangeException(f"seek offset {offset} is outside [{self.start_pos}, {self.end_pos}] "
                                      f"of {self.table}")
        self._restart(offset)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_prefetch()
        self._source.close()

    def __enter__(self) -> TableReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple]:
        while True:
            try:
                yield from self.read(_SYNC_CHUNK_ROWS, allow_smaller_final_batch=True)
            except OutOfRangeException:
                return

    # --- chunk supply ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"TableReader of {self.table} is closed")

    def _restart(self, pos: int) -> None:
        self._stop_prefetch()
        self._pos = pos
        self._buf: List[tuple] = []
        self._buf_i = 0
        if self._prefetch:
            self._next_fetch = pos
            # Fetching fewer rows than a storage block (a Parquet row group, a tunnel request)
            # re-decodes that block for every chunk: PAI's default capacity=1024 made reads 5x
            # slower than pyarrow. Chunks are therefore at least MIN_PREFETCH_ROWS
            # rows (a typical row group).
            self._chunk_rows = max(MIN_PREFETCH_ROWS, self._capacity // self._threads)
            self._futures: Deque[concurrent.futures.Future] = collections.deque()
            self._executor = concurrent.futures.ThreadPoolExecutor(self._threads,
                                                                   thread_name_prefix="common_io-prefetch")
            self._fill()
        else:
            self._rows = self._source.read(pos, self.end_pos, self._columns, batch_rows=_SYNC_CHUNK_ROWS,
                                           strings_as_bytes=True)

    def _fetch(self, start: int, end: int) -> List[tuple]:
        rows: List[tuple] = []
        for batch in self._source.read(start, end, self._columns, batch_rows=end - start, strings_as_bytes=True):
            rows.extend(batch)
        return rows

    def _fill(self) -> None:
        """Keep ``num_threads`` chunks in flight: at most ``capacity`` rows fetched ahead."""
        while len(self._futures) < self._threads and self._next_fetch < self.end_pos:
            end = min(self._next_fetch + self._chunk_rows, self.end_pos)
            self._futures.append(self._executor.submit(self._fetch, self._next_fetch, end))
            self._next_fetch = end

    def _next_chunk(self) -> Optional[List[tuple]]:
        if not self._prefetch:
            return next(self._rows, None)
        if not self._futures:
            return None
        rows = self._futures.popleft().result()
        self._fill()
        return rows

    def _stop_prefetch(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        rows = getattr(self, "_rows", None)
        if rows is not None:
            rows.close()
            self._rows = None


class TableWriter:
    """Writes rows straight to a table; they appear in it when the writer is closed."""

    def __init__(self, table: str, slice_id: int = 0, col_names: Optional[Sequence[str]] = None):
        """``col_names``: the column names of a Parquet output whose schema is inferred from the
        rows (default ``_c0, _c1, ...``); not for a MaxCompute or warehouse table (own schema)."""
        base, start, end = parse_table_url(table)
        if start is not None or end is not None:
            raise UrlError(f"TableWriter needs a table URL without a row range, got {table}")
        self.table = table
        if col_names is not None:
            from aimaster.io.tables.col_names import output_col_names

            self._sink = open_table_sink(base, col_names=output_col_names(base, col_names))
        else:
            self._sink = open_table_sink(base)
        # A name of its own, sorted by creation time: writers never overwrite each other's output.
        # The trailing 0 is the "slice number" MaxCompute derives the block id from (block 0 of a
        # session this writer owns).
        self._slice_id = f"tw{time.time_ns()}-{os.getpid()}-{secrets.token_hex(3)}-{int(slice_id)}-0"
        self._stage = self._sink.open_stage(self._slice_id, "0")
        self._closed = False

    def write(self, values: Any, col_indices: Optional[Sequence[int]] = None) -> None:
        """Write rows (a list of tuples, or a 2-D array) filling the columns ``col_indices``."""
        if self._closed:
            raise ValueError(f"TableWriter of {self.table} is closed")
        self._stage.write(normalize_rows(values), col_indices)

    def close(self) -> None:
        """Publish everything written (for MaxCompute: commit the writer's upload session)."""
        if self._closed:
            return
        self._closed = True
        ref = self._stage.commit()
        self._sink.publish(self._slice_id, ref)
        self._sink.finalize([(self._slice_id, ref)])
        self._sink.close()

    def abort(self) -> None:
        """Throw away everything written."""
        if not self._closed:
            self._closed = True
            self._stage.abort()
            self._sink.close()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
