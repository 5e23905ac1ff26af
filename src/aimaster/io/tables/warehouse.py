"""MaxCompute's local-run warehouse: ``odps://`` tables as CSV files on a laptop.

With ``AIMASTER_ODPS_WAREHOUSE=/dir`` set, ``odps://prj/tables/t/ds=x`` is the directory
``/dir/prj/__tables__/t/ds=x`` -- the layout of MaxCompute's Java local runner
(``com.aliyun.odps.local.common.WareHouse``): a ``__schema__`` file in the table directory::

    project=prj
    table=t
    columns=id:BIGINT,name:STRING
    partitions=ds:STRING

and, in the table directory (or the partition's ``k=v/...`` directory), CSV data files read in
sorted name order. The CSV dialect is the runner's: ``,``-separated, ``"``-quoted, ``\\N`` is NULL
(a string that *is* ``\\N`` is written quoted), DATETIME is ``yyyy-MM-dd HH:mm:ss SSS`` (plain
``yyyy-MM-dd HH:mm:ss[.ffffff]`` is read too), BOOLEAN ``true``/``false``, BINARY quoted-printable.
The runner also quoted-printable-decodes STRING values; aimaster reads and writes STRING verbatim.

Row ranges skip whole files by their (cached) row counts and, inside a file, skip parsed rows
without converting them -- CSV has no row index, so that is the least reading a range can do.
"""

from __future__ import annotations

import binascii
import datetime
import os
import threading
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from aimaster.data.outputs import StagedRef
from aimaster.errors import ConfigError, InputNotFoundError, SchemaError, TableIOError, UrlError
from aimaster.io.durable import fsync_dir
from aimaster.io.staging import STAGING_DIR, TableStaging
from aimaster.io.tables.base import StageWriter, TableSource
from aimaster.io.tables.localfs import LocalFileSink
from aimaster.io.tables.rows import rows_to_table
from aimaster.io.tables.types import Column, ColumnsLike, arrow_type, format_columns, parse_columns
from aimaster.io.tables.urls import WAREHOUSE_ENV, OdpsTableName, parse_odps_url

SCHEMA_FILE = "__schema__"
TABLES_DIR = "__tables__"
NULL_TOKEN = "\\N"


def warehouse_root(warehouse: Optional[str] = None) -> str:
    root = warehouse or os.environ.get(WAREHOUSE_ENV)
    if not root:
        raise ConfigError(f"no local warehouse: set {WAREHOUSE_ENV}=/dir (or pass warehouse=)")
    return os.path.abspath(os.path.expanduser(root))


class WarehouseTable:
    """Where ``url`` lives in the warehouse, and its ``__schema__``."""

    def __init__(self, url: str, warehouse: Optional[str] = None):
        self.name: OdpsTableName = parse_odps_url(url)
        self.url = self.name.url
        self.root = warehouse_root(warehouse)
        self.table_dir = os.path.join(self.root, self.name.project, TABLES_DIR, self.name.table)
        self.schema_path = os.path.join(self.table_dir, SCHEMA_FILE)
        if not os.path.isfile(self.schema_path):
            raise InputNotFoundError(f"table {self.url} does not exist in the warehouse {self.root} "
                                     f"(no {self.schema_path})")
        self.columns, self.partitions = read_schema_file(self.schema_path)
        keys = [k for k, _ in self.name.partition]
        want = [p.name for p in self.partitions]
        if keys != want:
            if not want:
                raise UrlError(f"{self.url} names a partition but table {self.name.project}.{self.name.table} "
                               "is not partitioned")
            raise UrlError(f"{self.url} must name the partition {'/'.join(k + '=...' for k in want)} "
                           f"of table {self.name.project}.{self.name.table}")
        self.data_dir = os.path.join(self.table_dir, *[f"{k}={v}" for k, v in self.name.partition])


def read_schema_file(path: str) -> Tuple[List[Column], List[Column]]:
    """Parse a ``__schema__`` file leniently, as the Java runner does (blank and ``#`` lines skipped)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise TableIOError(f"cannot read {path}: {e.strerror}")
    fields: Dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        fields[key.strip()] = value.strip()
    if not fields.get("columns"):
        raise SchemaError(f"schema file {path} has no columns= line")
    columns = parse_columns(fields["columns"], path)
    partitions = parse_columns(fields.get("partitions", ""), path)
    return columns, partitions


def _data_files(directory: str) -> List[str]:
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    return [os.path.join(directory, n) for n in names
            if n != SCHEMA_FILE and not n.startswith(".") and os.path.isfile(os.path.join(directory, n))]


# --- reading ---------------------------------------------------------------------------------------

_COUNT_CACHE: Dict[Tuple[str, int, int], int] = {}
_COUNT_LOCK = threading.Lock()
_TRUE = ["true", "True", "TRUE"]
_FALSE = ["false", "False", "FALSE"]


def _csv_arrow_type(column: Column) -> pa.DataType:
    """What pyarrow's CSV reader parses a column as; DATETIME and BINARY need a second step."""
    if column.type in ("DATETIME", "BINARY"):
        return pa.string()
    try:
        return arrow_type(column)
    except SchemaError:
        return pa.string()  # DECIMAL, ARRAY<...>, ...: handed back as their text


def _csv_options(columns: List[Column], names: List[str], skip: int = 0):
    read = pcsv.ReadOptions(column_names=[c.name for c in columns], skip_rows_after_names=skip,
                            block_size=1 << 20)
    parse = pcsv.ParseOptions(newlines_in_values=True)
    by_name = {c.name: c for c in columns}
    convert = pcsv.ConvertOptions(
        include_columns=names,
        column_types={n: _csv_arrow_type(by_name[n]) for n in names},
        null_values=[NULL_TOKEN], strings_can_be_null=True, quoted_strings_can_be_null=False,
        true_values=_TRUE, false_values=_FALSE,
    )
    return read, parse, convert


def count_rows(path: str, columns: List[Column]) -> int:
    """Rows in a data file, cached by (path, mtime, size) -- counting means parsing the whole file."""
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    with _COUNT_LOCK:
        if key in _COUNT_CACHE:
            return _COUNT_CACHE[key]
    if st.st_size == 0:
        n = 0
    else:
        read, parse, convert = _csv_options(columns, [columns[0].name])
        convert.column_types = {columns[0].name: pa.string()}
        try:
            n = pcsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert).num_rows
        except (OSError, pa.ArrowException) as e:
            raise TableIOError(f"cannot read warehouse data file {path}: {str(e).splitlines()[0]}")
    with _COUNT_LOCK:
        _COUNT_CACHE[key] = n
    return n


def _decode_datetime(arr: pa.ChunkedArray) -> pa.Array:
    """``yyyy-MM-dd HH:mm:ss SSS`` (SSS: milliseconds as an integer) -> an ISO string -> timestamp."""
    for digits, pad in ((3, ""), (2, "0"), (1, "00")):
        arr = pc.replace_substring_regex(arr, pattern=rf"^(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d) (\d{{{digits}}})$",
                                         replacement=rf"\1.{pad}\2")
    return arr.cast(pa.timestamp("us"))


def _decode_binary(arr: pa.ChunkedArray) -> pa.Array:
    return pa.array([None if v is None else binascii.a2b_qp(v) for v in arr.to_pylist()], pa.binary())


class WarehouseSource(TableSource):
    """A warehouse table or partition read from its CSV data files."""

    backend = "warehouse"

    def __init__(self, url: str, warehouse: Optional[str] = None):
        self.table = WarehouseTable(url, warehouse)
        self.url = self.table.url
        if not os.path.isdir(self.table.data_dir):
            raise InputNotFoundError(f"partition {self.url} does not exist ({self.table.data_dir})")
        self.schema = list(self.table.columns)
        self.files = _data_files(self.table.data_dir)
        self._counts: Optional[List[int]] = None

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.backend, "url": self.url, "warehouse": self.table.root}

    def _file_counts(self) -> List[int]:
        if self._counts is None:
            self._counts = [count_rows(f, self.schema) for f in self.files]
        return self._counts

    def row_count(self) -> int:
        return sum(self._file_counts())

    def _batches(self, start: int, end: int, names: List[str]) -> Iterator[pa.RecordBatch]:
        unique = list(dict.fromkeys(names))
        pos = 0
        for path, n in zip(self.files, self._file_counts()):
            lo, hi = max(start - pos, 0), min(end - pos, n)
            pos += n
            if hi > lo:
                yield from self._file_batches(path, lo, hi, unique, names)
            if pos >= end:
                break

    def _file_batches(self, path: str, lo: int, hi: int, unique: List[str], names: List[str]):
        by_name = {c.name: c for c in self.schema}
        read, parse, convert = _csv_options(self.schema, unique, skip=lo)
        want = hi - lo
        try:
            reader = pcsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)
            for batch in reader:
                if batch.num_rows > want:
                    batch = batch.slice(0, want)
                want -= batch.num_rows
                arrays = {}
                for name in unique:
                    col = batch.column(name)
                    typ = by_name[name].type
                    if typ == "DATETIME":
                        col = _decode_datetime(col)
                    elif typ == "BINARY":
                        col = _decode_binary(col)
                    arrays[name] = col
                yield pa.RecordBatch.from_arrays([arrays[n] for n in names], names=names)
                if want <= 0:
                    break
        except (OSError, pa.ArrowException, binascii.Error) as e:
            raise TableIOError(f"cannot read warehouse data file {path}: {str(e).splitlines()[0]}")


# --- writing ---------------------------------------------------------------------------------------

_NEEDS_QUOTES = r'[,"\r\n]|^\s|\s$|^$|^\\N$'


def _quote_where_needed(text: pa.Array) -> pa.Array:
    needs = pc.match_substring_regex(text, _NEEDS_QUOTES)
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
    return pc.if_else(needs, quoted, text)


def _format_datetime(value: datetime.datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} {value.microsecond // 1000:03d}"


def _encode_column(arr: pa.Array, column: Column) -> pa.Array:
    typ = column.type
    if typ == "STRING":
        text = _quote_where_needed(arr.fill_null("")) if arr.null_count < len(arr) else arr.cast(pa.string())
    elif typ == "BINARY":
        text = pa.array([None if v is None else binascii.b2a_qp(v, istext=False).decode("ascii")
                         for v in arr.to_pylist()], pa.string())
        text = _quote_where_needed(text.fill_null(""))
    elif typ == "DATETIME":
        text = pa.array([None if v is None else _format_datetime(v) for v in arr.to_pylist()], pa.string())
    elif typ in ("DOUBLE", "FLOAT"):
        text = arr.cast(pa.string())
        for py, java in (("nan", "NaN"), ("inf", "Infinity"), ("-inf", "-Infinity")):
            text = pc.if_else(pc.equal(text, py), java, text)
    else:
        text = arr.cast(pa.string())
    return pc.if_else(arr.is_null(), NULL_TOKEN, text)


def encode_csv(table: pa.Table, columns: Sequence[Column]) -> bytes:
    """The rows of ``table`` as warehouse CSV lines (every line ``\\n``-terminated)."""
    if table.num_rows == 0:
        return b""
    encoded = [_encode_column(table.column(i).combine_chunks(), c) for i, c in enumerate(columns)]
    lines = pc.binary_join_element_wise(*encoded, ",") if len(encoded) > 1 else encoded[0]
    return ("\n".join(lines.to_pylist()) + "\n").encode("utf-8")


class WarehouseSink(LocalFileSink):
    """A warehouse table (partition) receiving one ``part-<slice_id>.csv`` per committed slice.

    The table must exist (its ``__schema__``); a partition directory is created when missing, like
    MaxCompute's ``create_partition``.
    """

    kind = "warehouse"

    def __init__(self, url: str, warehouse: Optional[str] = None):
        self.table = WarehouseTable(url, warehouse)
        self.url = self.table.url
        self.staging = TableStaging(self.table.data_dir, STAGING_DIR, ".csv")

    @property
    def schema(self) -> List[Column]:
        return list(self.table.columns)

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "url": self.url, "warehouse": self.table.root}

    def open_stage(self, slice_id: str, attempt: str, **options: Any) -> StageWriter:
        return _CsvStage(self, slice_id, attempt)


class _CsvStage(StageWriter):
    """Validated rows are encoded and appended to a temporary CSV file as they arrive."""

    sink: WarehouseSink

    def __init__(self, sink: WarehouseSink, slice_id: str, attempt: str):
        super().__init__(sink, slice_id, attempt)
        self.temp = sink.staging.temp_path(self.slice_id, self.attempt)
        self._file = sink.staging.open_temp(self.temp)

    def _write_table(self, table: pa.Table) -> None:
        try:
            self._file.write(encode_csv(table, self.sink.schema))
        except OSError as e:
            raise TableIOError(f"cannot write {self.temp}: {e.strerror}")

    def commit(self) -> StagedRef:
        if self.closed:
            raise ValueError(f"stage of slice {self.slice_id} attempt {self.attempt} is closed")
        self.closed = True
        try:
            self._file.close()
        except OSError as e:
            self.abort()
            raise TableIOError(f"cannot write {self.temp}: {e.strerror}")
        return self.sink.staging.commit(self.temp, self.slice_id, self.attempt, self.rows)

    def abort(self) -> None:
        self.closed = True
        try:
            self._file.close()
        except OSError:
            pass
        TableStaging.remove_temp(self.temp)


# --- creating tables ---------------------------------------------------------------------------------


def create_warehouse_table(
    url: str,
    columns: ColumnsLike,
    rows: Optional[Sequence[Sequence[Any]]] = None,
    partitions: Optional[ColumnsLike] = None,
    warehouse: Optional[str] = None,
) -> str:
    """Create (or extend) a local warehouse table and return its URL.

    Writes the ``__schema__`` file (an existing one must agree), creates the partition directory the
    URL names, and appends ``rows`` (checked against ``columns``) as a new data file. ``partitions``
    defaults to the URL's partition keys, typed STRING.
    """
    name = parse_odps_url(url)
    root = warehouse_root(warehouse)
    cols = parse_columns(columns, f"columns of {name.url}")
    if partitions is None:
        parts = [Column(k, "STRING") for k, _ in name.partition]
    else:
        parts = parse_columns(partitions, f"partitions of {name.url}")
    for c in cols:
        arrow_type(c, name.url)
    table_dir = os.path.join(root, name.project, TABLES_DIR, name.table)
    schema_path = os.path.join(table_dir, SCHEMA_FILE)
    if os.path.isfile(schema_path):
        old_cols, old_parts = read_schema_file(schema_path)
        if (old_cols, old_parts) != (cols, parts):
            raise SchemaError(f"table {name.url} already exists in {root} with columns "
                              f"{format_columns(old_cols)} and partitions {format_columns(old_parts) or '-'}")
    else:
        os.makedirs(table_dir, exist_ok=True)
        lines = [f"project={name.project}", f"table={name.table}", f"columns={format_columns(cols)}"]
        if parts:
            lines.append(f"partitions={format_columns(parts)}")
        _write_atomically(schema_path, ("\n".join(lines) + "\n").encode("utf-8"))
    table = WarehouseTable(name.url, root)  # validates the URL's partition against the schema
    os.makedirs(table.data_dir, exist_ok=True)
    if rows:
        data = encode_csv(rows_to_table(rows, None, cols, name.url), cols)
        existing = set(os.listdir(table.data_dir))
        fname = "data"
        k = 0
        while fname in existing:
            k += 1
            fname = f"data-{k:05d}"
        _write_atomically(os.path.join(table.data_dir, fname), data)
    return name.url


def _write_atomically(path: str, data: bytes) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def open_source(url: str, **options: Any) -> WarehouseSource:
    return WarehouseSource(url, **options)


def open_sink(url: str, **options: Any) -> WarehouseSink:
    return WarehouseSink(url, **options)


def source_from_description(description: Mapping[str, Any]) -> WarehouseSource:
    return WarehouseSource(description["url"], warehouse=description.get("warehouse"))
