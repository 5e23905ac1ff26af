"""A job's state directory: embedded etcd data, worker logs, the final report.

Layout (default root ``./.aimaster``, or ``--state-dir`` / ``$AIMASTER_STATE_DIR``)::

    <root>/jobs/<job-id>/etcd/          embedded etcd data (the job's whole coordination state)
    <root>/jobs/<job-id>/etcd.json      endpoint and pid of the embedded etcd while it runs
    <root>/jobs/<job-id>/logs/          one stdout/stderr log per worker slot
    <root>/jobs/<job-id>/report.json    the job report, written when the job ends
    <root>/jobs/<job-id>/etcd.lock      held while a process finds or starts the embedded etcd

Each job's root is also noted in the user's job index (:mod:`aimaster.master.job_index`), so that
``aimaster status`` (and ``retry``) run from another directory still find it.
    <root>/jobs/<job-id>/security/      TLS material of a job that serves other hosts (aimaster.security)
    <root>/jobs/<job-id>/join.json      the join bundle other hosts use (mode 0600)

Keeping etcd's data here is what makes a job resumable after everything was killed: re-running with
the same job id restarts etcd on the same data, and committed slices are never redone.

Only one etcd may ever run on the data directory. Whoever may start one -- a master, the master's
etcd guard restarting it, ``aimaster status`` reading a finished job -- first takes ``etcd.lock``,
looks for a running one and starts one only if there is none: two ``aimaster run`` of one job
started at once then share one etcd (and one of them becomes the master), instead of both starting
one and the loser's being left running on the data directory, on a port nobody knows.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Any, Dict, Optional

from aimaster.data.etcd_server import EmbeddedEtcd, _port_open, free_port
from aimaster.errors import JobError


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
        self.lock_path = os.path.join(self.path, "etcd.lock")

    def create(self) -> JobStateDir:
        os.makedirs(self.logs, exist_ok=True)
        from aimaster.master import job_index

        job_index.note(self.root, self.job_id)  # so `aimaster status` finds it from any directory
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
    def etcd_lock(self, timeout: float = 60.0) -> StateLock:
        """The job's etcd lock, held (a context manager); JobError if it stays taken ``timeout`` s."""
        os.makedirs(self.path, exist_ok=True)
        lock = StateLock(self.lock_path)
        if not lock.acquire(timeout):
            raise JobError(f"another process (pid {lock.holder() or '?'}) has held {self.lock_path} for "
                           f"{timeout:.0f}s; is it stuck starting job {self.job_id}'s etcd?")
        return lock

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
        A job with security material (:mod:`aimaster.security.job_security`) serves TLS with client
        certificates, on loopback and on this run's ``--listen`` address, and its users are set up.
        """
        from aimaster.data.store import job_prefix
        from aimaster.security.listen import check_bindable, free_port_on

        os.makedirs(self.etcd_dir, exist_ok=True)
        security = self.security()
        listen = security.listen()
        hosts = security.listen_hosts()
        info = self.read_json(self.etcd_info) or {}
        if port is None and listen is not None and listen.port is not None:
            port = listen.port
            for host in hosts:
                check_bindable(host, port)  # one line naming the address, not an etcd log to read
        elif port is None:
            port = info.get("port") if isinstance(info.get("port"), int) else None
            if port is not None and (_port_open(port) or not _bindable(hosts, port)):
                port = None
            peer_port = info.get("peer_port") if isinstance(info.get("peer_port"), int) else None
            if peer_port is not None and _port_open(peer_port):
                peer_port = None
        if port is None:
            port = free_port_on(hosts) if listen is not None else free_port()
        etcd = EmbeddedEtcd(data_dir=self.etcd_dir, client_port=port, log_path=os.path.join(self.path, "etcd.log"),
                            tls=security.server_tls(), listen_hosts=hosts,
                            advertise=listen.advertise if listen is not None else None)
        if isinstance(peer_port, int):
            etcd.peer_port = peer_port
        etcd.start()
        try:
            security.set_up_auth(etcd.endpoint, job_prefix(self.job_id))
        except Exception:
            etcd.stop()
            raise
        self.write_json(self.etcd_info, {"pid": etcd.process.pid, "port": etcd.client_port,
                                         "peer_port": etcd.peer_port})
        return etcd

    def security(self):
        """The job's TLS material and listen settings (:class:`~aimaster.security.job_security.JobSecurity`)."""
        from aimaster.security.job_security import JobSecurity

        return JobSecurity(self.path, self.job_id)

    def client_config(self, endpoint: str, retry_seconds: Optional[float] = None):
        """How a process of this host reaches the job's embedded etcd at ``endpoint`` (root's
        certificate when the job is secure; plain otherwise)."""
        return self.security().client_config([endpoint], retry_seconds=retry_seconds)


def _bindable(hosts, port: int) -> bool:
    from aimaster.errors import ConfigError
    from aimaster.security.listen import check_bindable

    try:
        for host in hosts:
            check_bindable(host, port)
    except ConfigError:
        return False
    return True


class StateLock:
    """An exclusive ``flock`` on a file. The kernel drops it when its holder exits, however it
    exits (SIGKILL included), so it is never stale; the file keeps the last holder's pid for messages.
    Its descriptor is close-on-exec: the workers and etcd a master starts do not inherit it."""

    def __init__(self, path: str):
        self.path = path
        self.fd: Optional[int] = None

    def acquire(self, timeout: float) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return True

    def holder(self) -> Optional[int]:
        try:
            with open(self.path) as f:
                text = f.read().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
