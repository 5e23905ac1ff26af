"""A Kubernetes job's TLS material and join bundle, made before anything runs.

On one machine ``aimaster run --listen`` makes its CA and certificates when it starts and writes the
join bundle for the workers of other hosts. On Kubernetes the worker pods start together with the
master, so the bundle must exist *before*: it is made here, at render time, by the very code the
master uses (:class:`~aimaster.security.job_security.JobSecurity`, in a throw-away directory), for
the address the workers dial, the etcd Service's DNS name. The master's pod gets the whole security
directory (an init container copies it into the job's state directory, where ``aimaster run``
reuses it: same CA, same certificates); the worker pods get only ``join.json`` (the CA certificate,
the worker's certificate and key, signed), never the CA key nor root's certificate.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Dict, List

from aimaster.security import certs
from aimaster.security.job_security import JobSecurity
from aimaster.security.listen import Listen

#: The files of a job's ``security/`` directory the master needs (see JobSecurity); listen.json is
#: written by the master's own ``aimaster run --listen``.
MASTER_FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "root.pem", "root-key.pem",
                "worker.pem", "worker-key.pem", "root-password")
BUNDLE_FILE = "join.json"


@dataclass
class JobTls:
    """File name -> content: what the master's Secret holds, and the join bundle."""

    master_files: Dict[str, bytes]
    bundle: bytes


def service_names(service: str, namespace: str) -> List[str]:
    """Every name a pod may reach the etcd Service by (the first is the one the bundle names)."""
    return [f"{service}.{namespace}.svc", service, f"{service}.{namespace}",
            f"{service}.{namespace}.svc.cluster.local"]


def make_job_tls(job_id: str, service: str, namespace: str, port: int) -> JobTls:
    """A new CA, the server certificate for the Service's names, root and worker certificates, the
    root password, and the join bundle naming ``<service>.<namespace>.svc:<port>``."""
    names = service_names(service, namespace)
    with tempfile.TemporaryDirectory(prefix="aimaster-k8s-tls-") as tmp:
        job_path = os.path.join(tmp, job_id)
        os.makedirs(job_path)
        security = JobSecurity(job_path, job_id)
        certs.private_dir(security.dir)
        listen = Listen("0.0.0.0", port, names[0])
        security.ensure_pki(list(dict.fromkeys(listen.cert_names() + names)))
        security.set_listen(listen)  # reuses the certificates above: they name every address it needs
        bundle_path = security.write_bundle(port)
        files = {}
        for name in MASTER_FILES:
            with open(os.path.join(security.dir, name), "rb") as f:
                files[name] = f.read()
        with open(bundle_path, "rb") as f:
            bundle = f.read()
    return JobTls(files, bundle)
