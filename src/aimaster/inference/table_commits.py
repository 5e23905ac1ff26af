"""The table client's commit pipeline: the slices it holds, from their claim to their commit.

A :class:`~aimaster.inference.table.MaxComputeTableClient` claims slices; its table writers stage
each slice's rows; the slice is committed once every writer has staged it. With a subprocess writer
(``buffer_size > 0``) staging is asynchronous: the slice waits here *in flight* until the child
reports it staged, and is committed at the next :meth:`TableCommits.commit_staged` (in practice the
following ``get_next_slice()``, whose claim rides in that commit's transaction). A slice is never
committed before its rows are durable, nor into a MaxCompute upload generation too old to commit
(:mod:`aimaster.io.tables.odps_generations`); an attempt that cannot commit any more is *lost*:
given up quietly, as if its commit had lost.

The client and its writers only talk to each other through this class: the client hands it the
claims and the writers, a writer asks it to commit its last slice when it closes. A writer, for its
part, offers the pipeline ``begin_slice`` / ``finish_slice`` / ``finish_slice_in_background`` /
``poll_staged`` and the ``slice_id`` and ``sink`` it stages into.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Set, Tuple

from aimaster.data.coordinator import Claim, Dataset
from aimaster.errors import ConfigError
from aimaster.inference.attempt_names import NoCopySlot, attempt_ordinal
from aimaster.io.tables.base import StageLost


class TableCommits:
    """The held slices, the writers staging them, and the slices in flight; see the module docstring."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.sink = None  # the job's output sink, once agreed (None: this client stages nothing)
        self.generations = None  # MaxCompute output: the job's upload session generations
        self._held: Dict[str, Claim] = {}
        self._writers: List[Any] = []
        # Slices handed to subprocess writers to stage, oldest first, each with the writers it still
        # waits for; committed once every one of them has staged it.
        self._in_flight: List[Tuple[Claim, Set[int]]] = []

    def use_output(self, sink, generations=None) -> None:
        """Stage into ``sink`` from now on (its upload ``generations`` for MaxCompute)."""
        self.sink = sink
        self.generations = generations

    # ------------------------------------------------------------------ held slices and writers
    def hold(self, claim: Claim) -> None:
        """A slice handed to the program: every writer starts staging its rows."""
        self._held[claim.slice_id] = claim
        for writer in self._writers:
            writer.begin_slice(claim)

    def holds(self, slice_id: Optional[str]) -> bool:
        return slice_id is not None and slice_id in self._held

    def add_writer(self, writer, current: Optional[str]) -> None:
        """A new writer; it joins the slice ``current`` at once if that one is held."""
        self._writers.append(writer)
        if self.holds(current):
            writer.begin_slice(self._held[current])

    def remove_writer(self, writer) -> None:
        if writer in self._writers:
            self._writers.remove(writer)

    # ------------------------------------------------------------------ attempts
    def stage_name(self, claim: Claim) -> Optional[str]:
        """The claim's staging name (``""`` with no output), or None -- and the copy given up --
        when a speculative copy finds no block ordinal left."""
        if self.sink is None:
            return ""
        try:
            return attempt_ordinal(claim)
        except NoCopySlot:
            self.lose(claim)
            return None

    def stage_options(self) -> Dict[str, Any]:
        """What the sink's ``open_stage`` needs besides the name: MaxCompute's upload generation."""
        if self.generations is None:
            return {}
        return {"generation": self.generations.current()}

    def committable(self, claim: Claim) -> bool:
        """Whether the claim's staged refs may still be committed (MaxCompute: their upload
        generation is not too old, see odps_generations)."""
        gens = self.generations
        return gens is None or all(gens.committable(ref) for sink, ref in claim.outputs if sink is self.sink)

    def lose(self, claim: Claim) -> bool:
        """Give an attempt up quietly, as if its commit had lost: its own staged output is
        discarded and the slice, unless committed by another attempt, goes back to be redone."""
        ds = self.dataset
        ds.release(claim)
        if ds.store.get_value(ds.k.done + claim.slice_id) is not None:
            session = ds.session  # another attempt committed it: count a lost commit, as commit would
            if claim.backup:
                session.copies_lost += 1
            else:
                session.primaries_lost += 1
            session.publish_stats()
        return False

    def give_back(self, claim: Claim, error: BaseException) -> None:
        """Release a slice this worker could not write (others redo it; the error is recorded)."""
        try:
            self.dataset.release(claim, error=f"{type(error).__name__}: {error}")
        except Exception:  # noqa: BLE001 - the original error matters more; the lease ends the claim
            pass

    # ------------------------------------------------------------------ committing
    def commit(self, slice_id: Optional[str], claim_next: bool = False) -> bool:
        """Commit a held slice now, its rows staged by every writer first; True if ours won."""
        claim = self._held.pop(slice_id, None) if slice_id is not None else None
        if claim is None:
            raise ConfigError(f"slice {slice_id!r} is not held by this worker (already committed, or never claimed)")
        try:
            for writer in self._writers:
                self._finish(writer, claim)
        except StageLost:
            return self.lose(claim)
        if not self.committable(claim):
            return self.lose(claim)
        return self.dataset.commit(claim, claim_next=claim_next)

    def commit_after_in_flight(self, slice_id: Optional[str]) -> bool:
        """Wait for every slice in flight (committing them), then commit ``slice_id``."""
        self.commit_staged(block=True)
        return self.commit(slice_id)

    def finish(self, slice_id: str) -> None:
        """End a held slice: commit it now, or once its subprocess writers have staged it."""
        background = [w for w in self._writers if w.slice_id == slice_id and w.asynchronous]
        if not background:
            # The commit also claims the next slice in the same transaction (one round trip).
            self.commit(slice_id, claim_next=True)
            return
        claim = self._held.pop(slice_id)
        try:
            for writer in self._writers:
                if writer.slice_id == slice_id and not writer.asynchronous:
                    self._finish(writer, claim)
            for writer in background:
                writer.finish_slice_in_background()
        except StageLost:
            self.lose(claim)
            return
        except BaseException as e:
            self.give_back(claim, e)
            raise
        self._in_flight.append((claim, {id(w) for w in background}))

    @staticmethod
    def _finish(writer, claim: Claim) -> None:
        if writer.slice_id == claim.slice_id:
            claim.add_output(writer.sink, writer.finish_slice())

    def commit_staged(self, block: bool = False, claim_next: bool = False) -> int:
        """Commit every slice in flight that its subprocess writers have staged; returns how many.

        ``block``: wait until every slice in flight is staged and committed. ``claim_next``: the
        caller claims a slice right after, so that claim may ride in a commit's transaction.
        A slice whose staging failed is given back (with the error, which is raised); if a writer's
        child died, its slices in flight stay uncommitted (they are redone) and TableIOError is raised.
        """
        if not self._in_flight:
            return 0
        by_id = {claim.slice_id: (claim, waiting) for claim, waiting in self._in_flight}
        failure: Optional[BaseException] = None
        for writer in list(self._writers):
            if not writer.asynchronous:
                continue
            for sid, ok, value in writer.poll_staged(block=block):
                if sid not in by_id:
                    continue
                claim, waiting = by_id[sid]
                if ok:
                    claim.add_output(writer.sink, value)
                    waiting.discard(id(writer))
                elif isinstance(value, StageLost):  # the attempt lost: not an error of anyone's
                    self._drop(claim)
                    self.lose(claim)
                elif failure is None:
                    failure = value
                    self._drop(claim)
                    self.give_back(claim, value)
        ready = [claim for claim, waiting in self._in_flight if not waiting]
        self._in_flight = [entry for entry in self._in_flight if entry[1]]
        for claim in ready:
            if self.committable(claim):
                self.dataset.commit(claim, claim_next=claim_next)
            else:
                self.lose(claim)
        if failure is not None:
            raise failure
        return len(ready)

    def _drop(self, claim: Claim) -> None:
        self._in_flight = [entry for entry in self._in_flight if entry[0] is not claim]

    def give_back_in_flight(self, error: BaseException) -> None:
        """Release every slice still waiting to be staged (its writer is gone)."""
        in_flight, self._in_flight = self._in_flight, []
        for claim, _ in in_flight:
            self.give_back(claim, error)
