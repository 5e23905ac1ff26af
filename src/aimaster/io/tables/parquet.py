"""Parquet tables: a ``.parquet`` file or a directory of them, read by row range and written as
one part file per slice.

A directory's files are taken in sorted path order (recursively, skipping names that start with
``_`` or ``.`` -- pyarrow's dataset convention, which also hides aimaster's staging area), and their
rows, concatenated, are the table. Only the footers are read up front; a row range then decodes just
the row groups that overlap it, with only the selected columns.
"""

from __future__ import annotations

import bisect
import json
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from aimaster.data.outputs import StagedRef
from aimaster.errors import EmptyInputError, InputNotFoundError, SchemaError, TableIOError, UrlError
from aimaster.io.durable import fsync_dir
from aimaster.io.staging import TableStaging
from aimaster.io.tables.base import StageWriter, TableSource
from aimaster.io.tables.localfs import LocalFileSink
from aimaster.io.tables.rows import check_col_indices
from aimaster.io.tables.types import Column, ColumnsLike, arrow_type, format_columns, parse_columns, type_name_of
from aimaster.io.tables.urls import local_path

_READ_BATCH_ROWS = 65536


def _visible(name: str) -> bool:
    return not name.startswith(("_", "."))


def list_parquet_files(path: str) -> List[str]:
    if os.path.isfile(path):
        return [path]
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        found.extend(os.path.join(root, f) for f in files if _visible(f) and f.endswith(".parquet"))
    return sorted(found, key=lambda p: os.path.relpath(p, path))


class ParquetSource(TableSource):
    """Rows of one Parquet file or of a directory's Parquet files, in sorted path order."""

    backend = "parquet"

    def __init__(self, url: str):
        self.url = url
        self.path = local_path(url)
        if not os.path.exists(self.path):
            raise InputNotFoundError(f"Parquet input {self.path} does not exist")
        self.files = list_parquet_files(self.path)
        if not self.files:
            raise EmptyInputError(f"no .parquet files under {self.path}")
        self._meta = [self._footer(f) for f in self.files]
        arrow_schema = self._meta[0].schema.to_arrow_schema()
        for path, meta in zip(self.files[1:], self._meta[1:]):
            other = meta.schema.to_arrow_schema()
            if other.names != arrow_schema.names or other.types != arrow_schema.types:
                raise SchemaError(f"Parquet file {path} has schema {_brief(other)} but {self.files[0]} "
                                  f"has {_brief(arrow_schema)}")
        self.arrow_schema = arrow_schema
        self.schema = [Column(f.name, type_name_of(f.type)) for f in arrow_schema]
        # Row offsets: where each file, and each row group inside it, starts in the table.
        self._file_starts = [0]
        self._group_starts: List[List[int]] = []
        for meta in self._meta:
            starts, pos = [], 0
            for i in range(meta.num_row_groups):
                starts.append(pos)
                pos += meta.row_group(i).num_rows
            self._group_starts.append(starts)
            self._file_starts.append(self._file_starts[-1] + meta.num_rows)

    @staticmethod
    def _footer(path: str) -> pq.FileMetaData:
        try:
            return pq.read_metadata(path)
        except (OSError, pa.ArrowException) as e:
            raise TableIOError(f"cannot read Parquet file {path}: {e}")

    def row_count(self) -> int:
        return self._file_starts[-1]

    def _batches(self, start: int, end: int, names: List[str]) -> Iterator[pa.RecordBatch]:
        unique = list(dict.fromkeys(names))
        first = bisect.bisect_right(self._file_starts, start) - 1
        for i in range(first, len(self.files)):
            file_start = self._file_starts[i]
            if file_start >= end:
                break
            lo, hi = max(start - file_start, 0), min(end - file_start, self._meta[i].num_rows)
            if hi <= lo:
                continue
            yield from self._file_batches(i, lo, hi, unique, names)

    def _file_batches(self, i: int, lo: int, hi: int, unique: List[str], names: List[str]):
        starts = self._group_starts[i]
        g0 = bisect.bisect_right(starts, lo) - 1
        g1 = bisect.bisect_left(starts, hi)  # groups [g0, g1) overlap [lo, hi)
        pos = starts[g0]
        try:
            pf = pq.ParquetFile(self.files[i], metadata=self._meta[i])
        except (OSError, pa.ArrowException) as e:
            raise TableIOError(f"cannot read Parquet file {self.files[i]}: {e}")
        try:
            batches = pf.iter_batches(batch_size=_READ_BATCH_ROWS, row_groups=list(range(g0, g1)),
                                      columns=unique, use_threads=True)
            while pos < hi:
                try:
                    batch = next(batches, None)
                except (OSError, pa.ArrowException) as e:
                    raise TableIOError(f"cannot read Parquet file {self.files[i]}: {e}")
                if batch is None:
                    break
                n = batch.num_rows
                a, b = max(lo - pos, 0), min(hi - pos, n)
                pos += n
                if b > a:
                    if a > 0 or b < n:
                        batch = batch.slice(a, b - a)
                    yield pa.RecordBatch.from_arrays([batch.column(name) for name in names], names=names)
        finally:
            pf.close()


def _brief(schema: pa.Schema) -> str:
    return ",".join(f"{f.name}:{f.type}" for f in schema)


# --- output ----------------------------------------------------------------------------------------


class ParquetSink(LocalFileSink):
    """A directory receiving one ``part-<slice_id>.parquet`` per committed slice.

    The schema is the explicit one, else the one recorded in ``_aimaster_schema.json`` by an earlier
    writer, else inferred from the first rows written and recorded -- with an exclusive create, so
    concurrent first writers in different processes agree on one. Inferred columns are named by
    ``col_names`` (``create_table_writer(col_names=[...])``, ``TableWriter(..., col_names=...)``), else
    ``_c0, _c1, ...``; their types come from the values.
    """

    kind = "parquet"
    SCHEMA_FILE = "_aimaster_schema.json"
    STAGING = "_staging"

    def __init__(self, url: str, schema: Optional[ColumnsLike] = None, row_group_rows: int = 65536,
                 col_names: Optional[Sequence[str]] = None):
        self.url = url
        self.directory = local_path(url)
        if os.path.isfile(self.directory):
            raise UrlError(f"Parquet output {self.directory} is a file; it must be a directory")
        self._schema = parse_columns(schema, f"schema of {url}") if schema else None
        # describe() names only the schema given here, never one learned later (recorded by another
        # writer, or inferred): the job agrees on the description once, so it must not change.
        self._declared = format_columns(self._schema) if self._schema is not None else None
        self._schema_recorded = False
        self.col_names = check_col_names(col_names, url)
        if self.col_names is not None and self._schema is not None:
            raise SchemaError(f"Parquet output {url}: give schema= or col_names=, not both")
        self.row_group_rows = int(row_group_rows)
        self.staging = TableStaging(self.directory, self.STAGING, ".parquet")

    @property
    def schema(self) -> Optional[List[Column]]:
        if self._schema is None:
            self._schema = self._read_recorded_schema()
        return self._schema

    def describe(self) -> Dict[str, Any]:
        out = {"kind": self.kind, "url": self.url, "schema": self._declared, "row_group_rows": self.row_group_rows}
        if self.col_names is not None:  # only when given: descriptions agreed without it stay the same
            out["col_names"] = list(self.col_names)
        return out

    def schema_for_write(self, rows, col_indices) -> Optional[List[Column]]:
        if self.schema is None:
            if not rows:
                return None  # an empty write (all rows filtered out, say) teaches nothing
            self._schema = _infer_schema(rows, col_indices, self.url, self.col_names)
        elif self.col_names is not None and [c.name for c in self._schema] != self.col_names:
            raise SchemaError(f"Parquet output {self.directory} already has columns "
                              f"{[c.name for c in self._schema]}, not col_names {self.col_names}")
        if not self._schema_recorded:
            self._record_schema(self._schema)
        return self._schema

    def _schema_path(self) -> str:
        return os.path.join(self.directory, self.SCHEMA_FILE)

    def _read_recorded_schema(self) -> Optional[List[Column]]:
        try:
            with open(self._schema_path(), encoding="utf-8") as f:
                return parse_columns(json.load(f)["columns"], self._schema_path())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SchemaError(f"unreadable schema file {self._schema_path()}: {e}")

    def _record_schema(self, schema: List[Column]) -> None:
        path = self._schema_path()
        try:
            os.makedirs(self.directory, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"columns": format_columns(schema)}, f)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # exclusive: fails if another writer recorded a schema first
                fsync_dir(self.directory)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        except OSError as e:
            raise TableIOError(f"cannot record the schema of {self.directory}: {e.strerror or e}")
        recorded = self._read_recorded_schema()
        if recorded != schema:
            raise SchemaError(f"Parquet output {self.directory} already has schema "
                              f"{format_columns(recorded or [])}, not {format_columns(schema)}")
        self._schema_recorded = True

    def open_stage(self, slice_id: str, attempt: str, **options: Any) -> StageWriter:
        return _ParquetStage(self, slice_id, attempt)


def check_col_names(col_names: Optional[Sequence[str]], url: str) -> Optional[List[str]]:
    """``col_names`` as a list of distinct, non-empty strings (None stays None); SchemaError if not."""
    if col_names is None:
        return None
    if isinstance(col_names, str) or not all(isinstance(n, str) and n for n in col_names):
        raise SchemaError(f"col_names of Parquet output {url} must be a list of non-empty strings, "
                          f"got {col_names!r:.80}")
    names = list(col_names)
    if not names or len(set(names)) != len(names):
        raise SchemaError(f"col_names of Parquet output {url} must be distinct and not empty, got {names!r:.80}")
    return names


def _infer_schema(rows: Sequence[Sequence[Any]], col_indices, url: str,
                  col_names: Optional[List[str]] = None) -> List[Column]:
    if not rows:
        raise SchemaError(f"cannot infer the schema of Parquet output {url} from zero rows: pass schema=")
    width = len(col_indices) if col_indices is not None else len(rows[0])
    if col_names is not None and len(col_names) != width:
        raise SchemaError(f"col_names of Parquet output {url} names {len(col_names)} column(s) but the first "
                          f"rows written have {width}")
    name = (lambda j: col_names[j]) if col_names is not None else (lambda j: f"_c{j}")
    if col_indices is not None and sorted(int(i) for i in col_indices) != list(range(width)):
        raise SchemaError(f"cannot infer the schema of Parquet output {url} from col_indices "
                          f"{list(col_indices)} (they must be a permutation of 0..n-1): pass schema=")
    indices = check_col_indices(col_indices, [Column(name(j), "STRING") for j in range(width)], url)
    columns: List[Optional[Column]] = [None] * width
    for pos, j in enumerate(indices):
        values = [r[pos] if len(r) > pos else None for r in rows]
        try:
            kind = pa.array(values).type
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise SchemaError(f"cannot infer the type of column {name(j)} of {url}: {str(e).splitlines()[0]}")
        if pa.types.is_null(kind):
            raise SchemaError(f"column {name(j)} of {url} holds only NULLs in the first write, so its type "
                              "cannot be inferred: pass schema=")
        columns[j] = Column(name(j), type_name_of(kind))
    return [c for c in columns if c is not None]


class _ParquetStage(StageWriter):
    """Rows are buffered into row groups of ``row_group_rows`` and appended to a temporary file."""

    sink: ParquetSink

    def __init__(self, sink: ParquetSink, slice_id: str, attempt: str):
        super().__init__(sink, slice_id, attempt)
        self.temp = sink.staging.temp_path(self.slice_id, self.attempt)
        self._file = None
        self._writer: Optional[pq.ParquetWriter] = None
        self._pending: List[pa.Table] = []
        self._pending_rows = 0

    def _write_table(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self.sink.row_group_rows:
            self._flush()

    def _open(self) -> None:
        schema = self.sink.schema
        arrow_schema = pa.schema([pa.field(c.name, arrow_type(c, self.sink.url)) for c in schema])
        arrow_schema = arrow_schema.with_metadata({"aimaster.slice": self.slice_id,
                                                   "aimaster.attempt": self.attempt})
        self._file = self.sink.staging.open_temp(self.temp)
        self._writer = pq.ParquetWriter(self._file, arrow_schema)

    def _flush(self) -> None:
        if self._writer is None:
            self._open()
        if self._pending:
            table = pa.concat_tables(self._pending)
            self._writer.write_table(table.replace_schema_metadata(self._writer.schema.metadata),
                                     row_group_size=self.sink.row_group_rows)
            self._pending, self._pending_rows = [], 0

    def commit(self) -> StagedRef:
        if self.closed:
            raise ValueError(f"stage of slice {self.slice_id} attempt {self.attempt} is closed")
        self.closed = True
        try:
            if self._writer is None and self.sink.schema is None:
                return {"staged": None, "rows": 0, "bytes": 0}
            self._flush()
            self._writer.close()
            self._file.close()
        except OSError as e:
            self.abort()
            raise TableIOError(f"cannot write {self.temp}: {e.strerror or e}")
        return self.sink.staging.commit(self.temp, self.slice_id, self.attempt, self.rows)

    def abort(self) -> None:
        self.closed = True
        for closable in (self._writer, self._file):
            try:
                if closable is not None:
                    closable.close()
            except Exception:  # noqa: BLE001 - best effort: we are throwing the file away
                pass
        self._writer = self._file = None
        TableStaging.remove_temp(self.temp)


def open_source(url: str, **options: Any) -> ParquetSource:
    return ParquetSource(url, **options)


def open_sink(url: str, **options: Any) -> ParquetSink:
    return ParquetSink(url, **options)


def source_from_description(description: Mapping[str, Any]) -> ParquetSource:
    return ParquetSource(description["url"])
