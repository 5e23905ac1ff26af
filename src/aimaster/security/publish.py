"""What ``aimaster run`` does for other hosts once its embedded etcd runs: the join bundle and the
command to use it, and the worker credentials its own workers get (the master keeps root's)."""

from __future__ import annotations

import os
import shlex
from typing import List

from aimaster.data.store import EtcdConfig


def worker_config(state, master_cfg: EtcdConfig) -> EtcdConfig:
    """The config this host's workers get: the worker certificate when the job is secure (a worker
    never holds root's), else the master's own config."""
    security = state.security()
    if not security.secure:
        return master_cfg
    return security.client_config(master_cfg.endpoints, user="worker", retry_seconds=master_cfg.retry_seconds)


def publish_bundle(state, endpoint: str, workers: int, command: List[str], ignored_listen=None) -> List[str]:
    """Write the join bundle for the address the job's etcd serves; return what to tell the user: the
    command other hosts run (nothing when the etcd serves loopback only: then an old bundle is removed).

    ``ignored_listen``: a ``--listen`` this run could not apply, because the job's etcd was already
    running (started by an earlier master of the job): said, not silently dropped."""
    security = state.security()
    notes = []
    if ignored_listen is not None:
        current = security.listen()
        serving = current.host if current is not None else "loopback only"
        notes.append(f"warning: --listen {ignored_listen.host} not applied: the job's etcd was already running "
                     f"(serving {serving}); stop the job and run it again to change that")
    port = int(endpoint.rpartition(":")[2])
    path = security.write_bundle(port)
    if path is None:
        try:
            os.unlink(security.bundle_path)
        except FileNotFoundError:
            pass
        return notes
    notes.append(f"other hosts join with: aimaster join --bundle {shlex.quote(os.path.abspath(path))} "
                 f"-n {max(1, workers)} -- {shlex.join(command)}")
    return notes
