"""What the master knows of every worker of the job, read from etcd each round.

Workers publish three things (see :mod:`aimaster.data.keys`): a registration and a heartbeat, both
bound to their lease, and counters that outlive them. From these the watch keeps, per worker:

* whether it is registered (its lease is alive);
* when it last made *progress*, on the master's own clock: the moment the master first saw its
  heartbeat change (heartbeats ride on every claim and commit), so clock skew between machines
  never makes a busy worker look hung or a hung one look busy;
* the slices it held at its last heartbeat, so that when it dies the master can record the error
  against them and hand them out again at once;
* its recent slice durations, and how long each of its in-flight slices has been running (again on
  the master's clock, from when the master first saw the claim).

It also reports *departures*: workers whose registration vanished (process died, or lease lost).

When the master itself could not look for a while (etcd was down, or the master was stopped), that
blind interval is not counted against anybody: ages and idle times are shifted past it, so an etcd
restart does not make every worker look slow or hung at once.

Registrations, heartbeats, counters and claims are advisory: one that is not what a worker writes
(see :mod:`aimaster.master.readback`) is left out with a warning, never a reason to stop the master.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from aimaster.data import keys
from aimaster.data.keys import DatasetKeys
from aimaster.data.records import ClaimRecord
from aimaster.data.store import Store
from aimaster.errors import EtcdDataError
from aimaster.master import readback


@dataclass
class WorkerInfo:
    worker_id: str
    first_seen: float
    last_progress: float
    registered: bool = False
    record: Dict[str, Any] = field(default_factory=dict)
    beat: Dict[str, Any] = field(default_factory=dict)
    beat_rev: int = 0
    stats: Dict[str, Any] = field(default_factory=dict)
    departed_at: Optional[float] = None  # when its registration was first seen gone (master's clock)
    registered_at: Optional[float] = None  # when its registration was first seen (master's clock)

    @property
    def held(self) -> List[str]:
        """``"<dataset>/<slice>"`` of every attempt held at the last heartbeat."""
        held = self.beat.get("held")
        return [h for h in held if isinstance(h, str) and "/" in h] if isinstance(held, list) else []

    @property
    def state(self) -> str:
        return str(self.beat.get("state", "starting"))

    @property
    def recent(self) -> List[float]:
        recent = self.stats.get("recent")
        if not isinstance(recent, list):
            return []
        return [float(x) for x in recent if isinstance(x, (int, float)) and not isinstance(x, bool)]


class WorkerWatch:
    def __init__(self, store: Store, blind_after: float = 3.0, warnings: Optional[readback.Warnings] = None):
        self.store = store
        self.warnings = warnings or readback.Warnings()
        self.blind_after = blind_after
        self._last_refresh: Optional[float] = None
        self.workers: Dict[str, WorkerInfo] = {}
        self._claim_seen: Dict[Tuple[str, str, str], float] = {}
        self.inflight: Dict[str, List[Tuple[str, str, float]]] = {}  # worker -> [(ds, slice, age)]

    def get(self, worker_id: str) -> Optional[WorkerInfo]:
        return self.workers.get(worker_id)

    def registered(self, worker_id: str) -> bool:
        info = self.workers.get(worker_id)
        return bool(info and info.registered)

    def refresh(self, dataset_ids: Iterable[str] = ()) -> List[WorkerInfo]:
        """Read the job's workers; return those whose registration vanished since the last call."""
        st = self.store
        regs, refused = readback.read_prefix(st, keys.WORKERS, readback.registration_problem)
        beats, refused_beats = readback.read_prefix(st, keys.BEATS, readback.beat_problem)
        stats, refused_stats = readback.read_prefix(st, keys.STATS, readback.stats_problem)
        self.warnings.note(refused + refused_beats + refused_stats)
        now = time.monotonic()
        if self._last_refresh is not None and now - self._last_refresh > self.blind_after:
            self._forgive(now - self._last_refresh)
        self._last_refresh = now
        departed = []
        for wid in set(regs) | set(beats) | set(stats) | set(self.workers):
            info = self.workers.get(wid)
            if info is None:
                info = self.workers[wid] = WorkerInfo(wid, first_seen=now, last_progress=now)
            was = info.registered
            info.registered = wid in regs
            if info.registered:
                info.record = regs[wid][0]
                if info.registered_at is None:
                    info.registered_at = now
            if wid in beats:
                value, meta = beats[wid]
                if meta.mod_revision != info.beat_rev:
                    info.beat_rev, info.beat, info.last_progress = meta.mod_revision, value, now
            if wid in stats:
                if stats[wid][0].get("slices") != info.stats.get("slices"):
                    info.last_progress = now
                info.stats = stats[wid][0]
            if was and not info.registered:
                departed.append(info)
                info.departed_at = now
            elif info.registered:
                info.departed_at = None
        self._refresh_claims(dataset_ids, now)
        return departed

    def _refresh_claims(self, dataset_ids: Iterable[str], now: float) -> None:
        seen: Dict[Tuple[str, str, str], float] = {}
        inflight: Dict[str, List[Tuple[str, str, float]]] = {}
        for ds_id in dataset_ids:
            prefix = DatasetKeys(ds_id).claim
            for rel, raw, _ in self.store.iter_prefix_chunks(prefix):
                try:
                    claim = ClaimRecord.from_json(raw, self.store.key(rel))
                except EtcdDataError:
                    continue  # a malformed claim is the coordinator's to clear
                sid = rel[len(prefix):]
                key = (ds_id, sid, claim.attempt)
                first = seen[key] = self._claim_seen.get(key, now)
                inflight.setdefault(claim.worker, []).append((ds_id, sid, now - first))
        self._claim_seen = seen
        self.inflight = inflight

    def _forgive(self, blind: float) -> None:
        for info in self.workers.values():
            info.last_progress += blind
        self._claim_seen = {k: t + blind for k, t in self._claim_seen.items()}

    def oldest_inflight(self, worker_id: str) -> float:
        return max((age for _, _, age in self.inflight.get(worker_id, [])), default=0.0)

    def durations(self) -> Dict[str, List[float]]:
        return {wid: info.recent for wid, info in self.workers.items() if info.recent}
