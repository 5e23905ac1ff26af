"""The plan a planner returns and the one attempt at one slice a process holds (:class:`Claim`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from aimaster.data.outputs import OutputSink, StagedRef
from aimaster.data.records import ClaimRecord
from aimaster.data.store import Compare, dumps

if TYPE_CHECKING:
    from aimaster.data.coordinator import Dataset


@dataclass
class PlanData:
    """What a planner returns: the dataset's size and, for file datasets, its file list."""

    kind: str  # "files" or "table"
    num_items: int
    source: Dict[str, Any]
    items: Optional[List[str]] = None


@dataclass
class Claim:
    """One attempt at one slice, held by this process."""

    dataset: Dataset
    slice_id: str
    index: int
    attempt: str
    attempt_no: int
    lease_generation: int
    claimed_at: float = field(default_factory=time.time)
    outputs: List[Tuple[OutputSink, StagedRef]] = field(default_factory=list)
    items: int = 0
    backup: bool = False  # a speculative copy of a slice another worker holds
    record: Optional[ClaimRecord] = None  # what our claim/copy key holds, to delete only our own
    claim_latency: Optional[float] = None  # seconds the claim transaction took (for the histograms)
    lost: bool = False  # adopted after its claim went to another attempt: it can never commit
    stage_name: Optional[str] = None  # table outputs: the block name its staged rows go to
    # (record, its JSON): held_value's last answer, kept while ``record`` is that same object (the
    # claim's put and its commit's comparison both need it; each encoding costs a few µs).
    _held: Optional[Tuple[ClaimRecord, str]] = field(default=None, repr=False, compare=False)
    # (record, the mod revision of our key holding it): known when this process wrote that key and
    # read the transaction's revision; valid while ``record`` is that same object.
    _written: Optional[Tuple[ClaimRecord, int]] = field(default=None, repr=False, compare=False)

    def add_output(self, sink: OutputSink, ref: StagedRef) -> None:
        self.outputs.append((sink, ref))

    def held_value(self) -> Optional[str]:
        """The exact value our claim (or copy) key holds while this attempt holds it; None when the
        attempt was never written (its commit then compares nothing of it). A lost attempt expects
        a value no claim key ever holds, so its commit and release always fail."""
        if self.lost:
            return dumps({"lost": self.attempt})
        if self.record is None:
            return None
        if self._held is None or self._held[0] is not self.record:
            self._held = (self.record, dumps(self.record.to_json()))
        return self._held[1]

    def written_at(self, revision: int) -> None:
        """Our key now holds ``record``, written at store revision ``revision`` (a transaction of ours)."""
        if self.record is not None:
            self._written = (self.record, revision)

    def held_compare(self, rel: str) -> Optional[Compare]:
        """The comparison that holds only while this attempt still holds its key ``rel`` (None when
        the attempt was never written).

        The key's mod revision when this process wrote it and knows the revision: any later write
        changes it, even one of the very same value, and a key deleted (its lease expired, or
        given back) and made again has another. Otherwise (a claim adopted or lent from another
        process) the key's whole value, which names this attempt. The revision is a few bytes in
        the commit transaction instead of the value's 70 or so.
        """
        if not self.lost and self._written is not None and self._written[0] is self.record:
            return Compare.mod(rel) == self._written[1]
        held = self.held_value()
        return None if held is None else Compare.value(rel) == held


def slice_id_width(num_slices: int) -> int:
    return max(6, len(str(max(num_slices - 1, 0))))
