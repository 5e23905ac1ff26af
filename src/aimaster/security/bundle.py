"""The join bundle: what a worker host needs to join a job, and nothing more.

``<state dir>/jobs/<job id>/join.json`` (mode 0600)::

    {"version": 1, "job_id": "nightly", "endpoints": ["10.0.0.5:2379"],
     "ca": "<PEM>", "cert": "<PEM>", "key": "<PEM>", "signature": "<base64>"}

``ca`` is the job's CA certificate (never its key), ``cert``/``key`` the worker client certificate
(etcd user :data:`~aimaster.security.etcd_auth.WORKER_USER`, limited to the job's key prefix). The
root password and the root certificate never leave the master's host. ``signature`` is the CA's
signature over every other field, so that an edited bundle (another endpoint, another job id, a
certificate swapped in) is refused before anything is dialled. An ``--insecure`` job's bundle has
``"insecure": true`` and neither certificates nor signature.

Loading checks everything and says what is wrong in one line naming the file.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from dataclasses import dataclass
from typing import List, Optional

from aimaster.data.keys import check_name
from aimaster.data.store import EtcdConfig
from aimaster.errors import ConfigError
from aimaster.security import certs

VERSION = 1
_FIELDS = ("version", "job_id", "endpoints", "ca", "cert", "key", "insecure")


def _signed_part(value: dict) -> bytes:
    return json.dumps({k: value[k] for k in _FIELDS if k in value}, sort_keys=True,
                      separators=(",", ":")).encode("utf-8")


def write(path: str, job_id: str, endpoints: List[str], ca_pem: Optional[bytes] = None,
          cert_pem: Optional[bytes] = None, key_pem: Optional[bytes] = None, ca_key=None) -> None:
    """Write the bundle (0600). With no CA it is an insecure bundle: endpoints and job id only."""
    value: dict = {"version": VERSION, "job_id": job_id, "endpoints": list(endpoints)}
    if ca_pem is None:
        value["insecure"] = True
    else:
        value.update(ca=ca_pem.decode("ascii"), cert=cert_pem.decode("ascii"), key=key_pem.decode("ascii"))
        value["signature"] = base64.b64encode(certs.sign_bytes(ca_key, _signed_part(value))).decode("ascii")
    certs.write_private(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8"))


@dataclass
class Bundle:
    path: str
    job_id: str
    endpoints: List[str]
    ca: Optional[bytes] = None
    cert: Optional[bytes] = None
    key: Optional[bytes] = None

    @property
    def insecure(self) -> bool:
        return self.ca is None

    def etcd_config(self, directory: str, retry_seconds: float = 60.0) -> EtcdConfig:
        """Write the TLS material into ``directory`` (0700, files 0600) and return the client config."""
        if self.insecure:
            return EtcdConfig(list(self.endpoints), retry_seconds=retry_seconds)
        certs.private_dir(directory)
        paths = {}
        for name, data in (("ca.pem", self.ca), ("worker.pem", self.cert), ("worker-key.pem", self.key)):
            paths[name] = os.path.join(directory, name)
            certs.write_private(paths[name], data)
        return EtcdConfig(list(self.endpoints), ca_cert=paths["ca.pem"], cert_cert=paths["worker.pem"],
                          cert_key=paths["worker-key.pem"], retry_seconds=retry_seconds)


def load(path: str, job_id: Optional[str] = None) -> Bundle:
    """The bundle at ``path``, checked; ConfigError (one line naming the file) if anything is wrong."""
    what = f"join bundle {path}"
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read(1 << 20)
    except FileNotFoundError:
        raise ConfigError(f"{what} does not exist")
    except OSError as e:
        raise ConfigError(f"cannot read {what}: {e.strerror}")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{what} is not a regular file")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(f"{what} is not JSON")
    if not isinstance(value, dict) or value.get("version") != VERSION:
        raise ConfigError(f"{what} is not an aimaster join bundle (version {VERSION})")
    bundle_job = value.get("job_id")
    endpoints = value.get("endpoints")
    if not isinstance(bundle_job, str) or not isinstance(endpoints, list) or not endpoints \
            or not all(isinstance(e, str) for e in endpoints):
        raise ConfigError(f"{what} lacks a job_id or its endpoints")
    try:
        check_name("job id", bundle_job)
        endpoints = EtcdConfig.parse_endpoints(",".join(endpoints))
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}")
    if job_id is not None and job_id != bundle_job:
        raise ConfigError(f"{what} is for job {bundle_job}, not {job_id}")
    if value.get("insecure") is True and not any(k in value for k in ("ca", "cert", "key", "signature")):
        return Bundle(path, bundle_job, endpoints)
    return Bundle(path, bundle_job, endpoints, *_check_tls(value, what))


def _check_tls(value: dict, what: str):
    texts = [value.get(k) for k in ("ca", "cert", "key", "signature")]
    if not all(isinstance(t, str) and t for t in texts) or "insecure" in value:
        raise ConfigError(f"{what} lacks its CA certificate, worker certificate, key or signature")
    ca_pem, cert_pem, key_pem = (t.encode("ascii", "replace") for t in texts[:3])
    ca = certs.load_cert(ca_pem, f"the CA certificate in {what}")
    try:
        signature = base64.b64decode(texts[3], validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if not certs.verify_bytes(ca, _signed_part(value), signature):
        raise ConfigError(f"{what} has been altered: its signature does not match its CA")
    cert = certs.load_cert(cert_pem, f"the worker certificate in {what}")
    key = certs.load_key(key_pem, f"the worker key in {what}")
    certs.check_cert(ca, f"the CA certificate in {what}")
    certs.check_cert(cert, f"the worker certificate in {what}", ca=ca)
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise ConfigError(f"the worker key in {what} does not belong to its certificate")
    return ca_pem, cert_pem, key_pem
