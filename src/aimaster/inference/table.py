"""``MaxComputeTableConfig`` / ``MaxComputeTableClient``: PAI ElasticBatch's table API over etcd slices.

A slice is a row range of the input table. ``get_next_slice()`` returns the table URL with
``?start=&end=``; fetching the next slice first commits the previous one, after the table writer's
rows for it are durable (staged), so the commit records exactly the rows written for that slice.

With a subprocess writer (``buffer_size > 0``) that commit is asynchronous: ``get_next_slice()``
asks the child to stage the slice and returns the next one at once; the slice is committed as soon
as the child reports it staged: in practice at the following ``get_next_slice()``, whose claim rides
in that commit's transaction (one etcd round trip per slice, as without a child). ``writer.close()``,
an explicit ``commit_slice`` and the end of the data wait for every slice in flight. A slice is
never committed before its rows are durable, and a child that dies leaves its unstaged slices
uncommitted, to be redone. That pipeline -- held slices, writers, slices in flight -- is
:class:`~aimaster.inference.table_commits.TableCommits`, which the client and its writers share.

The output table is an :class:`~aimaster.io.tables.TableSink` shared by every worker of the job:
its description (for MaxCompute: the upload session ids) is agreed on through etcd once.

Every attempt at a slice -- each retry and each speculative copy -- stages under a name of its own
(:func:`~aimaster.inference.attempt_names.attempt_ordinal`), so a losing attempt only ever discards
its own output. An attempt whose stage turns out to be lost (the job finalized under a late copy, a
MaxCompute upload session committed or too old) is given up quietly, like a lost commit. For
MaxCompute the client also keeps the job's upload sessions younger than their lifetime
(:mod:`aimaster.io.tables.odps_generations`).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

from aimaster.data.coordinator import Claim, Dataset, PlanData
from aimaster.data.runtime import current_session
from aimaster.errors import ConfigError, EmptyInputError
from aimaster.frameworks.bindings import Binding
from aimaster.inference.attempt_names import NoCopySlot, attempt_ordinal
from aimaster.inference.table_commits import TableCommits
from aimaster.io import files
from aimaster.io.tables import (
    SliceRowWriter,
    SubprocessSliceRowWriter,
    open_table_sink,
    open_table_source,
    parse_table_url,
)
from aimaster.io.tables.base import StageLost
from aimaster.io.tables.col_names import check_sink_col_names, output_col_names
from aimaster.io.tables.rows import drop_filtered
from aimaster.io.tables.slice_writer import as_sink

__all__ = ["MaxComputeTableConfig", "MaxComputeTableClient", "TableWriter", "NoCopySlot", "attempt_ordinal"]


class MaxComputeTableConfig:
    """The input table, the slice size in rows, and the optional output table.

    :param input_table: the input table URL: ``odps://project/tables/t[/p=v]`` (MaxCompute, or the
        local warehouse under ``AIMASTER_ODPS_WAREHOUSE``), a Parquet file or directory; an optional
        ``?start=&end=`` restricts it to a row range.
    :param slice_size: rows per slice (a positive integer).
    :param output_table: where :meth:`MaxComputeTableClient.create_table_writer` writes; None for a
        job that writes no table.
    """

    def __init__(self, input_table, slice_size=4096, output_table=None):
        if not isinstance(input_table, str) or not input_table:
            raise ConfigError(f"input_table must be a table URL, got {input_table!r}")
        if not isinstance(slice_size, int) or isinstance(slice_size, bool) or slice_size <= 0:
            raise ConfigError(f"slice_size must be a positive integer, got {slice_size!r}")
        if output_table is not None and (not isinstance(output_table, str) or not output_table):
            raise ConfigError(f"output_table must be a table URL, got {output_table!r}")
        self.input_table = input_table
        self.slice_size = slice_size
        self.output_table = output_table

    def __repr__(self) -> str:
        return (f"MaxComputeTableConfig(input_table={self.input_table!r}, slice_size={self.slice_size}, "
                f"output_table={self.output_table!r})")


class MaxComputeTableClient:
    """Hands out row-range slices of a table; see docs/api.md, "Tables", and docs/tables.md.

    :param config: the dataset (:class:`MaxComputeTableConfig`); the first worker of the job to
        arrive counts the table's rows and writes the plan, the others adopt it.
    """

    def __init__(self, config: MaxComputeTableConfig):
        self.config = config
        self._url, start, end = parse_table_url(config.input_table)
        self._offset = start or 0
        self._limit = end
        self._session = current_session()
        key = files.dataset_key("table", self._url, str(start), str(end))
        self._dataset = Dataset(self._session, "t-" + key)
        self._dataset.ensure_plan(self._plan, config.slice_size)
        self._commits = TableCommits(self._dataset)
        self._current: Optional[str] = None
        self._col_names: Optional[Sequence[str]] = None

    def _plan(self) -> PlanData:
        with open_table_source(self._url) as source:
            total = source.row_count()
        end = total if self._limit is None else min(self._limit, total)
        rows = max(0, end - self._offset)
        if rows == 0:
            raise EmptyInputError(f"input table {self.config.input_table} has no rows")
        return PlanData("table", rows, {"url": self._url, "offset": self._offset})

    # ------------------------------------------------------------------ slices
    def slice_path(self, claim: Claim) -> str:
        lo, hi = self._dataset.item_range(claim.index)
        return f"{self._url}?start={self._offset + lo}&end={self._offset + hi}"

    def get_next_slice(self) -> str:
        """Commit the current slice (after flushing its rows), claim the next; its table path.

        Raises ``aimaster.data.OutOfRangeException`` when every slice is done.
        """
        commits = self._commits
        # Earlier slices the child has staged meanwhile are committed first (before the child gets
        # busy staging the current one), and the first of those commits also claims our next slice
        # in its transaction.
        commits.commit_staged(claim_next=True)
        if commits.holds(self._current):
            commits.finish(self._current)
        while True:
            # While no slice is free, waiting for our own slices in flight is what lets the job end.
            claim = self._dataset.next_claim(on_wait=lambda: commits.commit_staged(block=True))
            if commits.stage_name(claim) is not None:
                break
        lo, hi = self._dataset.item_range(claim.index)
        claim.items = hi - lo
        self._current = claim.slice_id
        commits.hold(claim)
        return self.slice_path(claim)

    def get_slice_id(self) -> Optional[str]:
        return self._current

    def stage_options(self) -> Dict[str, Any]:
        """What the sink's ``open_stage`` needs besides the name: MaxCompute's upload generation."""
        return self._commits.stage_options()

    def commit_slice(self, slice_id: Optional[str] = None) -> bool:
        """Commit a slice (default: the current one) with the rows written for it; True if ours won.

        Waits until the slice's rows are durable (also those of earlier slices still being staged).
        """
        return self._commits.commit_after_in_flight(self._current if slice_id is None else str(slice_id))

    def commit_staged(self, block: bool = False, claim_next: bool = False) -> int:
        """Commit every slice whose subprocess writers have staged it; see :meth:`TableCommits.commit_staged`."""
        return self._commits.commit_staged(block, claim_next)

    def give_back_in_flight(self, error: BaseException) -> None:
        """Release every slice still waiting to be staged (its writer is gone)."""
        self._commits.give_back_in_flight(error)

    # ------------------------------------------------------------------ outputs
    def output_sink(self):
        """The job's shared output sink (created once, by whichever worker gets there first)."""
        commits = self._commits
        if commits.sink is None:
            if not self.config.output_table:
                raise ConfigError("create_table_writer needs MaxComputeTableConfig(output_table=...)")
            existing = self._dataset.agreed_sink()
            if existing is None:
                sink = open_table_sink(self.config.output_table, **self._sink_options())
                agreed = self._dataset.propose_sink(sink.describe())
                if agreed != sink.describe():
                    sink = as_sink(agreed)  # another worker's proposal came first: write there
            else:
                sink = as_sink(existing)
            generations = None
            if getattr(sink, "kind", None) == "odps":
                from aimaster.io.tables.odps_generations import UploadGenerations

                generations = UploadGenerations(self._dataset, sink)
                # Stages opened without a generation (the torch/TF bindings) go to the current one.
                sink.generation_source = generations.current
            commits.use_output(sink, generations)
            if generations is not None:
                # A resumed job: seal what is due, redo what expired while the job was down.
                generations.maintain(force=True)
        return commits.sink

    def _sink_or_none(self):
        """The output sink, or None for a client configured without an output table."""
        return self.output_sink() if self.config.output_table else None

    def _sink_options(self) -> Dict[str, Any]:
        from aimaster.io.tables.urls import backend_name

        if backend_name(parse_table_url(self.config.output_table)[0]) == "odps":
            # Block ids come from (slice, attempt ordinal): room for every attempt, each with its
            # speculative copies (attempt_ordinal), plus one attempt for a slice redone after its
            # rows were lost to an expired upload session.
            copies = max(1, self._dataset.max_copies)
            return {"slice_count": self._dataset.num_slices, "copies_per_attempt": copies,
                    "attempts_per_slice": (1 + copies) * (max(1, self._dataset.max_attempts) + 1)}
        return {"col_names": self._col_names} if self._col_names is not None else {}

    def create_table_writer(self, buffer_size=0, filter_value=None, col_names=None) -> TableWriter:
        """A writer for the output table: ``write(values, col_indices)``, ``close()``.

        ``buffer_size > 0`` writes in a child process through a queue of that many rows.
        ``col_names``: the column names of a Parquet output whose schema is inferred from the rows
        (default ``_c0, _c1, ...``); every worker of the job must give the same. A MaxCompute or
        warehouse table has its own schema.
        """
        if not isinstance(buffer_size, int) or buffer_size < 0:
            raise ConfigError(f"buffer_size must be a non-negative integer, got {buffer_size!r}")
        if col_names is not None:
            self._col_names = output_col_names(self.config.output_table, col_names)
        sink = self.output_sink()
        check_sink_col_names(sink, self._col_names)
        if buffer_size > 0:
            inner = SubprocessSliceRowWriter(sink.describe(), buffer_size, filter_value)
        else:
            inner = SliceRowWriter(sink, filter_value)
        writer = TableWriter(self._commits, sink, inner)
        self._commits.add_writer(writer, self._current)
        return writer

    # ------------------------------------------------------------------ datasets
    def create_torch_dataset(self, table_path=None, batch_size=1, selected_cols=None, excluded_cols=None,
                             num_threads=1, capacity=1024, transform_fn: Optional[Callable] = None):
        """A PyTorch IterableDataset: each item is ``common_io``'s ``read(batch_size)`` of the slice.

        With ``table_path`` it reads that slice; under a DataLoader with workers, the slice's rows are
        split among them. With ``table_path=None`` it walks every slice of the job, claiming lazily.
        """
        from aimaster.frameworks.torch_table import TableSliceDataset

        return TableSliceDataset(self, table_path, batch_size, selected_cols, excluded_cols, num_threads,
                                 capacity, transform_fn)

    def create_tf_dataset(self, record_defaults, selected_cols=None, excluded_cols=None, num_threads=1,
                          capacity=1024):
        """``(dataset, table_path_placeholder)`` in TF1 graph mode; a ``tf.data.Dataset`` in eager mode."""
        from aimaster.frameworks.tf_table import create_tf_dataset

        return create_tf_dataset(self, record_defaults, selected_cols, excluded_cols, num_threads, capacity)

    def framework_binding(self, filter_value: Any = None) -> Binding:
        """How :func:`aimaster.frameworks.track` holds, writes and commits this client's slices."""
        return TableBinding(self._dataset, self._commits, self._sink_or_none, filter_value)

    @property
    def dataset(self) -> Dataset:
        return self._dataset


class TableWriter:
    """The SDK's table writer: rows go to the current slice's staged output.

    The client's commit pipeline (:class:`~aimaster.inference.table_commits.TableCommits`) drives it
    through ``begin_slice`` / ``finish_slice`` / ``finish_slice_in_background`` / ``poll_staged``.
    """

    def __init__(self, commits: TableCommits, sink, inner):
        self._commits = commits
        self._sink = sink
        self._inner = inner
        self._slice: Optional[str] = None
        self._closed = False

    # ------------------------------------------------------------------ for the commit pipeline
    @property
    def sink(self):
        """The output sink this writer stages into."""
        return self._sink

    @property
    def slice_id(self) -> Optional[str]:
        """The slice whose rows this writer is taking now (None between slices)."""
        return self._slice

    @property
    def asynchronous(self) -> bool:
        """Whether slices are staged in a child process while the next one is computed."""
        return isinstance(self._inner, SubprocessSliceRowWriter)

    def begin_slice(self, claim: Claim) -> None:
        """Take rows for ``claim`` from now on (a slice left unfinished is aborted)."""
        if self._slice is not None:
            self._inner.abort_slice()
        self._inner.begin_slice(claim.slice_id, attempt_ordinal(claim), self._commits.stage_options())
        self._slice = claim.slice_id

    def finish_slice(self):
        """Stage the current slice's rows now; its staged ref."""
        self._slice = None
        return self._inner.finish_slice()

    def finish_slice_in_background(self) -> None:
        """Let the child stage the current slice; its ref comes back from :meth:`poll_staged`."""
        self._slice = None
        self._inner.finish_slice_async()

    def poll_staged(self, block: bool = False):
        """``(slice id, ok, ref or error)`` of each slice the child finished staging since the last call."""
        return self._inner.poll_finished(block=block)

    # ------------------------------------------------------------------ the SDK's API
    def write(self, values, col_indices=None) -> None:
        """Write rows for the current slice: a list of row tuples, a 2-D array, or a tuple of 1-D column
        arrays (what a TF session returns for a batch)."""
        if self._closed:
            raise ConfigError("write() on a closed table writer")
        if self._slice is None:
            raise ConfigError("write() before get_next_slice(): there is no slice to write rows for")
        self._inner.write(values, col_indices)

    def close(self) -> None:
        """Flush and commit the last slice, then release the writer."""
        if self._closed:
            return
        commits = self._commits
        try:
            if commits.holds(self._slice):
                commits.commit_after_in_flight(self._slice)
            else:
                commits.commit_staged(block=True)
        finally:
            self._release()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # The slices finished before the error are complete: commit them if their rows are staged
        # (what get_next_slice would have done); give back the ones that cannot be.
        try:
            self._commits.commit_staged(block=True)
        except Exception as e:  # noqa: BLE001 - the body's exception is the one that propagates
            self._commits.give_back_in_flight(e)
        finally:
            self._release()

    def _release(self) -> None:
        self._closed = True
        self._commits.remove_writer(self)
        self._inner.close()


class TableBinding(Binding):
    """The frameworks' consumer side of a table client (:mod:`aimaster.frameworks.stream`).

    Each slice's rows are staged in the job's output table sink as they are written (one open stage
    per slice in flight), and the stage's reference is committed with the slice, under the same
    rules as the SDK's table writer (:class:`~aimaster.inference.table_commits.TableCommits`).
    """

    def __init__(self, dataset: Dataset, commits: TableCommits, output_sink: Callable[[], Any],
                 filter_value: Any = None):
        self.dataset = dataset
        self.filter_value = filter_value
        self._commits = commits
        self._output_sink = output_sink  # the job's output sink, or None without an output table
        self._stages: Dict[tuple, Any] = {}

    def _stage(self, claim: Claim):
        key = (claim.slice_id, claim.attempt)
        stage = self._stages.get(key)
        if stage is None:
            sink = self._output_sink()
            if sink is None:
                raise ConfigError("stream.write() needs MaxComputeTableConfig(output_table=...)")
            stage = self._stages[key] = sink.open_stage(claim.slice_id, attempt_ordinal(claim))
        return stage

    def write(self, claim: Claim, rows: Sequence[Sequence[Any]], col_indices: Optional[Sequence[int]]) -> None:
        self._stage(claim).write(drop_filtered(rows, self.filter_value), col_indices)

    def seal(self, claim: Claim) -> Any:
        if self._output_sink() is None:
            return None
        # Like the SDK's table writer: a slice with no output rows still commits an (empty) stage.
        stage = self._stage(claim)
        del self._stages[(claim.slice_id, claim.attempt)]
        return stage

    def commit(self, claim: Claim, sealed: Any = None, claim_next: bool = False) -> bool:
        if sealed is not None:
            try:
                ref = sealed.commit()
            except StageLost:  # the attempt lost already (the job ended, its upload session aged)
                sealed.abort()
                return self._commits.lose(claim)
            except BaseException:
                sealed.abort()
                raise
            claim.add_output(self._output_sink(), ref)
        if not self._commits.committable(claim):
            return self._commits.lose(claim)  # as the SDK writer does: never commit into an aged session
        return self.dataset.commit(claim, claim_next=claim_next)

    def release(self, claim: Claim, error: Optional[str]) -> None:
        stage = self._stages.pop((claim.slice_id, claim.attempt), None)
        if stage is not None:
            stage.abort()
        self.dataset.release(claim, error)
