"""Workers of the job that the master did not launch: those an ``aimaster join`` runs, anywhere.

They are full workers of the job: they claim and commit like the master's own, and the master's
hang detection, slow-worker replacement and moot-stops apply to them too. But the master cannot
signal them (they may be on another host, and their supervisor, not the master, relaunches them),
so a :class:`JoinedWorker`'s ``signal`` writes a stop request (:mod:`aimaster.master.stop_requests`)
that its ``aimaster join`` acts on. The master never reaps them: their exits, relaunches and
failure counts are their supervisor's.
"""

from __future__ import annotations

import signal as signals
import time
from typing import Callable, Dict, List

from aimaster.master.launcher import Worker
from aimaster.master.watch import WorkerWatch

JOIN_LAUNCHER = "join:"


class JoinedWorker(Worker):
    """A worker an ``aimaster join`` launched, seen through its registration."""

    def __init__(self, worker_id: str, record: Dict, request: Callable[[Worker, str, str], None],
                 is_registered: Callable[[str], bool]):
        super().__init__()
        self._registered_as(worker_id, record)
        self.launcher = str(record.get("launcher", ""))
        self._request = request
        self._is_registered = is_registered
        self.requested: List[str] = []  # signals asked for so far ("TERM", "KILL")

    adopted = True  # not ours to reap or relaunch
    local = False  # signalled through its supervisor, by stop request

    @property
    def pid(self) -> int:
        return self._pid

    def poll(self):
        if self.returncode is None and not self._is_registered(self.worker_id):
            self.returncode, self.ended = -1, time.time()
        return self.returncode

    def signal(self, sig: int) -> None:
        """Ask the worker's supervisor to send ``sig`` (SIGCONT is the supervisor's own business)."""
        name = {signals.SIGTERM: "TERM", signals.SIGKILL: "KILL"}.get(sig)
        if name is None or name in self.requested or self.poll() is not None:
            return
        self.requested.append(name)
        self._request(self, name, self.stop_reason or "stopped")


class JoinedWorkers:
    """The master's view of joined workers, refreshed from the watch every round."""

    def __init__(self, watch: WorkerWatch, request: Callable[[Worker, str, str], None]):
        self.watch = watch
        self.request = request
        self.workers: Dict[str, JoinedWorker] = {}

    def refresh(self) -> List[JoinedWorker]:
        """The joined workers alive now (those whose registration vanished are dropped)."""
        for wid, info in self.watch.workers.items():
            launcher = info.record.get("launcher") if info.registered else None
            if wid not in self.workers and isinstance(launcher, str) and launcher.startswith(JOIN_LAUNCHER):
                self.workers[wid] = JoinedWorker(wid, info.record, self.request, self.watch.registered)
        for wid in [wid for wid, w in self.workers.items() if w.poll() is not None]:
            del self.workers[wid]
        return list(self.workers.values())


def supervise(master, view, complete: bool) -> None:
    """The master's hang detection, slow-worker replacement and moot-stops, for joined workers.

    Each acts by stop request (``JoinedWorker.signal``); the worker's ``aimaster join`` kills or
    replaces it and relaunches under the job's policy. Called once per round of the control loop.
    """
    live = [w for w in master.joined.refresh() if w.poll() is None and not w.stop_reason]
    if not live:
        return
    if complete:
        since = master._complete_since if master._complete_since is not None else time.monotonic()
        if time.monotonic() - since >= master.opts.completion_grace:
            for w in live:
                info = master.watch.get(w.worker_id)
                if info is not None and info.registered and info.held:
                    w.stop_reason = "moot"
                    w.signal(signals.SIGTERM)
        return
    if master.hang is not None:
        for w in live:
            idle = master.hang.hung(w, master.watch.get(w.worker_id))
            if idle is not None:
                master._log(f"worker {w.worker_id} (pid {w.pid} on {w.host}) made no progress for {idle:.0f}s: "
                            f"asking its aimaster join to kill it (--job-hang-interval={master.opts.hang_interval:g})")
                w.stop_reason = "hang"
                w.signal(signals.SIGKILL)
    _replace_slow(master, view, [w for w in live if not w.stop_reason])


def _replace_slow(master, view, live: List[JoinedWorker]) -> None:
    if not master.slow.enabled or not live:
        return
    if sum(d.todo for d in view.datasets) < len(master.fleet.live()) + len(live):
        return  # little left to hand out: a replacement would come too late; speculation covers the tail
    if len(master.replaced) >= max(1, master.opts.workers, len(live)):
        return
    inflight = {w.worker_id: master.watch.oldest_inflight(w.worker_id) for w in live}
    found = master.slow.find([w.worker_id for w in live], master.watch.durations(), inflight)
    for wid, pace, typical in found[:1]:
        w = master.joined.workers[wid]
        w.stop_reason = "slow"
        w.signal(signals.SIGTERM)
        master.relaunches["slow"] = master.relaunches.get("slow", 0) + 1
        master.replaced.append(wid)
        master._log(f"worker {wid} on {w.host} is slow ({pace:.2f}s per slice, its peers' median is "
                    f"{typical:.2f}s): asking its aimaster join to replace it")
