"""Worker processes on this machine: start, watch, stop, and read what they printed last.

Each worker slot runs the user's command with the job's coordinates in its environment. Workers run
in sessions of their own so that a Ctrl-C in the terminal reaches only the launcher, which then
stops them in order (SIGTERM, grace period, SIGKILL), and so that a master killed with SIGKILL
leaves them working: a restarted master finds them through their etcd registration and *adopts*
them (:class:`AdoptedWorker`): it cannot ``wait()`` on a process that is not its child, so it
watches the registration (and, on the same host, the pid) instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Any, Dict, List, Optional, Sequence

from aimaster.master.policy import oom_kill_count

TAIL_BYTES = 8192


def worker_name(slot: int, incarnation: int, suffix: str = "") -> str:
    return (f"w{slot}" if incarnation == 0 else f"w{slot}-r{incarnation}") + suffix


class Worker:
    """What the master needs of a worker, whether it launched it or adopted it."""

    slot: int
    incarnation: int
    worker_id: str
    started: float
    adopted = False

    def __init__(self) -> None:
        self.returncode: Optional[int] = None
        self.ended: Optional[float] = None
        self.launched = time.monotonic()
        # Why the master itself ended this worker ("hang", "slow", "moot", "sync"), if it did.
        self.stop_reason: Optional[str] = None
        self.replaced_by: Optional[str] = None  # a slow worker waits for this one to run, then retires
        self.err_path = ""
        self.err_offset = 0

    @property
    def pid(self) -> int:
        raise NotImplementedError

    def poll(self) -> Optional[int]:
        raise NotImplementedError

    def signal(self, sig: int) -> None:
        raise NotImplementedError

    def stderr_tail(self, lines: int = 20) -> List[str]:
        """The last lines this incarnation wrote to stderr."""
        if not self.err_path:
            return []
        try:
            with open(self.err_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                start = max(min(self.err_offset, size), size - TAIL_BYTES)
                f.seek(start)
                data = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [line for line in data.splitlines() if line.strip()][-lines:]

    def last_error_line(self) -> str:
        tail = self.stderr_tail(5)
        return tail[-1].strip()[:500] if tail else ""

    @property
    def alive(self) -> bool:
        return self.poll() is None


class WorkerProcess(Worker):
    """One slot's current process and its log files (stdout and stderr kept apart)."""

    def __init__(self, slot: int, command: Sequence[str], env: Dict[str, str], log_dir: str,
                 incarnation: int = 0, id_suffix: str = ""):
        super().__init__()
        self.slot = slot
        self.incarnation = incarnation
        self.worker_id = worker_name(slot, incarnation, id_suffix)
        self.out_path = os.path.join(log_dir, f"worker-{slot}.out")
        self.err_path = os.path.join(log_dir, f"worker-{slot}.err")
        out = open(self.out_path, "ab")
        err = open(self.err_path, "ab")
        self.err_offset = err.tell()
        env = dict(env, AIMASTER_WORKER_ID=self.worker_id, AIMASTER_WORKER_SLOT=str(slot),
                   AIMASTER_WORKER_INCARNATION=str(incarnation))
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.started = time.time()
        self.oom_kills_before = oom_kill_count()
        try:
            self.proc = subprocess.Popen(list(command), env=env, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            out.close()
            err.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            rc = self.proc.poll()
            if rc is not None:
                self.returncode = rc
                self.ended = time.time()
        return self.returncode

    def signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def oom_killed(self) -> Optional[bool]:
        """Whether the kernel's OOM killer fired in our cgroup while this worker ran (None: unknown)."""
        before, after = self.oom_kills_before, oom_kill_count()
        if before is None or after is None:
            return None
        return after > before


class AdoptedWorker(Worker):
    """A worker a previous master launched, still registered in etcd, now supervised by us."""

    adopted = True

    def __init__(self, worker_id: str, record: Dict[str, Any], log_dir: str, is_registered):
        super().__init__()
        self.worker_id = worker_id
        self.slot = int(record.get("slot", -1))
        self.incarnation = int(record.get("incarnation", 0) or 0)
        self.host = str(record.get("host", ""))
        self._pid = int(record.get("pid", 0) or 0)
        self.started = float(record.get("started", time.time()) or time.time())
        self.local = self.host == socket.gethostname()
        self.err_path = os.path.join(log_dir, f"worker-{self.slot}.err")
        try:
            self.err_offset = max(0, os.path.getsize(self.err_path) - TAIL_BYTES)
        except OSError:
            self.err_offset = 0
        self._is_registered = is_registered

    @property
    def pid(self) -> int:
        return self._pid

    def poll(self) -> Optional[int]:
        """None while alive; then -1: an adopted worker's exit status is not ours to know.

        On this host the pid says it (a stopped worker whose lease lapsed is still there, for hang
        detection to deal with); a worker on another host is alive as long as it is registered.
        """
        if self.returncode is None:
            gone = not pid_alive(self._pid) if self.local else not self._is_registered(self.worker_id)
            if gone:
                self.returncode = -1
                self.ended = time.time()
        return self.returncode

    def signal(self, sig: int) -> None:
        if self.local and self.poll() is None:
            try:
                os.killpg(self._pid, sig)  # workers lead their own session, so pgid == pid
            except (ProcessLookupError, PermissionError):
                pass


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def stop_all(workers: Sequence[Worker], grace: float = 10.0) -> None:
    """SIGTERM every live worker, then SIGKILL whatever is left after ``grace`` seconds."""
    live = [w for w in workers if w.poll() is None]
    for w in live:
        w.signal(signal.SIGTERM)
        w.signal(signal.SIGCONT)  # a stopped process handles SIGTERM only once it runs again
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(w.poll() is None for w in live):
        time.sleep(0.05)
    for w in live:
        if w.poll() is None:
            w.signal(signal.SIGKILL)
            if isinstance(w, WorkerProcess):
                try:
                    w.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            w.poll()
