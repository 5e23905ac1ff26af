"""Connecting to a job's etcd: a :class:`~aimaster.data.store.Store` for the job, or one line saying why not.

Beside the store, not in the master, because every client of a job needs it -- the master, ``aimaster
stop``/``status``/``jobs``, the Kubernetes readiness probe -- and none of them should import the master.
"""

from __future__ import annotations

from aimaster.data import keys
from aimaster.data.store import EtcdConfig, Store, job_prefix
from aimaster.errors import EtcdUnavailableError


def connect(cfg: EtcdConfig, job_id: str, probe_seconds: float = 5.0) -> Store:
    """A store for the job, failing fast (one line) when etcd is unreachable or refuses us."""
    from aimaster.security.diagnose import check_client_cert, refine

    check_client_cert(cfg)  # an expired certificate: one line now, not after the probe
    # A shorter retry window ($AIMASTER_ETCD_RETRY_SECONDS) shortens the probe too.
    probe = EtcdConfig(**{**cfg.__dict__, "retry_seconds": min(probe_seconds, cfg.retry_seconds)})
    store = Store(probe, job_prefix(job_id))
    key = store.key(keys.JOB)
    # Raises EtcdUnavailableError naming the endpoints. The value is not decoded here: what a
    # malformed job record means is for the caller to say (the master ends the job, naming it).
    try:
        store.call(f"get {key}", lambda c: c.get(key))
    except EtcdUnavailableError as e:
        raise refine(cfg, e)  # a refused TLS handshake looks like a dead server to gRPC: say which
    store.cfg = cfg
    return store
