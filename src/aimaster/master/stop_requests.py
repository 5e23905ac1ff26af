"""Stop requests: how the master stops a worker it cannot signal (one on another host).

The master decides when a worker must go (hung, slow, moot once the data is done, the job stopped)
but can send a signal only to a process on its own host. For every other worker it writes a
request, ``stop/<worker>`` (see :mod:`aimaster.data.keys`), and the supervisor on the worker's
host -- the ``aimaster join`` that launched it (:mod:`aimaster.master.join_supervisor`) -- acts on
it: SIGTERM (then SIGKILL after a grace period) or SIGKILL, and relaunches the worker under the
job's policy, as it would after stopping it itself. The master writes the request for workers it
signals itself as well: then ``aimaster status`` can tell a worker the master stopped (and why)
from one that was preempted.

A request names one worker id, and worker ids are never reused (a relaunch is a new incarnation, a
new id), so a request can never reach a later worker by mistake; it is not bound to a lease, so
that it still explains, after the fact, why the worker left. Requests are advisory input: a value
that is not what the master writes is ignored.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from aimaster.data import keys
from aimaster.data.store import Store
from aimaster.master import readback

SIGNALS = ("TERM", "KILL")


def request_problem(value: Any, meta: Any = None) -> Optional[str]:
    if not isinstance(value, dict):
        return "it is not an object"
    if value.get("signal") not in SIGNALS:
        return f"its signal {value.get('signal')!r:.20} is not one of {', '.join(SIGNALS)}"
    if not isinstance(value.get("reason"), str) or not isinstance(value.get("by"), str):
        return "it names no reason and requester"
    return None


def request(store: Store, worker_id: str, signal_name: str, reason: str, by: str) -> None:
    """Ask ``worker_id``'s supervisor to signal it (``"TERM"`` or ``"KILL"``) for ``reason``."""
    store.put(keys.stop_request(worker_id), {"signal": signal_name, "reason": reason, "by": by, "t": time.time()})


def pending(store: Store, warnings: Optional[readback.Warnings] = None) -> Dict[str, Dict[str, Any]]:
    """Every valid request, by worker id (malformed ones left out, with a warning)."""
    good, refused = readback.read_prefix(store, keys.STOP_REQUESTS, request_problem)
    if warnings is not None:
        warnings.note(refused)
    return {wid: value for wid, (value, _) in good.items()}


def how_workers_left(store: Store) -> Dict[str, str]:
    """``{worker: "preempted" | "stopped (<reason>)"}`` for ``aimaster status``: a worker that gave its
    slices back on SIGTERM from outside is *preempted* (also when its ``aimaster join`` relayed a
    SIGTERM); one its supervisor stopped says why (slow, hang, moot, sync, stopped)."""
    from aimaster.data.preemption import preempted_at

    out: Dict[str, str] = {}
    stats, _ = readback.read_prefix(store, keys.STATS, readback.stats_problem)
    for wid, (value, _) in stats.items():
        if preempted_at(value) is not None:
            out[wid] = "preempted"
    for wid, req in pending(store).items():
        out[wid] = "preempted" if req["reason"] == "preempted" else f"stopped ({req['reason']})"
    return out
