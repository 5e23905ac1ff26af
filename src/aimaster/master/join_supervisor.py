"""``aimaster join``'s side of stop requests: act on what the master asks of our workers.

The master decides job-wide which worker is hung, slow or moot (it sees every worker's progress);
it cannot signal ours, so it writes ``stop/<worker>`` (:mod:`aimaster.master.stop_requests`) and we
act as the master would have on its own host:

* ``slow`` (SIGTERM): start a replacement in the worker's slot now; the slow one retires once the
  replacement runs (the supervisor's usual retirement, ``Master._retire_replaced``);
* ``KILL`` (a hung worker): SIGKILL; the exit is then classified (``hang``) and relaunched under the
  job's fault policy, counted against ``--max-num-of-same-error`` like a hang we detected ourselves;
* any other SIGTERM (moot once the data is done, the job stopped): SIGTERM, SIGKILL after a grace
  period; not a failure.

A request is acted on once, and only for a worker we run that we are not already stopping. While
the job has a master, it alone decides who is hung or slow; without one we decide for our workers.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Set, Tuple

from aimaster.data import keys
from aimaster.master.fleet import Fleet
from aimaster.master.stop_requests import pending
from aimaster.master.watch import WorkerWatch


class StopRequestFollower:
    def __init__(self, fleet: Fleet, store, log: Callable[[str], None], interval: float = 0.5):
        self.fleet = fleet
        self.store = store
        self.log = log
        self.interval = interval
        self._last = 0.0
        self._done: Set[Tuple[str, str]] = set()
        self._master_checked = float("-inf")
        self._master = False

    def follow(self, watch: WorkerWatch) -> Dict[str, str]:
        """Act on new requests for our live workers; returns {worker: what was done} (for tests/logs)."""
        now = time.monotonic()
        if now - self._last < self.interval:
            return {}
        self._last = now
        ours = {w.worker_id: w for w in self.fleet.live()}
        if not ours:
            return {}
        acted: Dict[str, str] = {}
        for wid, req in pending(self.store).items():
            w = ours.get(wid)
            key = (wid, req["signal"])
            if w is None or key in self._done or w.stop_reason:
                continue
            self._done.add(key)
            reason = req["reason"]
            by = req["by"]
            if req["signal"] == "KILL":
                self.log(f"worker {wid} (pid {w.pid}): {by} asks to kill it ({reason}): killing it")
                self.fleet.kill(w, "hang" if reason == "hang" else reason)
                acted[wid] = "killed"
            elif reason == "slow":
                new = self.fleet.replace(w)
                self.log(f"worker {wid} is slow ({by} says): started {new.worker_id} to replace it")
                acted[wid] = "replaced"
            else:
                self.log(f"worker {wid} (pid {w.pid}): {by} asks to stop it ({reason})")
                self.fleet.terminate(w, reason, grace=5.0)
                acted[wid] = "terminated"
        return acted

    def master_decides(self) -> bool:
        """Whether the job has a master now: it then decides which of our workers is hung or slow
        (it sees the whole job; two deciders would act twice), and we only carry out its requests.
        Without one (it died, a standby has not taken over yet), we watch our workers ourselves."""
        now = time.monotonic()
        if now - self._master_checked >= 1.0:
            self._master_checked = now
            try:
                self._master = self.store.get_value(keys.MASTER) is not None
            except Exception:  # noqa: BLE001 - etcd away or a malformed key: decide ourselves
                self._master = False
        return self._master
