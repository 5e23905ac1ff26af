"""Giving back a slice that was claimed ahead but never started.

A commit may claim the next free slice in its own transaction (``Dataset.commit(claim_next=True)``,
one round trip per slice instead of two) for a ``get_next_slice()`` that is expected to follow. When
the program ends without asking for it, that claim must not wait for the lease to expire, nor count
as a failed attempt of its slice (it was never started: counting it could fail a healthy slice after
a few such exits). So it goes straight back to ``todo`` with the attempt count it had before.
"""

from __future__ import annotations

from typing import Optional

from aimaster.data.coordinator import Claim, Dataset


def give_back_unstarted(dataset: Dataset) -> Optional[Claim]:
    """Return the dataset's claimed-ahead slice (if any) to todo, uncounted; the claim given back.

    One transaction (:meth:`Dataset.give_back_uncounted`), only while the claim key still holds our
    attempt and no copy of the slice exists and nobody committed it; otherwise it is released as any
    attempt is (the usual rules then decide whether it goes back to todo).
    """
    claim = dataset.take_claimed_ahead()
    if claim is None:
        return None
    dataset.session.untrack(claim)
    if claim.record is None or claim.lost or not dataset.give_back_uncounted(
            claim.slice_id, dataset.k.claim + claim.slice_id, None, claim.record):
        dataset.release(claim)
    return claim
