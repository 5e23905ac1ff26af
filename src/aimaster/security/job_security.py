"""A job's security material in its state directory, so that a resumed job keeps its credentials.

``<state dir>/jobs/<job id>/security/`` (mode 0700, files 0600)::

    ca.pem ca-key.pem             the job's CA (its key never leaves this directory)
    server.pem server-key.pem     etcd's certificate: advertised address, listen address, loopback
    root.pem root-key.pem         client certificate of etcd user root (this host's master, status, stop)
    worker.pem worker-key.pem     client certificate of the worker user (workers here; the join bundle)
    root-password                 etcd root's password, for an operator's etcdctl; used by nothing else
    listen.json                   this run's --listen/--advertise (a restarted etcd listens the same way)

Once ``ca.pem`` exists the job is *secure* for good: its etcd data has authentication enabled, so
every later start of its etcd (a resume, the guard's restart, ``aimaster status`` of a finished
job) serves TLS with client certificates, also on loopback only. ``--insecure`` on such a job is
refused rather than silently ignored.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional

from aimaster.data.etcd_server import TlsFiles
from aimaster.data.store import EtcdConfig, retry_seconds_from_env
from aimaster.errors import ConfigError
from aimaster.security import bundle, certs, etcd_auth
from aimaster.security.listen import LOOPBACK, Listen

_FILES = ("ca", "server", "root", "worker")


class JobSecurity:
    def __init__(self, job_path: str, job_id: str):
        self.job_id = job_id
        self.dir = os.path.join(job_path, "security")
        self.bundle_path = os.path.join(job_path, "join.json")
        self._listen_path = os.path.join(self.dir, "listen.json")
        self._password_path = os.path.join(self.dir, "root-password")

    def _pem(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.pem")

    def _key(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}-key.pem")

    @property
    def secure(self) -> bool:
        """True once the job has its CA: its etcd then always runs with TLS and authentication."""
        return os.path.exists(self._pem("ca"))

    # -- this run's listen settings ------------------------------------------------------------
    def set_listen(self, listen: Optional[Listen]) -> None:
        """Record how this run's etcd listens (None: loopback only); make the TLS material if needed."""
        if listen is None:
            try:
                os.unlink(self._listen_path)
            except FileNotFoundError:
                pass
            return
        if listen.insecure and self.secure:
            raise ConfigError(f"job {self.job_id} was set up with TLS and authentication ({self.dir}); --insecure "
                              f"cannot serve its etcd in plain text (use a new --job-id)")
        certs.private_dir(self.dir)
        if not listen.insecure:
            self.ensure_pki(listen.cert_names())
        certs.write_private(self._listen_path, json.dumps(listen.to_json()).encode("utf-8"))

    def listen(self) -> Optional[Listen]:
        try:
            with open(self._listen_path, "rb") as f:
                return Listen.from_json(json.loads(f.read()))
        except (OSError, ValueError):
            return None

    def listen_hosts(self) -> List[str]:
        listen = self.listen()
        return listen.hosts if listen is not None else [LOOPBACK]

    # -- certificates --------------------------------------------------------------------------
    def ensure_pki(self, names: List[str]) -> None:
        """CA, server, root and worker certificates, reusing what is there and still good."""
        ca_cert = ca_key = None
        if self.secure:
            ca_cert = self._load_cert("ca")
            ca_key = self._load_key("ca")
            if certs.due_for_renewal(ca_cert):
                ca_cert = None  # a new CA: every certificate below is reissued from it
        if ca_cert is None:
            ca_cert, ca_key = certs.make_ca(self.job_id)
            self._save("ca", ca_cert, ca_key)
            fresh = True
        else:
            fresh = False
        for name, cn, server in (("server", "aimaster etcd", True), ("root", etcd_auth.ROOT_USER, False),
                                 ("worker", etcd_auth.WORKER_USER, False)):
            current = None if fresh or not os.path.exists(self._pem(name)) else self._load_cert(name)
            if current is not None and (certs.due_for_renewal(current) or not certs.signed_by(current, ca_cert)
                                        or (server and not set(names) <= set(certs.names_of(current)))):
                current = None
            if current is None:
                self._save(name, *certs.issue(ca_cert, ca_key, cn, names if server else (), server=server))
        if not os.path.exists(self._password_path):
            certs.write_private(self._password_path, etcd_auth.new_password().encode("ascii"))

    def _save(self, name: str, cert, key) -> None:
        certs.write_private(self._key(name), certs.key_pem(key))
        certs.write_private(self._pem(name), certs.cert_pem(cert))

    def _read(self, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}")

    def _load_cert(self, name: str):
        return certs.load_cert(self._read(self._pem(name)), self._pem(name))

    def _load_key(self, name: str):
        return certs.load_key(self._read(self._key(name)), self._key(name))

    def check(self) -> None:
        """One line naming the file if a certificate the job's etcd needs has expired or is foreign."""
        ca = self._load_cert("ca")
        certs.check_cert(ca, self._pem("ca"))
        for name in _FILES[1:]:
            certs.check_cert(self._load_cert(name), self._pem(name), ca=ca)

    # -- what etcd and its clients use ---------------------------------------------------------
    def server_tls(self) -> Optional[TlsFiles]:
        if not self.secure:
            return None
        self.check()
        return TlsFiles(self._pem("ca"), self._pem("server"), self._key("server"))

    def client_config(self, endpoints: List[str], user: str = "root", retry_seconds: Optional[float] = None
                      ) -> EtcdConfig:
        """How this host reaches the job's etcd: as root (the master, status, stop) or as the worker."""
        retry = retry_seconds_from_env() if retry_seconds is None else retry_seconds
        if not self.secure:
            return EtcdConfig(list(endpoints), retry_seconds=retry)
        name = "root" if user == "root" else "worker"
        return EtcdConfig(list(endpoints), ca_cert=self._pem("ca"), cert_cert=self._pem(name),
                          cert_key=self._key(name), retry_seconds=retry)

    def set_up_auth(self, endpoint: str, prefix: str) -> None:
        if self.secure:
            etcd_auth.ensure_users(self.client_config([endpoint]), prefix, self._read(self._password_path).decode())

    def write_bundle(self, port: int) -> Optional[str]:
        """Write join.json for this run's listen address; None when this run serves loopback only."""
        listen = self.listen()
        if listen is None:
            return None
        endpoints = [listen.endpoint(port)]
        if listen.insecure:
            bundle.write(self.bundle_path, self.job_id, endpoints)
        else:
            bundle.write(self.bundle_path, self.job_id, endpoints, self._read(self._pem("ca")),
                         self._read(self._pem("worker")), self._read(self._key("worker")), self._load_key("ca"))
        return self.bundle_path
