"""How a consumer holds, writes, commits and gives back slices, per kind of client.

* :class:`FileBinding` hands adopted claims to the :class:`~aimaster.inference.PosixFileClient`, so
  the client's own atomic output helper (``open_slice_output(slice_id=...)``) and
  ``commit_slice(slice_id)`` work for them exactly as for slices from ``get_next_slice()``.
* :class:`TableBinding` stages each slice's rows in the job's output table sink as they are written
  (one open stage per slice in flight), and commits the stage's reference with the slice.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from aimaster.data.coordinator import Claim, Dataset
from aimaster.errors import ConfigError


class Binding:
    """The consumer's side of one client: hold, write, commit, release."""

    dataset: Dataset

    def hold(self, claim: Claim) -> None:
        """Start holding a slice that reached the consumer."""

    def seal(self, claim: Claim) -> Any:
        """Stop taking outputs for a complete slice (the consumer's thread); returns what
        :meth:`commit` needs, which may then run in another thread."""

    def commit(self, claim: Claim, sealed: Any = None) -> bool:
        raise NotImplementedError

    def release(self, claim: Claim, error: Optional[str]) -> None:
        """Give a slice back uncommitted, dropping its staged outputs. The claim key is deleted only
        if it still holds this attempt (``claim.record``): after a lost claim it is another's."""
        raise NotImplementedError

    def output(self, claim: Claim, name: Optional[str], suffix: str, mode: str, **kwargs: Any):
        raise ConfigError("this dataset's outputs are table rows: use stream.write(rows, col_indices)")

    def write(self, claim: Claim, rows: Sequence[Sequence[Any]], col_indices: Optional[Sequence[int]]) -> None:
        raise ConfigError("this dataset's outputs are files: use stream.output(slice_id) (or the client's "
                          "open_slice_output(slice_id=...))")


class FileBinding(Binding):
    def __init__(self, client):
        self.client = client
        self.dataset = client.dataset
        self._files: Dict[tuple, Any] = {}

    def hold(self, claim: Claim) -> None:
        self.client._hold_claim(claim)

    def output(self, claim: Claim, name: Optional[str], suffix: str, mode: str, **kwargs: Any):
        key = (claim.slice_id, claim.attempt, name, suffix)
        handle = self._files.get(key)
        if handle is None or handle.closed:
            handle = self.client.open_slice_output(name, mode=mode, slice_id=claim.slice_id, suffix=suffix,
                                                   **kwargs)
            self._files[key] = handle
        return handle

    def _drop(self, claim: Claim) -> None:
        for key in [k for k in self._files if k[:2] == (claim.slice_id, claim.attempt)]:
            del self._files[key]

    def seal(self, claim: Claim) -> None:
        self._drop(claim)

    def commit(self, claim: Claim, sealed: Any = None) -> bool:
        return self.client.commit_slice(claim.slice_id)  # closes (fsyncs) the slice's files first

    def release(self, claim: Claim, error: Optional[str]) -> None:
        self._drop(claim)
        self.client.release_slice(claim.slice_id, error)


class TableBinding(Binding):
    def __init__(self, client, filter_value: Any = None):
        from aimaster.inference.table import attempt_ordinal

        self.client = client
        self.dataset = client.dataset
        self.filter_value = filter_value
        self._ordinal = attempt_ordinal
        self._sink = None
        self._stages: Dict[tuple, Any] = {}

    def _sink_or_none(self):
        if self._sink is None and self.client.config.output_table:
            self._sink = self.client.output_sink()
        return self._sink

    def _stage(self, claim: Claim):
        key = (claim.slice_id, claim.attempt)
        stage = self._stages.get(key)
        if stage is None:
            sink = self._sink_or_none()
            if sink is None:
                raise ConfigError("stream.write() needs MaxComputeTableConfig(output_table=...)")
            stage = self._stages[key] = sink.open_stage(claim.slice_id, self._ordinal(claim))
        return stage

    def write(self, claim: Claim, rows: Sequence[Sequence[Any]], col_indices: Optional[Sequence[int]]) -> None:
        from aimaster.io.tables.rows import drop_filtered

        self._stage(claim).write(drop_filtered(rows, self.filter_value), col_indices)

    def seal(self, claim: Claim) -> Any:
        if self._sink_or_none() is None:
            return None
        # Like the SDK's table writer: a slice with no output rows still commits an (empty) stage.
        stage = self._stage(claim)
        del self._stages[(claim.slice_id, claim.attempt)]
        return stage

    def commit(self, claim: Claim, sealed: Any = None) -> bool:
        from aimaster.io.tables.base import StageLost

        if sealed is not None:
            try:
                ref = sealed.commit()
            except StageLost:  # the attempt lost already (the job ended, its upload session aged)
                sealed.abort()
                return self.client._lose(claim)
            except BaseException:
                sealed.abort()
                raise
            claim.add_output(self._sink, ref)
        if not self.client._committable(claim):
            return self.client._lose(claim)  # as the SDK writer does: never commit into an aged session
        return self.dataset.commit(claim)

    def release(self, claim: Claim, error: Optional[str]) -> None:
        stage = self._stages.pop((claim.slice_id, claim.attempt), None)
        if stage is not None:
            stage.abort()
        self.dataset.release(claim, error)
