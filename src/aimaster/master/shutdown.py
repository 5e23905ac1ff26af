"""What a master leaves behind when its run ends, however it ends: nothing of its own.

Its workers are stopped (SIGTERM, then SIGKILL after the grace period), the launcher closed (no Ray
actor left), the master key released, a standby given a moment to see the end, the session's lease
revoked, and the job's embedded etcd stopped -- unless another master took over the job, whose
workers and etcd these now are.
"""

from __future__ import annotations

import os
import time

from aimaster.data import keys
from aimaster.master.launcher import stop_all


def shutdown(m) -> None:
    """End ``m``'s (a :class:`~aimaster.master.master.Master`) run: stop what it started, release what it holds."""
    if m.stepped_down:
        return  # the workers and etcd belong to the master that took over
    if m.fleet is not None and (m.fleet.live() or m.fleet.spares):
        stop_all(m.fleet.live() + m.fleet.spares, m.opts.stop_grace)
    if m.opts.launcher is not None:
        m.opts.launcher.close()  # no Ray actor left behind
    if m.key is not None and m.store is not None:
        m.key.release()
    if m.guard is not None and m.store is not None:
        # A standby polls the job record; let it see the end before its etcd goes away.
        deadline = time.monotonic() + 3.0
        try:
            while m.store.count(keys.STANDBY) and time.monotonic() < deadline:
                time.sleep(0.1)
        except Exception:  # noqa: BLE001 - etcd already gone
            pass
    if m.session is not None:
        m.session.close()
    if m.guard is not None:
        m.guard.stop()
    elif m.etcd is not None:
        m.etcd.stop()
        try:
            os.unlink(m.state.etcd_info)
        except OSError:
            pass
