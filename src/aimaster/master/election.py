"""One master per job, elected through the etcd ``master`` key bound to the master's lease.

The active master holds the key; when it dies the key vanishes with its lease (at once when a new
master on the same host sees that the holder's pid is dead, otherwise after the lease TTL), and a
restarted master or a waiting *standby* (``aimaster run --standby``) takes it. Everything else a
master needs is in etcd, so the new one resumes where the old one was. A master that finds the key
held by another (its own lease lapsed while it was stopped, and a standby took over) steps down
instead of fighting: two masters would launch workers twice.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, Dict, Optional

from aimaster.data import keys
from aimaster.data.session import WorkerSession
from aimaster.data.store import dumps
from aimaster.master.launcher import pid_alive


class MasterKey:
    def __init__(self, session: WorkerSession, role: str = "master"):
        self.session = session
        self.store = session.store
        self.record: Dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(),
                                       "started": session.started, "role": role}

    def holder(self) -> Optional[Dict[str, Any]]:
        return self.store.get_value(keys.MASTER)

    def try_take(self) -> bool:
        st, tx = self.store, self.store.tx
        key = st.key(keys.MASTER)
        ok, _ = self.session.leased(lambda lease: st.txn(
            "take master", [tx.version(key) == 0], [tx.put(key, dumps(self.record), lease=lease)]))
        if ok:
            return True
        if self.is_ours(self.holder()):  # a retried take whose first try did apply
            return True
        return False

    def clear_dead_local_holder(self) -> bool:
        """Delete a master record naming a dead process on this host (its lease may outlive it)."""
        st, tx = self.store, self.store.tx
        other, meta = st.get(keys.MASTER)
        if other is None:
            return True
        if other.get("host") == self.record["host"] and isinstance(other.get("pid"), int) \
                and other["pid"] != os.getpid() and not pid_alive(other["pid"]):
            st.txn("clear dead master", [tx.mod(st.key(keys.MASTER)) == meta.mod_revision],
                   [tx.delete(st.key(keys.MASTER))])
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
        st, tx = self.store, self.store.tx
        try:
            st.txn("release master", [tx.value(st.key(keys.MASTER)) == dumps(self.record)],
                   [tx.delete(st.key(keys.MASTER))])
        except Exception:  # etcd already gone: the lease expiry removes the key anyway
            pass
