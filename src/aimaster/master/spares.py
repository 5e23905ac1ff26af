"""The master's warm spares (``aimaster run --warm-spares N``): when to start them, how one takes a slot.

The worker side and the record format are :mod:`aimaster.data.spare`. Here:

* spares are started once every first worker has registered (their start-up must not compete with
  the workers' own), and again after one was used, while the job can still have replacements
  (``--slow-worker-multiplier``: as many as it has workers). One that exits on its own before it
  was needed (the program failed while starting) is not started again: said once, the job goes on
  with fresh-process replacements;
* a slow worker's replacement is a ready spare when there is one: the master writes the "go" record
  over the spare's own "ready" record (compared by revision, so a spare that is gone, or a record
  someone rewrote, is never handed a slot) and the spare takes the slot; otherwise a new process;
* while a spare is ready, a replacement's start-up is a fraction of a second, which the rule that
  judges a replacement "too late" (:func:`aimaster.master.supervisor.too_late`) uses instead of
  the measured start-up of a fresh process;
* every spare is stopped (SIGTERM) as soon as all slices are committed, and its key deleted.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Tuple

from aimaster.data import keys, spare
from aimaster.data.store import Compare, Op, Store
from aimaster.errors import AimasterError
from aimaster.master.fleet import Fleet
from aimaster.master.launcher import Worker, worker_name

# A ready spare's start-up as a replacement: the master's next round (0.5 s) at most, then registering.
SPARE_STARTUP = 0.5


class WarmSpares:
    def __init__(self, store: Store, fleet: Fleet, wanted: int, workers: int, by: str, log: Callable[[str], None]):
        self.store = store
        self.fleet = fleet
        self.wanted = wanted
        self.workers = workers  # the job's replacements are bounded by its worker count
        self.by = by  # the master's session id, written into a "go" record
        self.log = log
        self.given_up = False  # a spare failed while starting: no more are started

    def ready(self) -> Tuple[Optional[Worker], Any]:
        """A live spare that said it is ready (its own record, its own pid) and that record's metadata,
        or ``(None, None)``."""
        for w in self.fleet.spares:
            if w.poll() is None and w.stop_reason is None:
                value, meta = spare.read(self.store, w.worker_id)
                if spare.is_ready(value, w.pid):
                    return w, meta
        return None, None

    def startup(self) -> Optional[float]:
        """A replacement's start-up now, if a spare is ready (None: a fresh process's, measured)."""
        return SPARE_STARTUP if self.fleet.spares and self.ready()[0] is not None else None

    def replace(self, slow: Worker) -> Worker:
        """Replace ``slow`` in its slot: by a ready spare, handed the new identity, or a new process."""
        w, meta = self.ready()
        if w is not None:
            incarnation = self.fleet.next_incarnation(slow)
            key = keys.spare(w.worker_id)
            go = {"state": spare.GO, "worker_id": worker_name(slow.slot, incarnation, self.fleet.id_suffix),
                  "slot": slow.slot, "incarnation": incarnation, "by": self.by, "t": time.time()}
            ok, _ = self.store.txn(f"hand slot {slow.slot} to warm spare {w.worker_id}",
                                   [Compare.mod(key) == meta.mod_revision], [Op.put(key, go)])
            if ok:
                return self.fleet.replace(slow, spare=w)
            self.log(f"warm spare {w.worker_id}'s record changed as it was handed slot {slow.slot}; "
                     f"a new process replaces {slow.worker_id}")
        return self.fleet.replace(slow)

    def tick(self, complete: bool, startups_known: bool) -> None:
        """One round: note spares that ended, stop them all once the data is done, start one when due."""
        for w in self.fleet.reap_spares():
            self._forget(w)
            if w.stop_reason is None and not complete:
                self.given_up = True
                tail = " | ".join(w.stderr_tail(3))
                self.log(f"warm spare {w.worker_id} exited (status {w.returncode}) before it was needed; no more "
                         f"spares are started" + (f": {tail}" if tail else ""))
        if complete:
            self.fleet.stop_spares()
            return
        if self.given_up or not startups_known or len(self.fleet.spares) >= self.wanted:
            return
        if sum(self.fleet.replacements.values()) + len(self.fleet.spares) >= max(1, self.workers):
            return  # as many replacements as workers: the slow-worker rule allows no more
        w = self.fleet.launch_spare()
        self.log(f"started warm spare {w.worker_id} (pid {w.pid})")

    def _forget(self, w: Worker) -> None:
        try:
            self.store.delete(keys.spare(w.worker_id))
        except AimasterError:
            pass  # etcd away: a stale "ready" of a dead pid is never handed a slot
