"""Giving back a slice that was claimed ahead but never started.

Two kinds of such claims: the one a commit claimed for the next ``get_next_slice()``, and those a
framework reader (:mod:`aimaster.frameworks.feed`) queued ahead of the slice it reads, which it gives
back once no slice is free, so that an idle peer takes them instead of waiting.

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
    give_back_claim(dataset, claim)
    return claim


def give_back_claim(dataset: Dataset, claim: Claim) -> None:
    """Return one never-started claim's slice to todo, uncounted (see :func:`give_back_unstarted`).

    A speculative copy gives back only itself (the attempt it shadows goes on); an attempt whose
    claim moved meanwhile is released as any attempt is.
    """
    dataset.session.untrack(claim)
    if claim.backup or claim.record is None or claim.lost or not dataset.give_back_uncounted(
            claim.slice_id, dataset.k.claim + claim.slice_id, None, claim.record):
        dataset.release(claim)
