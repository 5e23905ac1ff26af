"""Submit and watch jobs from Python, in the spirit of PAI ElasticBatch's DLC submit-and-poll loop::

    from aimaster.api import submit

    job = submit(["python", "infer.py"], workers=4, job_id="nightly")
    while True:
        status = job.status()
        print("job is", status["state"])
        if status["state"] in ("Succeeded", "Failed", "Stopped"):
            break
        time.sleep(10)
    print(job.report()["slices"])

A submitted job is an ``aimaster run`` process started in the background (its own session, its
output in the job's state directory), so it outlives neither more nor less than a job started from a
shell would. :func:`attach` gives the same handle for a job started elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from aimaster.data import keys
from aimaster.errors import JobError
from aimaster.master.job_state import TERMINAL, JobState
from aimaster.master.state_dir import JobStateDir, default_root

FINAL_STATES = tuple(s.value for s in TERMINAL)


class Job:
    """A handle on a job: its status from etcd, its report, stop it."""

    def __init__(self, job_id: str, state_dir: Optional[str] = None, etcd: Optional[str] = None,
                 process: Optional[subprocess.Popen] = None):
        self.job_id = keys.check_name("job id", job_id)
        self.state_root = os.path.abspath(state_dir or default_root())
        self.etcd = etcd
        self.process = process

    @property
    def state_dir(self) -> JobStateDir:
        return JobStateDir(self.state_root, self.job_id)

    def _cfg(self):
        from aimaster.data.store import EtcdConfig

        return EtcdConfig(EtcdConfig.parse_endpoints(self.etcd)) if self.etcd else None

    def status(self) -> Dict[str, Any]:
        """The job's state, slice counts and workers (what ``aimaster status --json`` prints).

        Before the job has written anything, the state is ``Pending``.
        """
        from aimaster.master.status import job_status

        try:
            return job_status(self.job_id, self._cfg(), self.state_root)
        except JobError:
            if self.process is not None and self.process.poll() is not None:
                raise JobError(f"job {self.job_id} exited with code {self.process.returncode} before it "
                               f"started; see {self.state_dir.path}/launcher.log")
            return {"job_id": self.job_id, "state": JobState.PENDING.value,
                    "slices": {"total": 0, "done": 0, "failed": 0, "running": 0}}

    def wait(self, timeout: Optional[float] = None, poll: float = 1.0) -> str:
        """Block until the job is Succeeded, Failed or Stopped; returns that state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                report = self.report()
                if report:
                    return report["state"]
            state = self.status()["state"]
            if state in FINAL_STATES and (self.process is None or self.process.poll() is not None):
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job_id} still {state} after {timeout}s")
            time.sleep(poll)

    def report(self) -> Optional[Dict[str, Any]]:
        """The final report (``report.json``), or None while the job runs."""
        try:
            with open(self.state_dir.report) as f:
                report = json.load(f)
        except (OSError, ValueError):
            return None
        return report if isinstance(report, dict) and report.get("job_id") == self.job_id else None

    def stop(self) -> None:
        """Ask the job's master to stop it cleanly (state Stopped, resumable)."""
        from aimaster.master.control import request_stop

        request_stop(self.job_id, self._cfg(), self.state_root)


def submit(command: Sequence[str], workers: int = 1, job_id: Optional[str] = None,
           state_dir: Optional[str] = None, etcd: Optional[str] = None, extra_args: Sequence[str] = (),
           env: Optional[Dict[str, str]] = None) -> Job:
    """Start ``aimaster run`` for ``command`` in the background and return its :class:`Job`."""
    import datetime
    import uuid

    job_id = job_id or datetime.datetime.now().strftime("job-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
    job = Job(job_id, state_dir, etcd)
    job.state_dir.create()
    args: List[str] = [sys.executable, "-m", "aimaster.cli", "run", "-n", str(workers), "--job-id", job_id,
                       "--state-dir", job.state_root, "--quiet"]
    if etcd:
        args += ["--etcd", etcd]
    args += list(extra_args) + ["--", *command]
    log = open(os.path.join(job.state_dir.path, "launcher.log"), "ab")
    try:
        job.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**os.environ, **(env or {})}, start_new_session=True)
    finally:
        log.close()
    return job


def attach(job_id: str, state_dir: Optional[str] = None, etcd: Optional[str] = None) -> Job:
    """A handle on a job started elsewhere (same state directory, or the same etcd)."""
    return Job(job_id, state_dir, etcd)
