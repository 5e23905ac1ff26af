"""``--slice-timeout S``: an attempt that runs longer than S seconds is abandoned, and its slice
handed out again as a failed attempt.

This is for the slice that hangs *inside a healthy worker*: one input that sends a decoder into an
endless loop, a request that never returns. The worker's lease stays alive (its keep-alive thread
runs) and, with a DataLoader or a writer thread, its heartbeat may even move, so neither the lease
nor hang detection ever frees the slice; without a bound the job waits for it forever.

Who acts: each supervisor (the master, and every ``aimaster join``, which inherits the setting from
the job record) watches the claims of the workers *it launched*, aged on its own clock from the
moment it first saw each claim or speculative copy (a copy can hang on the same input), so clock
skew between machines never shortens or stretches an attempt. A claim the worker's heartbeat *parks* (it waits
for slices with that slice finished, only not committed yet) is not running and never times out.

What happens to an overdue attempt:

1. its error is recorded on the slice (``attempt ran longer than --slice-timeout=S``), only while
   that attempt is still the slice's latest, so the report and ``failed/`` say why;
2. the worker holding it is killed (SIGKILL to its process group: a hung program may ignore
   SIGTERM). A killed process cannot commit, which is what makes abandoning the attempt safe; and
   even a commit racing the kill could only be the slice's one commit (commits are first-wins),
   never a second output;
3. once reaped, its lease is revoked (its claims vanish at once) and its slices requeued: the
   attempt counts toward ``--max-slice-attempts``, after which the slice fails and the job goes on;
4. the worker is relaunched in its slot (a slice timeout is the slice's failure, not the worker's:
   it does not count toward ``--max-num-of-same-error``); the supervisor decides it
   (:meth:`aimaster.master.supervisor.Supervisor.on_exit`).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from aimaster.data import records
from aimaster.data.keys import DatasetKeys
from aimaster.master import actions as act
from aimaster.master import readback

STOP_REASON = "slice-timeout"


def message(seconds: float) -> str:
    return f"attempt ran longer than --slice-timeout={seconds:g}s and was abandoned"


class SliceTimeout:
    """Finds this supervisor's workers holding an attempt older than ``seconds``; :meth:`decide` says how
    to end them (applied by :func:`aimaster.master.apply.apply`)."""

    BLIND_AFTER = 3.0  # a longer gap between rounds (etcd away, the master stopped) is not counted

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.abandoned = 0  # attempts abandoned by this supervisor (for the report)
        self._seen: Dict[Tuple[str, str, str], float] = {}  # (dataset, key, attempt) -> first seen
        self._last: Optional[float] = None

    def attempts(self, store: Any, ds_ids: Iterable[str], now: Optional[float] = None
                 ) -> Dict[str, List[Tuple[str, str, float]]]:
        """worker -> ``(dataset, slice, age)`` of every attempt it holds, primary claims and
        speculative copies alike (a copy can hang on the same input), aged from first sight."""
        now = time.monotonic() if now is None else now
        if self._last is not None and now - self._last > self.BLIND_AFTER:
            gap = now - self._last
            self._seen = {k: t + gap for k, t in self._seen.items()}
        self._last = now
        seen: Dict[Tuple[str, str, str], float] = {}
        out: Dict[str, List[Tuple[str, str, float]]] = {}
        for ds_id in ds_ids:
            k = DatasetKeys(ds_id)
            for prefix in (k.claim, k.backup):
                good, _ = readback.read_prefix(store, prefix, readback.claim_problem)  # bad ones: see in_flight
                for rel, (value, _) in good.items():
                    key = (ds_id, prefix + rel, str(value.get("at")))
                    first = seen[key] = self._seen.get(key, now)
                    out.setdefault(value["w"], []).append((ds_id, rel.split("/", 1)[0], now - first))
        self._seen = seen
        return out

    def overdue(self, held: List[Tuple[str, str, float]], beat: Any) -> List[Tuple[str, str, float]]:
        """The attempts of ``held`` older than the timeout that are running, not parked by ``beat``."""
        return [(ds, sid, age) for ds, sid, age in held
                if age > self.seconds and not records.beat_parks(beat, f"{ds}/{sid}")]

    def decide(self, live: Sequence[Any], held: Mapping[str, List[Tuple[str, str, float]]],
               beats: Mapping[str, Any]) -> List[Any]:
        """One round's actions on ``live`` workers (:class:`~aimaster.master.supervisor.Running`),
        given the attempts each holds (:meth:`attempts`) and their heartbeats: for each worker with
        an overdue attempt, record the error on each such slice, then kill the worker."""
        out: List[Any] = []
        for w in live:
            if w.stop_reason or (w.adopted and not w.local):
                continue  # already being stopped; or a worker we cannot signal (its own supervisor acts)
            late = self.overdue(held.get(w.worker_id, []), beats.get(w.worker_id))
            if not late:
                continue
            text = message(self.seconds)
            out += [act.RecordSliceError(ds_id, sid, w.worker_id, text) for ds_id, sid, _ in late]
            self.abandoned += len(late)
            slices = ", ".join(f"{ds}/{sid} ({age:.0f}s)" for ds, sid, age in late)
            out.append(act.KillWorker(w.worker_id, STOP_REASON, f"worker {w.worker_id} (pid {w.pid}) holds {slices} "
                                      f"past --slice-timeout={self.seconds:g}s: killing it; the slice is handed "
                                      f"out again"))
        return out
