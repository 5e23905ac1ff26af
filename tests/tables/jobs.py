"""Running table jobs under `aimaster run` for the table-layer tests (real etcd, real workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

from helpers import aimaster_cmd, clean_env, program


def job_cmd(state, job_id: str, tables, slice_size: int, *options: str, workers: int = 3) -> List[str]:
    return aimaster_cmd("run", "-n", str(workers), "--job-id", job_id, "--state-dir", str(state), "--quiet",
                        "--lease-ttl", "3", *options, "--", sys.executable, program("table_worker.py"),
                        tables.input, tables.output, str(slice_size))


def run_job(state, job_id: str, tables, slice_size: int, *options: str, env: Optional[Dict[str, str]] = None,
            workers: int = 3, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(job_cmd(state, job_id, tables, slice_size, *options, workers=workers),
                          env=clean_env(dict(tables.env, **(env or {}))), capture_output=True, text=True,
                          timeout=timeout)


def report(state, job_id: str) -> Dict[str, Any]:
    with open(os.path.join(str(state), "jobs", job_id, "report.json")) as f:
        return json.load(f)


def failed_exits(rep: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Worker exits the master counted as failures (a crash, an error exit)."""
    return [{k: e.get(k) for k in ("worker", "exit", "error", "stderr_tail")}
            for e in rep.get("worker_exits", []) if e.get("error")]
