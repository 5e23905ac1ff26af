"""``MaxComputeTableConfig`` / ``MaxComputeTableClient``: the seed's table API over etcd slices.

A slice is a row range of the input table. ``get_next_slice()`` returns the table URL with
``?start=&end=``; fetching the next slice first commits the previous one, after the table writer's
rows for it are durable (staged), so the commit records exactly the rows written for that slice.

With a subprocess writer (``buffer_size > 0``) that commit is asynchronous: ``get_next_slice()``
asks the child to stage the slice and returns the next one at once; the slice is committed as soon
as the child reports it staged: in practice at the following ``get_next_slice()``, whose claim rides
in that commit's transaction (one etcd round trip per slice, as without a child). ``writer.close()``,
an explicit ``commit_slice`` and the end of the data wait for every slice in flight. A slice is
never committed before its rows are durable, and a child that dies leaves its unstaged slices
uncommitted, to be redone.

The output table is an :class:`~aimaster.io.tables.TableSink` shared by every worker of the job:
its description (for MaxCompute: the upload session ids) is agreed on through etcd once.

Every attempt at a slice -- each retry and each speculative copy -- stages under a name of its own
(:func:`attempt_ordinal`), so a losing attempt only ever discards its own output. An attempt whose
stage turns out to be lost (the job finalized under a late copy, a MaxCompute upload session
committed or too old) is given up quietly, like a lost commit. For MaxCompute the client also keeps
the job's upload sessions younger than their lifetime (:mod:`aimaster.io.tables.odps_generations`).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from aimaster.data.coordinator import Claim, Dataset, PlanData
from aimaster.data.runtime import current_session
from aimaster.data.store import dumps, loads
from aimaster.errors import ConfigError
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
from aimaster.io.tables.slice_writer import as_sink


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


class NoCopySlot(Exception):
    """A speculative copy found no free block ordinal of its attempt (more copies than the job's
    MaxCompute output was opened for): the copy is given up."""


def attempt_ordinal(claim: Claim) -> str:
    """The name a claim's attempt stages under: ``"<ordinal>.<attempt id>"``, unique per attempt.

    The ordinal is a small number no other attempt of the slice has -- MaxCompute derives the
    attempt's upload block from it, so two attempts sharing one would overwrite, and a loser empty,
    each other's block: ``(attempt_no - 1) * slots + k``, with ``k = 0`` for the primary attempt and,
    for a speculative copy, ``k`` in ``1 .. slots - 1`` taken in etcd (copies of one attempt share
    ``attempt_no``). ``slots`` (``1 + copies_per_attempt``) comes from the job's agreed MaxCompute
    sink description, so every worker computes the same layout. The attempt id (unique to the
    claim) follows, so file staging names never collide either. Memoized on the claim.
    """
    name = getattr(claim, "_stage_name", None)
    if name is None:
        slots, odps = _stage_layout(claim.dataset)
        k = (_copy_slot(claim, slots) if odps else 1) if claim.backup else 0
        ordinal = (claim.attempt_no - 1) * slots + k
        safe = re.sub(r"\.\.+", ".", re.sub(r"[^A-Za-z0-9._-]", "-", claim.attempt)).strip(".")
        name = f"{ordinal}.{safe}"
        claim._stage_name = name
    return name


def _stage_layout(dataset: Dataset) -> Tuple[int, bool]:
    """(ordinals per attempt, whether the output is MaxCompute), from the agreed sink description."""
    layout = getattr(dataset, "_stage_layout", None)
    if layout is None:
        description = dataset.store.get_value(dataset.k.base + "sink") or {}
        odps = description.get("kind") == "odps"
        copies = description.get("copies_per_attempt", 1) if odps else 1
        layout = (1 + (copies if isinstance(copies, int) and copies >= 0 else 1), odps)
        if description:
            dataset._stage_layout = layout
    return layout


def _copy_slot(claim: Claim, slots: int) -> int:
    """Take one of the copy ordinals ``1 .. slots - 1`` of the claim's attempt (etcd, first come).

    A slot is taken for good (a copy that died keeps it): a late copy must never get the ordinal of
    one that committed, or its discard would empty the winner's block.
    """
    ds = claim.dataset
    st, tx = ds.store, ds.store.tx
    done = st.key(ds.k.done + claim.slice_id)
    for k in range(1, slots):
        key = st.key(f"{ds.k.base}slots/{claim.slice_id}/{claim.attempt_no}.{k}")
        ok, responses = st.txn(f"take copy slot {k} of slice {claim.slice_id}",
                               [tx.version(key) == 0, tx.version(done) == 0],
                               [tx.put(key, dumps({"at": claim.attempt}))], [tx.get(key)])
        if ok:
            return k
        existing = responses[0] if responses else []
        if existing and loads(existing[0][0], key).get("at") == claim.attempt:
            return k  # a retried transaction whose first try did take it
        if st.get_value(ds.k.done + claim.slice_id) is not None:
            break  # committed meanwhile: the copy is pointless
    raise NoCopySlot(f"no block ordinal left for a copy of slice {claim.slice_id} attempt {claim.attempt_no}")


class MaxComputeTableClient:
    """Hands out row-range slices of a table; see CONTRACT.md section 2 "Tables".

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
        self._sink = None
        self._generations = None  # MaxCompute output: the job's upload session generations
        self._held: Dict[str, Claim] = {}
        self._current: Optional[str] = None
        self._writers: list = []
        # Slices handed to subprocess writers to stage, oldest first, each with the writers it still
        # waits for; committed once every one of them has staged it.
        self._committing: List[Tuple[Claim, Set[int]]] = []

    def _plan(self) -> PlanData:
        with open_table_source(self._url) as source:
            total = source.row_count()
        end = total if self._limit is None else min(self._limit, total)
        rows = max(0, end - self._offset)
        if rows == 0:
            from aimaster.errors import EmptyInputError

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
        # Earlier slices the child has staged meanwhile are committed first (before the child gets
        # busy staging the current one), and the first of those commits also claims our next slice
        # in its transaction.
        self.commit_staged(claim_next=True)
        if self._current is not None and self._current in self._held:
            self._finish_and_commit(self._current)
        while True:
            # While no slice is free, waiting for our own slices in flight is what lets the job end.
            claim = self._dataset.next_claim(on_wait=lambda: self.commit_staged(block=True))
            if self._stage_name(claim) is not None:
                break
        lo, hi = self._dataset.item_range(claim.index)
        claim.items = hi - lo
        self._held[claim.slice_id] = claim
        self._current = claim.slice_id
        for w in self._writers:
            w._begin(claim)
        return self.slice_path(claim)

    def get_slice_id(self) -> Optional[str]:
        return self._current

    def _stage_name(self, claim: Claim) -> Optional[str]:
        """The claim's staging name, or None (and the copy given up) when a copy finds no ordinal."""
        if self._sink is None:
            return ""  # no output: nothing is staged
        try:
            return attempt_ordinal(claim)
        except NoCopySlot:
            self._lose(claim)
            return None

    def stage_options(self) -> Dict[str, Any]:
        """What the sink's ``open_stage`` needs besides the name: MaxCompute's upload generation."""
        if self._generations is None:
            return {}
        return {"generation": self._generations.current()}

    def _committable(self, claim: Claim) -> bool:
        """Whether the claim's staged refs may still be committed (MaxCompute: their upload
        generation is not too old, see odps_generations)."""
        gens = self._generations
        return gens is None or all(gens.committable(ref) for sink, ref in claim.outputs if sink is self._sink)

    def _lose(self, claim: Claim) -> bool:
        """Give an attempt up quietly, as if its commit had lost: its own staged output is
        discarded and the slice, unless committed by another attempt, goes back to be redone."""
        ds = self._dataset
        ds.release(claim)
        if ds.store.get_value(ds.k.done + claim.slice_id) is not None:
            session = ds.session  # another attempt committed it: count a lost commit, as commit would
            if claim.backup:
                session.copies_lost += 1
            else:
                session.primaries_lost += 1
            session.publish_stats()
        return False

    def commit_slice(self, slice_id: Optional[str] = None) -> bool:
        """Commit a slice (default: the current one) with the rows written for it; True if ours won.

        Waits until the slice's rows are durable (also those of earlier slices still being staged).
        """
        self.commit_staged(block=True)
        return self._commit(self._current if slice_id is None else str(slice_id))

    def _commit(self, sid: Optional[str], claim_next: bool = False) -> bool:
        claim = self._held.pop(sid, None) if sid is not None else None
        if claim is None:
            raise ConfigError(f"slice {sid!r} is not held by this worker (already committed, or never claimed)")
        try:
            for w in self._writers:
                w._finish(claim)
        except StageLost:
            return self._lose(claim)
        if not self._committable(claim):
            return self._lose(claim)
        return self._dataset.commit(claim, claim_next=claim_next)

    def _finish_and_commit(self, sid: str) -> None:
        """End the current slice: commit it now, or once its subprocess writers have staged it."""
        background = [w for w in self._writers if w._slice == sid and w.asynchronous]
        if not background:
            # The commit also claims the next slice in the same transaction (one round trip).
            self._commit(sid, claim_next=True)
            return
        claim = self._held.pop(sid)
        try:
            for w in self._writers:
                if w._slice == sid and not w.asynchronous:
                    w._finish(claim)
            for w in background:
                w._finish_async(claim)
        except StageLost:
            self._lose(claim)
            return
        except BaseException as e:
            self._give_back(claim, e)
            raise
        self._committing.append((claim, {id(w) for w in background}))

    def commit_staged(self, block: bool = False, claim_next: bool = False) -> int:
        """Commit every slice whose subprocess writers have staged it; returns how many.

        ``block``: wait until every slice in flight is staged and committed. ``claim_next``: the
        caller claims a slice right after, so that claim may ride in a commit's transaction.
        A slice whose staging failed is given back (with the error, which is raised); if a writer's
        child died, its slices in flight stay uncommitted (they are redone) and TableIOError is raised.
        """
        if not self._committing:
            return 0
        by_id = {claim.slice_id: (claim, waiting) for claim, waiting in self._committing}
        failure: Optional[BaseException] = None
        for w in list(self._writers):
            if not w.asynchronous:
                continue
            for sid, ok, value in w._inner.poll_finished(block=block):
                if sid not in by_id:
                    continue
                claim, waiting = by_id[sid]
                if ok:
                    claim.add_output(w._sink, value)
                    waiting.discard(id(w))
                elif isinstance(value, StageLost):  # the attempt lost: not an error of anyone's
                    self._committing = [e for e in self._committing if e[0] is not claim]
                    self._lose(claim)
                elif failure is None:
                    failure = value
                    self._committing = [e for e in self._committing if e[0] is not claim]
                    self._give_back(claim, value)
        ready = [claim for claim, waiting in self._committing if not waiting]
        self._committing = [e for e in self._committing if e[1]]
        for claim in ready:
            if self._committable(claim):
                self._dataset.commit(claim, claim_next=claim_next)
            else:
                self._lose(claim)
        if failure is not None:
            raise failure
        return len(ready)

    def give_back_in_flight(self, error: BaseException) -> None:
        """Release every slice still waiting to be staged (its writer is gone)."""
        in_flight, self._committing = self._committing, []
        for claim, _ in in_flight:
            self._give_back(claim, error)

    def _give_back(self, claim: Claim, error: BaseException) -> None:
        """Release a slice this worker could not write (others redo it; the error is recorded)."""
        try:
            self._dataset.release(claim, error=f"{type(error).__name__}: {error}")
        except Exception:  # noqa: BLE001 - the original error matters more; the lease ends the claim
            pass

    # ------------------------------------------------------------------ outputs
    def output_sink(self):
        """The job's shared output sink (created once, by whichever worker gets there first)."""
        if self._sink is None:
            if not self.config.output_table:
                raise ConfigError("create_table_writer needs MaxComputeTableConfig(output_table=...)")
            st, tx = self._session.store, self._session.store.tx
            key = self._dataset.k.base + "sink"
            existing = st.get_value(key)
            if existing is None:
                sink = open_table_sink(self.config.output_table, **self._sink_options())
                ok, resp = st.txn("share output sink", [tx.version(st.key(key)) == 0],
                                  [tx.put(st.key(key), dumps(sink.describe()))], [tx.get(st.key(key))])
                if not ok:
                    existing = st.get_value(key)
            self._sink = sink if existing is None else as_sink(existing)
            if getattr(self._sink, "kind", None) == "odps":
                from aimaster.io.tables.odps_generations import UploadGenerations

                self._generations = UploadGenerations(self._dataset, self._sink)
                # Stages opened without a generation (the torch/TF bindings) go to the current one.
                self._sink.generation_source = self._generations.current
                # A resumed job: seal what is due, redo what expired while the job was down.
                self._generations.maintain(force=True)
        return self._sink

    def _sink_options(self) -> Dict[str, Any]:
        from aimaster.io.tables.urls import backend_name

        if backend_name(parse_table_url(self.config.output_table)[0]) == "odps":
            # Block ids come from (slice, attempt ordinal): room for every attempt, each with its
            # speculative copies (attempt_ordinal), plus one attempt for a slice redone after its
            # rows were lost to an expired upload session.
            copies = max(1, self._dataset.max_copies)
            return {"slice_count": self._dataset.num_slices, "copies_per_attempt": copies,
                    "attempts_per_slice": (1 + copies) * (max(1, self._dataset.max_attempts) + 1)}
        names = getattr(self, "_col_names", None)
        return {"col_names": names} if names is not None else {}

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
        check_sink_col_names(sink, getattr(self, "_col_names", None))
        if buffer_size > 0:
            inner = SubprocessSliceRowWriter(sink.describe(), buffer_size, filter_value)
        else:
            inner = SliceRowWriter(sink, filter_value)
        writer = TableWriter(self, sink, inner)
        self._writers.append(writer)
        if self._current is not None and self._current in self._held:
            writer._begin(self._held[self._current])
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

    @property
    def dataset(self) -> Dataset:
        return self._dataset


class TableWriter:
    """The SDK's table writer: rows go to the current slice's staged output."""

    def __init__(self, client: MaxComputeTableClient, sink, inner):
        self._client = client
        self._sink = sink
        self._inner = inner
        self._slice: Optional[str] = None
        self._closed = False

    def _begin(self, claim: Claim) -> None:
        if self._slice is not None:
            self._inner.abort_slice()
        self._inner.begin_slice(claim.slice_id, attempt_ordinal(claim), self._client.stage_options())
        self._slice = claim.slice_id

    @property
    def asynchronous(self) -> bool:
        """Whether slices are staged in a child process while the next one is computed."""
        return isinstance(self._inner, SubprocessSliceRowWriter)

    def _finish(self, claim: Claim) -> None:
        if self._slice != claim.slice_id:
            return
        self._slice = None
        ref = self._inner.finish_slice()
        claim.add_output(self._sink, ref)

    def _finish_async(self, claim: Claim) -> None:
        self._slice = None
        self._inner.finish_slice_async()

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
        client = self._client
        try:
            if self._slice is not None and self._slice in client._held:
                client.commit_slice(self._slice)
            else:
                client.commit_staged(block=True)
        finally:
            self._closed = True
            if self in client._writers:
                client._writers.remove(self)
            self._inner.close()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # The slices finished before the error are complete: commit them if their rows are staged
        # (what get_next_slice would have done); give back the ones that cannot be.
        try:
            self._client.commit_staged(block=True)
        except Exception as e:  # noqa: BLE001 - the body's exception is the one that propagates
            self._client.give_back_in_flight(e)
        finally:
            self._closed = True
            if self in self._client._writers:
                self._client._writers.remove(self)
            self._inner.close()
