"""The table layer: read tables by row range, write slice outputs exactly once.

Three backends sit behind one URL mapping (:mod:`aimaster.io.tables.urls`), each a kind of
:mod:`aimaster.plugins`' ``table_backend`` group (and its sink one of the ``output_sink`` group),
imported on first use:

* ``odps://project/tables/table[/p=v...]`` -- MaxCompute through pyodps' tunnel, or, when
  ``AIMASTER_ODPS_WAREHOUSE`` is set, MaxCompute's local-run warehouse of CSV files;
* a ``.parquet`` file or a directory of them (``file://`` optional).

Reading: ``open_table_source(url).read(start, end, columns)`` yields lists of row tuples.
Writing: ``open_table_sink(url)`` is an :class:`~aimaster.data.outputs.OutputSink` whose
``stage(slice_id, attempt, rows, col_indices)`` returns the JSON ref that the slice's commit records;
:class:`SliceRowWriter` (in process) and :class:`SubprocessSliceRowWriter` (in a child process) drive
it for the SDK's table writer. No coordination happens here: the caller decides who commits. The
one exception is :mod:`aimaster.io.tables.odps_generations`, which the SDK's table client hands the
job's dataset so that MaxCompute upload sessions are rotated and committed before they expire.
"""

from aimaster.io.tables.base import DEFAULT_BATCH_ROWS, StageWriter, TableSink, TableSource
from aimaster.io.tables.slice_writer import SliceRowWriter
from aimaster.io.tables.types import Column, parse_columns
from aimaster.io.tables.urls import (
    WAREHOUSE_ENV,
    OdpsTableName,
    open_table_sink,
    open_table_source,
    parse_odps_url,
    parse_table_url,
    source_from_description,
)
from aimaster.io.tables.warehouse import create_warehouse_table
from aimaster.io.tables.writer_process import SubprocessSliceRowWriter

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "WAREHOUSE_ENV",
    "Column",
    "OdpsTableName",
    "SliceRowWriter",
    "StageWriter",
    "SubprocessSliceRowWriter",
    "TableSink",
    "TableSource",
    "create_warehouse_table",
    "open_table_sink",
    "open_table_source",
    "parse_columns",
    "parse_odps_url",
    "parse_table_url",
    "source_from_description",
]
