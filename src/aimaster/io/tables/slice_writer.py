"""The per-slice row writer behind the SDK's table writer, in process.

The SDK writes rows as inference produces them and, when a slice is done, needs a durable staged
ref to put in the slice's commit. :class:`SliceRowWriter` is that life cycle over any
:class:`~aimaster.io.tables.base.TableSink`: ``begin_slice`` opens a stage, ``write`` checks rows
against the output schema (after dropping rows that contain ``filter_value``) and appends them,
``finish_slice`` makes the stage durable and returns its ref. The same class runs inside the child
process of :class:`~aimaster.io.tables.writer_process.SubprocessSliceRowWriter`, so filtering and
validation behave the same whichever writer the user picked.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

from aimaster.data.outputs import StagedRef, sink_from_description
from aimaster.io.tables.base import StageWriter, TableSink
from aimaster.io.tables.rows import drop_filtered, normalize_rows


def as_sink(sink: Union[TableSink, Mapping[str, Any]]) -> TableSink:
    """``sink`` itself, or the table sink its description (from etcd, or a parent process) rebuilds."""
    if isinstance(sink, TableSink):
        return sink
    if isinstance(sink, Mapping):
        built = sink_from_description(sink)  # the kind's module is imported on first use (aimaster.plugins)
        if not isinstance(built, TableSink):
            raise TypeError(f"sink description {dict(sink)!r} is not a table sink")
        return built
    raise TypeError(f"expected a TableSink or its description, got {type(sink).__name__}")


class SliceRowWriter:
    """Stage one slice at a time into ``sink``; see the module docstring."""

    def __init__(self, sink: Union[TableSink, Mapping[str, Any]], filter_value: Any = None):
        self.sink = as_sink(sink)
        self.filter_value = filter_value
        self._stage: Optional[StageWriter] = None
        self._closed = False

    @property
    def slice_id(self) -> Optional[str]:
        return self._stage.slice_id if self._stage is not None else None

    def begin_slice(self, slice_id: str, attempt: str, options: Optional[Mapping[str, Any]] = None) -> None:
        """Start staging ``slice_id``'s output for ``attempt``; the previous slice must be finished.

        ``options`` go to the sink's ``open_stage`` (MaxCompute: the upload generation).
        """
        self._check_open()
        if self._stage is not None:
            raise ValueError(f"slice {self._stage.slice_id} is still being written; finish_slice() first")
        self._stage = self.sink.open_stage(str(slice_id), str(attempt), **dict(options or {}))

    def write(self, values: Any, col_indices: Optional[Sequence[int]] = None) -> int:
        """Append rows (a list of tuples, or a 2-D array) filling ``col_indices``; returns rows kept.

        Raises SchemaError without writing anything of this call if the rows do not fit the schema.
        """
        self._check_open()
        if self._stage is None:
            raise ValueError("write() before begin_slice()")
        rows = drop_filtered(normalize_rows(values), self.filter_value)
        return self._stage.write(rows, col_indices)

    def finish_slice(self) -> StagedRef:
        """Make the slice's rows durable in the staging area and return the ref to commit."""
        stage = self.detach_slice()
        try:
            return stage.commit()
        except BaseException:
            stage.abort()
            raise

    def detach_slice(self) -> StageWriter:
        """End the slice and hand its stage over, to be committed (``commit()``, or ``abort()`` on
        failure) by the caller -- on another thread, say -- while this writer begins the next."""
        self._check_open()
        if self._stage is None:
            raise ValueError("finish_slice() before begin_slice()")
        stage, self._stage = self._stage, None
        return stage

    def abort_slice(self) -> None:
        """Throw away the slice being written (nothing of it was staged)."""
        if self._stage is not None:
            stage, self._stage = self._stage, None
            stage.abort()

    def close(self) -> None:
        """Abort an unfinished slice (its rows were never committed) and release the sink."""
        if self._closed:
            return
        self.abort_slice()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the slice row writer is closed")

    def __enter__(self) -> SliceRowWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
