"""The ``--etcd*`` flags of every command, turned into an :class:`~aimaster.data.store.EtcdConfig`.

``aimaster run``, ``join``, ``status``, ``stop`` and ``retry`` take the same flags; the check that
they go together lives here, below the command line, so a command defined in its own module
(``aimaster retry``) does not import the command line back (an import circle).
"""

from __future__ import annotations

from typing import Optional

import click

from aimaster.data.store import EtcdConfig, retry_seconds_from_env


def etcd_config(etcd: Optional[str], user, password, ca, cert, key) -> Optional[EtcdConfig]:
    """None without ``--etcd`` (the job's own embedded etcd); a usage error for flags that need a partner."""
    if not etcd:
        if any((user, password, ca, cert, key)):
            raise click.UsageError("--etcd-user/--etcd-password/TLS options need --etcd")
        return None
    if bool(cert) != bool(key):
        raise click.UsageError("--etcd-cert and --etcd-key go together")
    if bool(user) != bool(password):
        raise click.UsageError("--etcd-user and --etcd-password go together")
    return EtcdConfig(EtcdConfig.parse_endpoints(etcd), user=user, password=password, ca_cert=ca,
                      cert_cert=cert, cert_key=key, retry_seconds=retry_seconds_from_env())
