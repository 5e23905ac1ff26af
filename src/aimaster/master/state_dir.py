"""A job's state directory: embedded etcd data, worker logs, the final report.

Layout (default root ``./.aimaster``, or ``--state-dir`` / ``$AIMASTER_STATE_DIR``)::

    <root>/jobs/<job-id>/etcd/          embedded etcd data (the job's whole coordination state)
    <root>/jobs/<job-id>/etcd.json      endpoint and pid of the embedded etcd while it runs
    <root>/jobs/<job-id>/logs/          one stdout/stderr log per worker slot
    <root>/jobs/<job-id>/report.json    the job report, written when the job ends

Keeping etcd's data here is what makes a job resumable after everything was killed: re-running with
the same job id restarts etcd on the same data, and committed slices are never redone.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from aimaster.data.etcd_server import EmbeddedEtcd, _port_open, free_port


def default_root() -> str:
    return os.environ.get("AIMASTER_STATE_DIR") or os.path.join(os.getcwd(), ".aimaster")


class JobStateDir:
    def __init__(self, root: str, job_id: str):
        self.root = os.path.abspath(root)
        self.job_id = job_id
        self.path = os.path.join(self.root, "jobs", job_id)
        self.etcd_dir = os.path.join(self.path, "etcd")
        self.etcd_info = os.path.join(self.path, "etcd.json")
        self.logs = os.path.join(self.path, "logs")
        self.report = os.path.join(self.path, "report.json")

    def create(self) -> JobStateDir:
        os.makedirs(self.logs, exist_ok=True)
        return self

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def read_json(self, path: str) -> Optional[Dict[str, Any]]:
        try:
            with open(path) as f:
                value = json.load(f)
            return value if isinstance(value, dict) else None
        except (OSError, ValueError):
            return None

    def write_json(self, path: str, value: Dict[str, Any]) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(value, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)

    # -- embedded etcd ------------------------------------------------------------------------
    def running_etcd(self) -> Optional[str]:
        """Endpoint of this job's embedded etcd if it is still running (a previous master died)."""
        info = self.read_json(self.etcd_info)
        if not info:
            return None
        pid, port = info.get("pid"), info.get("port")
        if not isinstance(pid, int) or not isinstance(port, int):
            return None
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return f"127.0.0.1:{port}" if _port_open(port) else None

    def start_etcd(self, port: Optional[int] = None, peer_port: Optional[int] = None) -> EmbeddedEtcd:
        """Start the job's embedded etcd on its data directory.

        With ``port`` (a restart under running workers) exactly that port is used, since every
        client already knows it; otherwise the old ports are reused when free, new ones taken if not.
        """
        os.makedirs(self.etcd_dir, exist_ok=True)
        info = self.read_json(self.etcd_info) or {}
        if port is None:
            port = info.get("port") if isinstance(info.get("port"), int) else None
            if port is not None and _port_open(port):
                port = None
            peer_port = info.get("peer_port") if isinstance(info.get("peer_port"), int) else None
            if peer_port is not None and _port_open(peer_port):
                peer_port = None
        etcd = EmbeddedEtcd(data_dir=self.etcd_dir, client_port=port or free_port(),
                            log_path=os.path.join(self.path, "etcd.log"))
        if isinstance(peer_port, int):
            etcd.peer_port = peer_port
        etcd.start()
        self.write_json(self.etcd_info, {"pid": etcd.process.pid, "port": etcd.client_port,
                                         "peer_port": etcd.peer_port})
        return etcd
