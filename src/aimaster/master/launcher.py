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
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from aimaster.data.spare import SPARE_ENV
from aimaster.master.logpump import worker_lines
from aimaster.master.policy import oom_kill_count

TAIL_BYTES = 8192
LOG_PUMP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "logpump.py")


@dataclass
class LogOptions:
    """How workers' stdout/stderr are kept: files capped at ``max_bytes``, ``backups`` rotated copies."""

    max_bytes: int = 50 * 1024 * 1024
    backups: int = 3
    tee: bool = False  # also copy every line to the console, prefixed with the worker id


def worker_name(slot: int, incarnation: int, suffix: str = "") -> str:
    return (f"w{slot}" if incarnation == 0 else f"w{slot}-r{incarnation}") + suffix


def spare_name(number: int, suffix: str = "") -> str:
    """A warm spare's id until it becomes a worker (:mod:`aimaster.data.spare`)."""
    return f"spare{number}{suffix}"


class Worker:
    """What the master needs of a worker, whether it launched it or adopted it."""

    slot: int
    incarnation: int
    worker_id: str
    started: float
    adopted = False  # launched by a previous master or a joiner: not ours to wait() on
    local = True  # ours to signal: launched by us, or (AdoptedWorker) adopted on this host

    def __init__(self) -> None:
        self.returncode: Optional[int] = None
        self.ended: Optional[float] = None
        self.launched = time.monotonic()
        # Why the master itself ended this worker ("hang", "slow", "moot", "sync"), if it did.
        self.stop_reason: Optional[str] = None
        self.replaced_by: Optional[str] = None  # a slow worker waits for this one to run, then retires
        self.err_path = ""
        self.err_offset = 0

    def _launched_as(self, slot: int, incarnation: int, id_suffix: str, log_dir: str) -> None:
        """A worker we launch: its id, and its slot's log files (stderr read from where it starts)."""
        self.slot = slot
        self.incarnation = incarnation
        self.worker_id = worker_name(slot, incarnation, id_suffix)
        self.out_path = os.path.join(log_dir, f"worker-{slot}.out")
        self.err_path = os.path.join(log_dir, f"worker-{slot}.err")
        try:
            self.err_offset = os.path.getsize(self.err_path)
        except OSError:
            self.err_offset = 0

    def _launched_as_spare(self, number: int, id_suffix: str, log_dir: str) -> None:
        """A warm spare we launch: no slot yet (-1), log files of its own."""
        self.slot = -1
        self.incarnation = 0
        self.worker_id = spare_name(number, id_suffix)
        self.out_path = os.path.join(log_dir, f"spare-{number}.out")
        self.err_path = os.path.join(log_dir, f"spare-{number}.err")
        self.err_offset = 0

    def become(self, slot: int, incarnation: int, id_suffix: str) -> None:
        """A warm spare takes on a worker's identity (its log files stay its own). Its launch time is
        now: start-up, hang and slowness rules measure the worker, not the wait."""
        self.slot = slot
        self.incarnation = incarnation
        self.worker_id = worker_name(slot, incarnation, id_suffix)
        self.launched = time.monotonic()

    def _registered_as(self, worker_id: str, record: Dict[str, Any]) -> None:
        """A worker someone else launched, known by its registration record (read from etcd)."""
        def number(name: str, default, kind):
            value = record.get(name, default)
            return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

        self.worker_id = worker_id
        self.slot = number("slot", -1, int)
        self.incarnation = number("incarnation", 0, int)
        self.host = str(record.get("host", ""))
        self._pid = number("pid", 0, int)
        self.started = number("started", time.time(), float) or time.time()

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
        self._flush_logs()
        try:
            with open(self.err_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                # Smaller than where this incarnation began: the file was rotated since, start at 0.
                begin = self.err_offset if self.err_offset <= size else 0
                start = max(begin, size - TAIL_BYTES)
                f.seek(start)
                data = f.read()
            if begin == 0 and size < TAIL_BYTES and self.err_offset > size:
                data = _tail(self.err_path + ".1", TAIL_BYTES - size) + data
        except OSError:
            return []
        text = data.decode("utf-8", "replace")
        return [line for line in worker_lines(text) if line.strip()][-lines:]  # as written: no stamps

    def _flush_logs(self) -> None:
        """Let the log pump write what the worker printed last (before its exit is classified)."""

    def kill_leftovers(self) -> None:
        """After its exit: SIGKILL what the worker forked (DataLoader workers), its process group."""
        if self.pid > 0:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def oom_killed(self) -> Optional[bool]:
        """Whether the kernel's OOM killer fired while this worker ran (None: cannot tell from here)."""
        return None


def _tail(path: str, nbytes: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - nbytes))
            return f.read()
    except OSError:
        return b""


def worker_env(env: Dict[str, str], worker_id: str, slot: int, incarnation: int) -> Dict[str, str]:
    """The job's environment plus who this worker is (every launcher gives its workers these)."""
    env = dict(env, AIMASTER_WORKER_ID=worker_id, AIMASTER_WORKER_SLOT=str(slot),
               AIMASTER_WORKER_INCARNATION=str(incarnation))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def start_pump(worker_id: str, slot: int, incarnation: int, out_path: str, err_path: str,
               logs: LogOptions) -> Tuple[subprocess.Popen, int, int]:
    """A log pump process for one worker, fed through two pipes: (pump, stdout write fd, stderr write fd).

    The caller hands the write ends to the worker (or writes to them itself) and closes them.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pump = subprocess.Popen(
            [sys.executable, "-I", LOG_PUMP, str(out_r), str(err_r), out_path, err_path,
             str(logs.max_bytes), str(logs.backups), worker_id if logs.tee else "",
             f"{worker_id} started: " + ("a warm spare" if slot < 0 else f"slot {slot}")
             + (f", relaunch {incarnation}" if incarnation else "")],
            pass_fds=(out_r, err_r), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    except BaseException:
        os.close(out_w)
        os.close(err_w)
        raise
    finally:
        os.close(out_r)
        os.close(err_r)
    return pump, out_w, err_w


class WorkerProcess(Worker):
    """One slot's current process and its log files (stdout and stderr kept apart).

    The worker writes to pipes read by a log pump process (:mod:`aimaster.master.logpump`), which
    caps and rotates the files; see there why it is a process and not a thread.
    """

    def __init__(self, slot: int, command: Sequence[str], env: Dict[str, str], log_dir: str,
                 incarnation: int = 0, id_suffix: str = "", logs: Optional[LogOptions] = None,
                 spare: Optional[int] = None):
        super().__init__()
        if spare is None:
            self._launched_as(slot, incarnation, id_suffix, log_dir)
            env = worker_env(env, self.worker_id, slot, incarnation)
        else:
            self._launched_as_spare(spare, id_suffix, log_dir)
            env = dict(worker_env(env, self.worker_id, -1, 0), **{SPARE_ENV: self.worker_id})
        slot, incarnation = self.slot, self.incarnation
        logs = logs or LogOptions()
        self.started = time.time()
        self.oom_kills_before = oom_kill_count()
        self.pump, out_w, err_w = start_pump(self.worker_id, slot, incarnation, self.out_path, self.err_path, logs)
        try:
            self.proc = subprocess.Popen(list(command), env=env, stdout=out_w, stderr=err_w,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(out_w)
            os.close(err_w)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _flush_logs(self) -> None:
        # The pump exits once every holder of the pipes (the worker, anything it forked) is gone.
        if self.poll() is not None and self.pump.poll() is None:
            try:
                self.pump.wait(2.0)
            except subprocess.TimeoutExpired:
                pass

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
        self._registered_as(worker_id, record)
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


def runs_worker(pid: int, worker_id: str, job_id: str) -> Optional[bool]:
    """Whether process ``pid`` on this host is worker ``worker_id`` of job ``job_id``, by the
    environment its launcher gave it (None where that cannot be read: not Linux, another user).

    A registration in etcd names a pid; before adopting it -- and so signalling its process group --
    the master checks that the pid is that worker, not whatever process a forged record points at.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = set(f.read().split(b"\0"))
    except OSError:
        return None
    return f"AIMASTER_WORKER_ID={worker_id}".encode() in env and f"AIMASTER_JOB_ID={job_id}".encode() in env


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
