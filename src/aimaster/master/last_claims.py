"""The slices a dead worker claimed last, read from their ``attempts/<s>`` records.

The master learns what a worker holds from its heartbeats (``held``), read once a round. A worker
that dies within a round of its claim (a program that crashes on the first input of its slice) was
never seen holding it: by the time the master looks, its exit has revoked its lease, heartbeat
included. The slice's ``attempts/<s>`` record is not leased and names the worker of its latest
primary attempt, and a commit deletes it; so the uncommitted slices whose record names the dead
worker are the ones it claimed last. The hopeless-crash rule needs them: two workers dying on the
same poison slice, each before the master saw it hold the slice, must read as a poison slice (the
job survives it), not as a program that cannot run at all (the job ends at once).
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional

from aimaster.data.records import AttemptRecord
from aimaster.errors import EtcdDataError


def last_claimed_by(store, dataset_ids: Iterable[str], dataset: Callable[[str], Optional[object]],
                    worker_id: str, warn: Callable[[str], None]) -> List[str]:
    """``"<dataset>/<slice>"`` of every uncommitted slice whose latest primary attempt is
    ``worker_id``'s. A malformed record is warned about and skipped (it cannot name a worker)."""
    found: List[str] = []
    for ds_id in dataset_ids:
        try:
            ds = dataset(ds_id)
        except EtcdDataError as e:  # a malformed plan: the master says so elsewhere, this is a hint
            warn(str(e))
            continue
        if ds is None:
            continue
        prefix = ds.k.attempts
        for rel, raw, _ in store.iter_prefix_chunks(prefix):
            try:
                record = AttemptRecord.from_json(raw, store.key(rel))
            except EtcdDataError as e:
                warn(str(e))
                continue
            if record.worker == worker_id:
                found.append(f"{ds_id}/{rel[len(prefix):]}")
    return found
