"""The workers one supervisor is responsible for: one per slot, launched, relaunched, retired.

A *slot* is a place for one worker on this machine (``-n`` of them). Its process changes over time:
a crashed or hung worker is relaunched in its slot (a new *incarnation*, a new worker id), a slow one
is replaced by a fresh incarnation and then retired, and a restarted master *adopts* the workers its
predecessor launched into their slots instead of starting as many again.

Stopping a worker never blocks the control loop: it is sent SIGTERM (its atexit handler revokes its
lease, so its slices come back at once) and SIGKILL only if it is still there after a grace period.
"""

from __future__ import annotations

import signal
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from aimaster.master.launcher import LogOptions, Worker, stop_all
from aimaster.master.launchers import Launcher, LocalLauncher


class Fleet:
    def __init__(self, command: Sequence[str], env: Callable[[], Dict[str, str]], log_dir: str, id_suffix: str,
                 logs: Optional[LogOptions] = None, launcher: Optional[Launcher] = None):
        self.logs = logs or LogOptions()
        self.launcher = launcher or LocalLauncher()  # where workers run: aimaster.master.launchers
        self.command = list(command)
        self.env = env
        self.log_dir = log_dir
        self.id_suffix = id_suffix
        self.slots: Dict[int, Worker] = {}
        self.extra: List[Worker] = []  # alive but no longer owning a slot: a slow worker being retired
        self.pending: Dict[int, Tuple[float, int, str]] = {}  # slot -> (due, incarnation, cause)
        self.incarnations: Dict[int, int] = {}
        self.failures_in_row: Dict[int, int] = {}
        self._terminating: Dict[int, float] = {}  # id(worker) -> when to SIGKILL
        self.launched = 0
        self.replacements: Dict[int, int] = {}  # slot -> slow-worker replacements so far
        # Warm spares (aimaster.data.spare): started, waiting for a slot; not workers until they take one.
        self.spares: List[Worker] = []
        self.spares_launched = 0
        self.spares_used = 0
        # Told (worker, "TERM" | "KILL", reason) whenever we stop a worker: the supervisor records
        # why in etcd (aimaster.master.stop_requests), so status can tell this from a preemption.
        self.on_stop: Optional[Callable[[Worker, str, str], None]] = None

    # ------------------------------------------------------------------ who is there
    def live(self) -> List[Worker]:
        return [w for w in list(self.slots.values()) + self.extra if w.poll() is None]

    def all(self) -> List[Worker]:
        return list(self.slots.values()) + self.extra

    def find(self, worker_id: str) -> Optional[Worker]:
        for w in self.all():
            if w.worker_id == worker_id:
                return w
        return None

    def reap(self) -> List[Worker]:
        """Workers that ended since the last call, removed from their slot."""
        dead = []
        for slot, w in list(self.slots.items()):
            if w.poll() is not None:
                del self.slots[slot]
                dead.append(w)
        for w in list(self.extra):
            if w.poll() is not None:
                self.extra.remove(w)
                dead.append(w)
        for w in dead:
            self._terminating.pop(id(w), None)
        return dead

    # ------------------------------------------------------------------ starting
    def launch(self, slot: int, incarnation: int) -> Worker:
        w = self.launcher.start(slot, incarnation, self.command, self.env(), self.log_dir, self.id_suffix, self.logs)
        self.slots[slot] = w
        self.incarnations[slot] = incarnation
        self.launched += 1
        return w

    def adopt(self, worker: Worker) -> None:
        self.slots[worker.slot] = worker
        self.incarnations[worker.slot] = worker.incarnation

    def schedule(self, slot: int, delay: float, cause: str) -> None:
        incarnation = self.incarnations.get(slot, -1) + 1
        self.incarnations[slot] = incarnation
        self.pending[slot] = (time.monotonic() + delay, incarnation, cause)

    def schedule_relaunch(self, slot: int, cause: str, uptime: float) -> None:
        """Relaunch after a failure, backing off when a slot keeps failing so a crash loop stays cheap."""
        if uptime > 60:  # it ran fine for a while: this is not a crash loop
            self.failures_in_row[slot] = 0
        n = self.failures_in_row[slot] = self.failures_in_row.get(slot, 0) + 1
        self.schedule(slot, min(0.25 * 2 ** (n - 1), 15.0), cause)

    def due(self) -> List[Tuple[int, int, str]]:
        now = time.monotonic()
        return [(slot, inc, cause) for slot, (when, inc, cause) in sorted(self.pending.items()) if when <= now]

    def start_due(self) -> List[Tuple[Worker, str]]:
        started = []
        for slot, incarnation, cause in self.due():
            del self.pending[slot]
            started.append((self.launch(slot, incarnation), cause))
        return started

    def launch_spare(self) -> Worker:
        w = self.launcher.start_spare(self.spares_launched, self.command, self.env(), self.log_dir, self.id_suffix,
                                      self.logs)
        self.spares.append(w)
        self.spares_launched += 1
        return w

    def reap_spares(self) -> List[Worker]:
        """Spares that ended since the last call (never needed, or crashed while starting)."""
        dead = [w for w in self.spares if w.poll() is not None]
        for w in dead:
            self.spares.remove(w)
            self._terminating.pop(id(w), None)
        return dead

    def stop_spares(self, grace: float = 2.0) -> None:
        """SIGTERM every spare (SIGKILL after ``grace``, see :meth:`tick`); no stop request is recorded:
        a spare never was a worker of the job."""
        now = time.monotonic()
        for w in self.spares:
            if id(w) in self._terminating or w.poll() is not None:
                continue
            w.stop_reason = w.stop_reason or "spare"
            w.signal(signal.SIGTERM)
            w.signal(signal.SIGCONT)
            self._terminating[id(w)] = now + grace

    # ------------------------------------------------------------------ replacing and stopping
    def next_incarnation(self, worker: Worker) -> int:
        return self.incarnations.get(worker.slot, worker.incarnation) + 1

    def replace(self, worker: Worker, spare: Optional[Worker] = None) -> Worker:
        """Put a fresh incarnation in a slow worker's slot now: a warm spare already told to take it
        (``spare``), or a new process; the old one retires once the new one runs."""
        slot = worker.slot
        incarnation = self.next_incarnation(worker)
        self.slots.pop(slot, None)
        self.extra.append(worker)
        worker.stop_reason = "slow"
        self.replacements[slot] = self.replacements.get(slot, 0) + 1
        if spare is not None:
            self.spares.remove(spare)
            spare.become(slot, incarnation, self.id_suffix)
            self.slots[slot] = spare
            self.incarnations[slot] = incarnation
            self.spares_used += 1
            new = spare
        else:
            new = self.launch(slot, incarnation)
        worker.replaced_by = new.worker_id
        return new

    def terminate(self, worker: Worker, reason: str, grace: float) -> None:
        """SIGTERM now, SIGKILL after ``grace`` seconds (see :meth:`tick`); never blocks."""
        if id(worker) in self._terminating or worker.poll() is not None:
            return
        worker.stop_reason = worker.stop_reason or reason
        self._note(worker, "TERM")
        worker.signal(signal.SIGTERM)
        worker.signal(signal.SIGCONT)  # a stopped process handles SIGTERM only once it runs again
        self._terminating[id(worker)] = time.monotonic() + grace

    def kill(self, worker: Worker, reason: str) -> None:
        worker.stop_reason = reason
        self._note(worker, "KILL")
        worker.signal(signal.SIGKILL)

    def _note(self, worker: Worker, signal_name: str) -> None:
        if self.on_stop is not None:
            self.on_stop(worker, signal_name, worker.stop_reason or "stopped")

    def tick(self) -> None:
        now = time.monotonic()
        for w in self.all() + self.spares:
            deadline = self._terminating.get(id(w))
            if deadline is not None and now >= deadline and w.poll() is None:
                w.signal(signal.SIGKILL)

    def stop_all(self, grace: float, reason: str) -> None:
        for w in self.live():
            w.stop_reason = w.stop_reason or reason
            self._note(w, "TERM")
        for w in self.spares:
            w.stop_reason = w.stop_reason or "spare"
        stop_all(self.live() + self.spares, grace)
        self.reap_spares()
