"""Worker processes on this machine: start, watch, stop, and read what they printed last.

Each worker slot runs the user's command with the job's coordinates in its environment. Workers run
in sessions of their own so that a Ctrl-C in the terminal reaches only the launcher, which then
stops them in order (SIGTERM, grace period, SIGKILL), and so that a master killed with SIGKILL
leaves them working: a restarted master finds them through their etcd registration.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Dict, List, Optional, Sequence

TAIL_BYTES = 8192


class WorkerProcess:
    """One slot's current process and its log files (stdout and stderr kept apart)."""

    def __init__(self, slot: int, command: Sequence[str], env: Dict[str, str], log_dir: str,
                 incarnation: int = 0, id_suffix: str = ""):
        self.slot = slot
        self.incarnation = incarnation
        self.worker_id = (f"w{slot}" if incarnation == 0 else f"w{slot}-r{incarnation}") + id_suffix
        self.out_path = os.path.join(log_dir, f"worker-{slot}.out")
        self.err_path = os.path.join(log_dir, f"worker-{slot}.err")
        out = open(self.out_path, "ab")
        err = open(self.err_path, "ab")
        self.err_offset = err.tell()
        env = dict(env, AIMASTER_WORKER_ID=self.worker_id, AIMASTER_WORKER_SLOT=str(slot))
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.started = time.time()
        try:
            self.proc = subprocess.Popen(list(command), env=env, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            out.close()
            err.close()
        self.returncode: Optional[int] = None
        self.ended: Optional[float] = None

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

    def stderr_tail(self, lines: int = 20) -> List[str]:
        """The last lines this incarnation wrote to stderr."""
        try:
            with open(self.err_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                start = max(self.err_offset, size - TAIL_BYTES)
                f.seek(start)
                data = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [line for line in data.splitlines() if line.strip()][-lines:]

    def last_error_line(self) -> str:
        tail = self.stderr_tail(5)
        return tail[-1].strip()[:500] if tail else ""

    def signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def stop_all(workers: Sequence[WorkerProcess], grace: float = 10.0) -> None:
    """SIGTERM every live worker, then SIGKILL whatever is left after ``grace`` seconds."""
    live = [w for w in workers if w.poll() is None]
    for w in live:
        w.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(w.poll() is None for w in live):
        time.sleep(0.05)
    for w in live:
        if w.poll() is None:
            w.signal(signal.SIGKILL)
            try:
                w.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            w.poll()
