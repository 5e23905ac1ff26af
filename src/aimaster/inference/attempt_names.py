"""The name each attempt at a table slice stages its rows under (``attempt_ordinal``).

Every attempt at a slice -- each retry and each speculative copy -- stages under a name of its own,
so a losing attempt only ever discards its own output. For MaxCompute the name's leading number
(the *ordinal*) also picks the attempt's upload block (:mod:`aimaster.io.tables.odps_sink`), so two
attempts must never share one; see docs/tables.md, "Writing: exactly-once sinks".
"""

from __future__ import annotations

import re
from typing import Tuple

from aimaster.data.coordinator import Claim, Dataset


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
    claim) follows, so file staging names never collide either. Kept in ``claim.stage_name``.
    """
    if claim.stage_name is None:
        slots, odps = _stage_layout(claim.dataset)
        k = (_copy_slot(claim, slots) if odps else 1) if claim.backup else 0
        ordinal = (claim.attempt_no - 1) * slots + k
        safe = re.sub(r"\.\.+", ".", re.sub(r"[^A-Za-z0-9._-]", "-", claim.attempt)).strip(".")
        claim.stage_name = f"{ordinal}.{safe}"
    return claim.stage_name


def _stage_layout(dataset: Dataset) -> Tuple[int, bool]:
    """(ordinals per attempt, whether the output is MaxCompute), from the agreed sink description
    (which ``agreed_sink`` reads from etcd once, then keeps)."""
    description = dataset.agreed_sink() or {}
    odps = description.get("kind") == "odps"
    copies = description.get("copies_per_attempt", 1) if odps else 1
    return 1 + (copies if isinstance(copies, int) and copies >= 0 else 1), odps


def _copy_slot(claim: Claim, slots: int) -> int:
    """One of the copy ordinals ``1 .. slots - 1`` of the claim's attempt, taken in etcd for good
    (:meth:`~aimaster.data.handovers.Handovers.take_copy_slot`); NoCopySlot when none is left or
    the slice was committed meanwhile (the copy is pointless)."""
    k = claim.dataset.take_copy_slot(claim, slots)
    if k is None:
        raise NoCopySlot(f"no block ordinal left for a copy of slice {claim.slice_id} attempt {claim.attempt_no}")
    return k
