"""Giving back a slice that was claimed ahead but never started.

A commit may claim the next free slice in its own transaction (``Dataset.commit(claim_next=True)``,
one round trip per slice instead of two) for a ``get_next_slice()`` that is expected to follow. When
the program ends without asking for it, that claim must not wait for the lease to expire, nor count
as a failed attempt of its slice (it was never started: counting it could fail a healthy slice after
a few such exits). So it goes straight back to ``todo`` with the attempt count it had before.
"""

from __future__ import annotations

from typing import Optional

import pyetcd.utils

from aimaster.data.coordinator import Claim, Dataset
from aimaster.data.store import dumps


def give_back_unstarted(dataset: Dataset) -> Optional[Claim]:
    """Return the dataset's claimed-ahead slice (if any) to todo, uncounted; the claim given back.

    One transaction, only while the claim key still holds our attempt and no copy of the slice
    exists and nobody committed it; otherwise it is released as any attempt is (the usual rules then
    decide whether it goes back to todo).
    """
    claim = dataset._next
    if claim is None:
        return None
    dataset._next = None
    session, st, tx, k = dataset.session, dataset.store, dataset.store.tx, dataset.k
    session.untrack(claim)
    sid = claim.slice_id
    attempts = dataset._attempts(sid)[0] or {}
    error = attempts.get("e") if isinstance(attempts.get("e"), str) else None
    claim_key = st.key(k.claim + sid)
    backup_prefix = st.key(k.backup + sid + "/")
    no_copy = tx.version(backup_prefix, range_end=pyetcd.utils.prefix_range_end(backup_prefix.encode())) == 0
    ok = False
    if claim.record is not None:
        ok, _ = st.txn(f"give back slice {sid}",
                       [tx.value(claim_key) == dumps(claim.record), tx.version(st.key(k.done + sid)) == 0, no_copy],
                       [tx.delete(claim_key), tx.delete(st.key(k.attempts + sid)),
                        tx.put(st.key(k.todo + sid), dumps({"a": claim.attempt_no - 1, "e": error}))])
    if ok:
        dataset._candidates = []
    else:
        dataset.release(claim)
    return claim
