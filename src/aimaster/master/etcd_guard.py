"""Keeps the job's embedded etcd running for as long as the master does.

The embedded etcd is the job's memory; if it dies (killed, crashed) the workers and the master
retry their requests with backoff (see :mod:`aimaster.data.store`), and this guard restarts it on
the same data directory and the *same ports*, so everybody reconnects to the endpoint they already
know and finds every key, lease and slice where it was. It runs on a thread of its own because the
master's loop is itself blocked in those retries while etcd is down.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable, Optional

from aimaster.data.etcd_server import EmbeddedEtcd
from aimaster.master.launcher import pid_alive
from aimaster.master.state_dir import JobStateDir

log = logging.getLogger(__name__)


class EtcdGuard:
    """Owns the job's embedded etcd: started by this master, or adopted from a dead predecessor."""

    def __init__(self, state: JobStateDir, etcd: Optional[EmbeddedEtcd], say: Callable[[str], None],
                 interval: float = 0.25):
        self.state = state
        self.etcd = etcd
        info = state.read_json(state.etcd_info) or {}
        self.pid = etcd.process.pid if etcd is not None and etcd.process else info.get("pid")
        self.port = etcd.client_port if etcd is not None else info.get("port")
        self.peer_port = etcd.peer_port if etcd is not None else info.get("peer_port")
        self.say = say
        self.interval = interval
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aimaster-etcd-guard", daemon=True)

    def start(self) -> EtcdGuard:
        self._thread.start()
        return self

    def _alive(self) -> bool:
        if self.etcd is not None and self.etcd.process is not None:
            return self.etcd.process.poll() is None
        return isinstance(self.pid, int) and pid_alive(self.pid)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._alive():
                continue
            self.say(f"embedded etcd (pid {self.pid}) died; restarting it on port {self.port}")
            deadline = time.monotonic() + 30
            while not self._stop.is_set():
                try:
                    # The lock keeps `aimaster status` from starting an etcd of its own on the data
                    # directory meanwhile (it reads a dead job's state that way).
                    with self.state.etcd_lock(timeout=10):
                        self.etcd = self.state.start_etcd(port=self.port, peer_port=self.peer_port)
                    self.pid = self.etcd.process.pid
                    self.restarts += 1
                    break
                except Exception as e:  # noqa: BLE001 - the port may still be held by the dying one
                    if time.monotonic() > deadline:
                        self.say(f"could not restart the embedded etcd: {e}")
                        return
                    time.sleep(0.5)

    def stop(self) -> None:
        """Stop guarding and stop etcd (the job is over, or the master is shutting down)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self.etcd is not None:
            self.etcd.stop()
        elif isinstance(self.pid, int) and pid_alive(self.pid):
            try:
                os.kill(self.pid, signal.SIGTERM)
            except OSError:
                pass
            deadline = time.monotonic() + 10
            while pid_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        try:
            os.unlink(self.state.etcd_info)
        except OSError:
            pass
