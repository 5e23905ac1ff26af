"""One master per job, elected through the etcd ``master`` key bound to the master's lease.

The active master holds the key; when it dies the key vanishes with its lease (at once when a new
master on the same host sees that the holder's pid is dead, otherwise after the lease TTL), and a
restarted master or a waiting *standby* (``aimaster run --standby``) takes it. Everything else a
master needs is in etcd, so the new one resumes where the old one was. A master that finds the key
held by another (its own lease lapsed while it was stopped, and a standby took over) steps down
instead of fighting: two masters would launch workers twice.

A master key that is not a master's record (garbage written by hand) can belong to no live master:
a master about to start clears it like a dead master's. While a master runs, its key reading back
as garbage is an :class:`~aimaster.errors.EtcdDataError`, which fails the job (see
:mod:`aimaster.master.readback`).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, Dict, Optional

from aimaster.data import keys
from aimaster.data.session import WorkerSession
from aimaster.data.store import Compare, Op, loads
from aimaster.errors import EtcdDataError
from aimaster.master.launcher import pid_alive


def _is_master_record(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("host"), str) and isinstance(value.get("pid"), int)


def pid_stopped(pid: int) -> bool:
    """Whether a process is stopped (SIGSTOP, a debugger): its lease may lapse while it is."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


class MasterKey:
    def __init__(self, session: WorkerSession, role: str = "master"):
        self.session = session
        self.store = session.store
        self.record: Dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(),
                                       "started": session.started, "role": role}

    def holder(self) -> Optional[Dict[str, Any]]:
        value = self.store.get_value(keys.MASTER)
        if value is not None and not _is_master_record(value):
            raise EtcdDataError(f"value at {self.store.key(keys.MASTER)} is not a master's record: {value!r:.80}")
        return value

    def running_here(self) -> Optional[Dict[str, Any]]:
        """The holder's record if it is another process running (not stopped) on this host: a live
        master, which will not go away by waiting for its lease."""
        try:
            other = self.holder()
        except EtcdDataError:
            return None
        if other and other.get("host") == self.record["host"] and other["pid"] != os.getpid() \
                and pid_alive(other["pid"]) and not pid_stopped(other["pid"]):
            return other
        return None

    def try_take(self) -> bool:
        ok, _ = self.session.leased(lambda lease: self.store.txn(
            "take master", [Compare.version(keys.MASTER) == 0], [Op.put(keys.MASTER, self.record, lease=lease)]))
        if ok:
            return True
        try:
            return self.is_ours(self.holder())  # a retried take whose first try did apply
        except EtcdDataError:
            return False  # garbage in the key: clear_dead_local_holder clears it

    def clear_dead_local_holder(self) -> bool:
        """Delete a master record naming a dead process on this host (its lease may outlive it), or
        one that is no master's record at all."""
        raw, meta = self.store.get_raw(keys.MASTER)
        if raw is None:
            return True
        try:
            other = loads(raw, self.store.key(keys.MASTER))
        except EtcdDataError:
            other = None
        if not _is_master_record(other) or (
                other.get("host") == self.record["host"] and other["pid"] != os.getpid()
                and not pid_alive(other["pid"])):
            self.store.txn("clear dead master", [Compare.mod(keys.MASTER) == meta.mod_revision],
                           [Op.delete(keys.MASTER)])
            return True
        return False

    def is_ours(self, value: Optional[Dict[str, Any]]) -> bool:
        return bool(value) and all(value.get(k) == self.record[k] for k in ("host", "pid", "started"))

    def take(self, patience: Optional[float], poll: float = 0.5,
             give_up: Callable[[], bool] = lambda: False) -> bool:
        """Take the key, waiting up to ``patience`` seconds (None: for ever, as a standby)."""
        deadline = None if patience is None else time.monotonic() + patience
        while True:
            if self.try_take():
                return True
            if self.clear_dead_local_holder():
                continue
            if give_up() or (deadline is not None and time.monotonic() > deadline):
                return False
            time.sleep(poll)

    def still_ours(self) -> Optional[bool]:
        """True if we hold the key, False if another master does; None if nobody does (we retake it)."""
        value = self.holder()
        if value is None:
            return True if self.try_take() else None
        return self.is_ours(value)

    def release(self) -> None:
        try:
            self.store.txn("release master", [Compare.value(keys.MASTER) == self.record], [Op.delete(keys.MASTER)])
        except Exception:  # etcd already gone: the lease expiry removes the key anyway
            pass
