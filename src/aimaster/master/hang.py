"""Hang detection (``--enable-job-hang-detection``, ``--job-hang-interval``).

A hung worker is alive -- its process exists, and its lease may well be kept alive by the
background keep-alive thread -- but makes no progress: it is stuck in a deadlock, a dead NFS mount,
a wedged accelerator, or it was stopped (SIGSTOP). Its lease cannot tell: only progress can.
Progress is what the master sees in etcd: a change of the worker's heartbeat, which every claim
and every commit carries (see :mod:`aimaster.master.watch`). A worker that has seen no change for
the interval is killed (SIGKILL to its process group: a hung process may ignore SIGTERM) and
relaunched; its slices come back when the master revokes its lease.

A worker *waiting* for a slice (all free slices are taken and its lease is alive) is idle, not
hung. The interval must cover the program's start-up (model loading) and one slice.
"""

from __future__ import annotations

import time
from typing import Optional

from aimaster.master.launcher import Worker
from aimaster.master.watch import WorkerInfo


class HangDetector:
    def __init__(self, interval: float):
        self.interval = float(interval)

    def hung(self, worker: Worker, info: Optional[WorkerInfo], now: Optional[float] = None) -> Optional[float]:
        """Seconds without progress if the worker counts as hung, else None."""
        if worker.poll() is not None or worker.stop_reason:
            return None
        return self.idle(worker.launched, info, now)

    def idle(self, launched: float, info: Optional[WorkerInfo], now: Optional[float] = None) -> Optional[float]:
        """For a live worker launched at ``launched`` (monotonic): seconds without progress past the
        interval, else None. One waiting for a slice with its lease alive is idle, not hung."""
        if info is not None and info.registered and info.state == "waiting":
            return None
        now = time.monotonic() if now is None else now
        idle = now - max(launched, info.last_progress if info is not None else launched)
        return idle if idle > self.interval else None
