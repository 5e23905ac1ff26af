"""The job's own certificate authority and the certificates it issues, made with ``cryptography``.

A job that serves other hosts gets a CA of its own (nothing else trusts it, and it trusts nothing
else), and from it:

- a **server** certificate for its etcd, valid for the advertised address, the listen address and
  loopback (local clients reach the same etcd on 127.0.0.1);
- a **root** client certificate (common name ``root``) for the processes of the master's host;
- a **worker** client certificate (common name :data:`~aimaster.security.etcd_auth.WORKER_USER`),
  the one that travels in the join bundle.

etcd runs with ``--client-cert-auth``: a client without a certificate signed by the job's CA cannot
even complete the TLS handshake, and the certificate's common name *is* the etcd user (no password,
hence no auth token that an etcd restart would invalidate under running workers).

Private keys are written with mode 0600 into a directory of mode 0700. Certificates are reissued
when they expire within :data:`RENEW_BEFORE` or (server) no longer name every address.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from typing import Iterable, List, Optional

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aimaster.errors import ConfigError

CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def write_private(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (0600), atomically."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it, an old file's mode cannot either
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def private_dir(path: str) -> str:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(data: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ConfigError(f"{what} is not a PEM certificate")


def load_key(data: bytes, what: str):
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{what} is not an unencrypted PEM private key")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aimaster"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def make_ca(job_id: str):
    """(certificate, key) of a new CA for ``job_id``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    name = _name(f"aimaster CA {job_id}"[:64])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(ca_cert: x509.Certificate, ca_key, common_name: str, hosts: Iterable[str] = (), server: bool = False,
          days: int = LEAF_DAYS):
    """(certificate, key) signed by the CA: a server certificate for ``hosts``, or a client one."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
    names = list(dict.fromkeys(_san(h) for h in hosts))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def common_name(cert: x509.Certificate) -> Optional[str]:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def names_of(cert: x509.Certificate) -> List[str]:
    """The addresses and host names a server certificate is valid for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in san]


def check_cert(cert: x509.Certificate, what: str, ca: Optional[x509.Certificate] = None,
               now: Optional[datetime.datetime] = None) -> None:
    """ConfigError (one line, naming ``what``) if the certificate is expired, not yet valid, or not
    issued by ``ca`` (a certificate of another job, or forged)."""
    now = now or _now()
    if cert.not_valid_after_utc <= now:
        raise ConfigError(f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if cert.not_valid_before_utc > now:
        raise ConfigError(f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if ca is not None and not signed_by(cert, ca):
        raise ConfigError(f"{what} was not issued by the job's CA (a certificate of another job?)")


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def due_for_renewal(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - RENEW_BEFORE <= _now() or cert.not_valid_before_utc > _now()


def sign_bytes(key, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_bytes(cert: x509.Certificate, data: bytes, signature: bytes) -> bool:
    try:
        cert.public_key().verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True


@dataclass
class Issued:
    """Paths of one certificate and its key."""

    cert: str
    key: str
