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

from aimaster.master import actions as act
from aimaster.master.launcher import Worker
from aimaster.master.supervisor import Running
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

    The decisions are the supervisor's (:class:`~aimaster.master.supervisor.Supervisor`), taken on
    what the master observes of them (registration, heartbeats, slice durations); they are carried
    out by stop request (``JoinedWorker.signal``): the worker's ``aimaster join`` kills or replaces it
    and relaunches under the job's policy. Called once per round of the control loop.
    """
    joined = [w for w in master.joined.refresh() if w.poll() is None and not w.stop_reason]
    if not joined:
        return
    live = [Running(w.worker_id, w.slot, w.pid, w.launched, w.stop_reason, w.adopted, w.local) for w in joined]
    sup, infos = master.supervisor, master.watch.workers
    if complete:
        since = master._complete_since if master._complete_since is not None else time.monotonic()
        # A joined worker that never registered, or left its lease, is its supervisor's to reap.
        apply_joined(master, [a for a in sup.moot(live, infos, since) if isinstance(a, act.TerminateWorker)])
        return
    actions = sup.hung(live, infos) if master.hang is not None else []
    apply_joined(master, actions)
    rest = [r for r in live if r.worker_id not in {a.worker_id for a in actions}]
    inflight = {r.worker_id: master.watch.oldest_inflight(r.worker_id) for r in rest}
    apply_joined(master, sup.slow_joined(rest, sum(d.todo for d in view.datasets), len(master.fleet.live()),
                                         len(master.replaced), master.opts.workers, master.watch.durations(),
                                         inflight))


def apply_joined(master, actions: List) -> None:
    """Carry out the supervisor's actions on joined workers, each as a stop request to its supervisor."""
    for a in actions:
        w = master.joined.workers.get(a.worker_id)
        if w is None:
            continue
        if isinstance(a, act.KillWorker):
            if a.reason == "hang":
                master._log(f"worker {w.worker_id} (pid {w.pid} on {w.host}) made no progress for {a.idle or 0:.0f}s: "
                            f"asking its aimaster join to kill it (--job-hang-interval={master.opts.hang_interval:g})")
            w.stop_reason = a.reason
            w.signal(signals.SIGKILL)
        elif isinstance(a, act.TerminateWorker):
            w.stop_reason = a.reason
            w.signal(signals.SIGTERM)
        elif isinstance(a, act.ReplaceWorker):
            w.stop_reason = "slow"
            w.signal(signals.SIGTERM)
            master.relaunches["slow"] = master.relaunches.get("slow", 0) + 1
            master.replaced.append(a.worker_id)
            master._log(f"worker {a.worker_id} on {w.host} is slow ({a.pace:.2f}s per slice, its peers' median is "
                        f"{a.typical:.2f}s): asking its aimaster join to replace it")
        else:
            raise TypeError(f"not an action on a joined worker: {a!r:.80}")
