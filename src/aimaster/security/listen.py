"""``--listen HOST[:PORT]`` and ``--advertise HOST``: where the job's etcd serves other hosts.

Checked here, before etcd starts, so that a typo is one line naming the address instead of an etcd
that exits with a log file to read: an address this host does not have, a port already in use.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import List, Optional

from aimaster.errors import ConfigError

LOOPBACK = "127.0.0.1"


@dataclass
class Listen:
    """Where the embedded etcd listens (``hosts``, IP addresses) and what others dial (``advertise``)."""

    host: str  # as given, resolved to an IP address
    port: Optional[int]  # None: a free port (or the previous run's)
    advertise: str
    insecure: bool = False

    @property
    def hosts(self) -> List[str]:
        """The IP addresses etcd binds: the listen address and loopback (local clients use loopback)."""
        if self.host in ("0.0.0.0", "::"):
            return [self.host]
        return list(dict.fromkeys([LOOPBACK, self.host]))

    def cert_names(self) -> List[str]:
        names = [self.advertise, LOOPBACK, "localhost"]
        if self.host not in ("0.0.0.0", "::"):
            names.append(self.host)
        return list(dict.fromkeys(names))

    def endpoint(self, port: int) -> str:
        host = self.advertise
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def to_json(self) -> dict:
        return {"host": self.host, "port": self.port, "advertise": self.advertise, "insecure": self.insecure}

    @classmethod
    def from_json(cls, value) -> Optional[Listen]:
        if not isinstance(value, dict) or not isinstance(value.get("host"), str) \
                or not isinstance(value.get("advertise"), str):
            return None
        port = value.get("port")
        return cls(value["host"], port if isinstance(port, int) else None, value["advertise"],
                   value.get("insecure") is True)


def parse(text: str, advertise: Optional[str] = None, insecure: bool = False) -> Listen:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT``; HOST resolved to one IP address."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"bad --listen {text!r}: expected HOST[:PORT]")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"bad --listen {text!r}: expected HOST[:PORT]")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    port = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"bad --listen {text!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    if not host:
        raise ConfigError(f"bad --listen {text!r}: expected HOST[:PORT]")
    ip = _resolve(host)
    if advertise is None:
        advertise = primary_address() if ip in ("0.0.0.0", "::") else host
    advertise = advertise.strip().strip("[]")
    if not advertise or advertise in ("0.0.0.0", "::"):
        raise ConfigError(f"bad --advertise {advertise!r}: give the address other hosts reach this one at")
    return Listen(ip, port, advertise, insecure)


def _resolve(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"--listen {host}: cannot resolve the name ({e.strerror})")
    return str(infos[0][4][0])


def primary_address() -> str:
    """The address of the interface this host would use to reach others (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.254.254.254", 1))
            address = s.getsockname()[0]
        except OSError:
            address = ""
    if address and not address.startswith("127."):
        return address
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return LOOPBACK


def check_bindable(host: str, port: int) -> None:
    """ConfigError naming the address if ``host:port`` cannot be listened on here."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as etcd does: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(f"--listen {host}: this host has no such address")
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"--listen {host}:{port}: the port is already in use")
            if e.errno == errno.EACCES:
                raise ConfigError(f"--listen {host}:{port}: permission denied (a port below 1024 needs root)")
            raise ConfigError(f"--listen {host}:{port}: {e.strerror}")


def free_port_on(hosts: List[str]) -> int:
    """A port free on every one of ``hosts``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET6 if ":" in hosts[-1] else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((hosts[-1], 0))
            port = s.getsockname()[1]
        try:
            for h in hosts:
                check_bindable(h, port)
            return port
        except ConfigError:
            continue
    raise ConfigError(f"no free port on {', '.join(hosts)}")
