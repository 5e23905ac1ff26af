"""Why an etcd that answers TCP would not talk to us, in one line naming the thing at fault.

gRPC reports a refused TLS handshake like a dead server ("etcd connection failed"), which sends a
user looking for a network problem. When a connection fails, :func:`explain` looks closer, with
Python's own TLS: the server speaks TLS and we have no client certificate (the job's etcd serves
other hosts: use its join bundle), our client certificate has expired or was refused (issued by
another CA), or the server's certificate is not one our CA issued (another job's etcd).
"""

from __future__ import annotations

import socket
import ssl
from typing import Optional

from aimaster.data.store import EtcdConfig
from aimaster.errors import ConfigError, CredentialsError
from aimaster.security import certs

HINT = "a job's etcd served with aimaster run --listen admits only holders of its join bundle (--bundle FILE)"


def _tcp(host: str, port: int, timeout: float) -> Optional[socket.socket]:
    try:
        return socket.create_connection((host.strip("[]"), port), timeout=timeout)
    except OSError:
        return None


def _handshake(sock: socket.socket, context: ssl.SSLContext, host: str) -> Optional[ssl.SSLError]:
    """None if TLS works both ways; else the error (a server's refusal may show on the first read)."""
    try:
        with context.wrap_socket(sock, server_hostname=host.strip("[]")) as tls:
            tls.settimeout(1.0)
            tls.recv(1)
    except ssl.SSLError as e:
        return e
    except OSError:  # a read timeout (the server accepted us and waits for a request), a reset
        pass
    finally:
        sock.close()
    return None


def check_client_cert(cfg: EtcdConfig) -> None:
    """ConfigError naming the file if our client certificate has expired (or is not yet valid):
    said before dialling, since no server would accept it."""
    if not cfg.cert_cert:
        return
    try:
        with open(cfg.cert_cert, "rb") as f:
            data = f.read()
    except OSError:
        return  # the client's own read reports it
    what = f"etcd client certificate {cfg.cert_cert}"
    certs.check_cert(certs.load_cert(data, what), what)


def explain(cfg: EtcdConfig, timeout: float = 3.0) -> Optional[str]:
    """A one-line reason, or None when nothing more precise than "unreachable" can be said."""
    try:
        check_client_cert(cfg)
    except ConfigError as e:
        return str(e)
    for endpoint in cfg.endpoints:
        host, _, port = endpoint.rpartition(":")
        sock = _tcp(host, int(port), timeout)
        if sock is None:
            continue
        context = ssl.create_default_context()
        context.check_hostname = False
        if cfg.ca_cert:
            try:
                context.load_verify_locations(cfg.ca_cert)
                if cfg.cert_cert and cfg.cert_key:
                    context.load_cert_chain(cfg.cert_cert, cfg.cert_key)
            except (OSError, ssl.SSLError):
                sock.close()
                return None
        else:
            context.verify_mode = ssl.CERT_NONE
        error = _handshake(sock, context, host)
        if error is None:
            continue
        reason = str(getattr(error, "reason", "") or error).upper()
        refused = "BAD_CERTIFICATE" in reason or "CERTIFICATE_REQUIRED" in reason or "UNKNOWN_CA" in reason
        if "CERTIFICATE_VERIFY_FAILED" in reason:
            return (f"etcd at {endpoint} unreachable: its certificate was not issued by the CA in {cfg.ca_cert} "
                    f"(another job's etcd?)")
        if refused and not cfg.cert_cert:
            return f"etcd at {endpoint} unreachable: it requires a TLS client certificate, and this client has none; " \
                   f"{HINT}"
        if refused:
            return (f"etcd at {endpoint} unreachable: it refused the client certificate {cfg.cert_cert} (not "
                    f"issued by the CA of the job it serves)")
    return None


def refine(cfg: EtcdConfig, error: Exception) -> Exception:
    """``error``, or a CredentialsError saying more precisely why etcd would not talk to us."""
    reason = explain(cfg)
    return CredentialsError(reason) if reason else error
