"""How a consumer holds, writes, commits and gives back slices: the interface each client implements.

The frameworks layer knows no SDK client: :func:`aimaster.frameworks.track` asks the client for its
binding (``client.framework_binding(filter_value)``), so ``aimaster.frameworks`` never imports
``aimaster.inference``. The two implementations live with their clients:

* :class:`aimaster.inference.posix.FileBinding` hands adopted claims to the ``PosixFileClient``, so
  the client's own atomic output helper (``open_slice_output(slice_id=...)``) and
  ``commit_slice(slice_id)`` work for them exactly as for slices from ``get_next_slice()``;
* :class:`aimaster.inference.table.TableBinding` stages each slice's rows in the job's output table
  sink as they are written (one open stage per slice in flight), and commits the stage's reference
  with the slice, under the rules of the SDK's table writer.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

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

    def commit(self, claim: Claim, sealed: Any = None, claim_next: bool = False) -> bool:
        """Commit a sealed slice; True if ours is its one commit. ``claim_next``: also claim the next
        free slice in the same transaction (``Dataset.take_claimed_ahead()`` returns it)."""
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
