"""A worker's presence in a job: an etcd lease kept alive by a background thread.

Everything a worker holds (its registration, its slice claims) is bound to this lease, so when the
process dies, etcd deletes those keys after ``ttl`` seconds and the slices become free again
without anybody having to notice the death. A lease that expired anyway (the process was stopped
with SIGSTOP, or etcd was down longer than the TTL) is replaced by a new one; the slices claimed under
the old lease may have been handed out again, which is safe because only one attempt can commit.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
from typing import Callable, List

from aimaster.data import keys
from aimaster.data.store import Store

log = logging.getLogger(__name__)

DEFAULT_TTL = int(os.environ.get("AIMASTER_LEASE_TTL", "10"))


class WorkerSession:
    """One per process (see :func:`aimaster.data.runtime.current_session`)."""

    def __init__(self, store: Store, worker_id: str, ttl: int = DEFAULT_TTL, register: bool = True):
        self.store = store
        self.worker_id = worker_id
        self.ttl = max(2, int(ttl))
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.started = time.time()
        self._register = register
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._on_new_lease: List[Callable[[], None]] = []
        self.lease = None
        self.lease_generation = 0
        # Counters published with each commit (stats/<worker>) for status and throughput.
        self.slices_committed = 0
        self.items_committed = 0
        self.first_commit = None
        self.standalone = False
        self._new_lease()
        self._thread = threading.Thread(target=self._keepalive, name="aimaster-lease", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # A fresh lease after expiry; registration follows it so the master sees us again.
    def _new_lease(self) -> None:
        with self._lock:
            self.lease = self.store.grant_lease(self.ttl)
            self.lease_generation += 1
            if self._register:
                self.store.put(
                    keys.worker(self.worker_id),
                    {"host": self.host, "pid": self.pid, "started": self.started, "ttl": self.ttl,
                     "lease": self.lease.id},
                    lease=self.lease,
                )

    def _keepalive(self) -> None:
        interval = self.ttl / 3.0
        while not self._closed.wait(interval):
            try:
                remaining = self.store.refresh_lease(self.lease)
                if remaining <= 0:
                    log.warning("aimaster: worker %s lost its etcd lease; taking a new one", self.worker_id)
                    self._new_lease()
            except Exception as e:  # noqa: BLE001 - the keep-alive thread must never die
                log.warning("aimaster: lease keep-alive failed (%s); retrying", e)

    def close(self) -> None:
        """Release the lease now, so our claims come back at once instead of after the TTL."""
        if self._closed.is_set() or os.getpid() != self.pid:
            return
        self._closed.set()
        if self.lease is not None:
            self.store.revoke_lease(self.lease)
        self.store.close()
