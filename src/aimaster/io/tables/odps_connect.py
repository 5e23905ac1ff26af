"""Talking to MaxCompute through pyodps: credentials, the cached entry and tunnel, typed errors.

Both sides of the MaxCompute backend need these -- reading (:mod:`aimaster.io.tables.odps`) and
exactly-once writing (:mod:`aimaster.io.tables.odps_sink`) -- so they live below both, and neither
side imports the other for them.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from aimaster.errors import (
    AimasterError,
    ConfigError,
    CredentialsError,
    InputNotFoundError,
    TableIOError,
    UrlError,
)
from aimaster.io.tables.types import Column
from aimaster.io.tables.urls import OdpsTableName

CONFIG_ENV = "ODPS_CONFIG_FILE_PATH"


def _pyodps():
    try:
        import odps
        import odps.errors
        import odps.tunnel
    except ImportError:
        raise ConfigError("MaxCompute tables need pyodps: pip install 'aimaster[odps]'")
    return odps


# --- credentials -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    access_id: Optional[str]
    access_key: Optional[str]
    endpoint: str
    tunnel_endpoint: Optional[str] = None
    source: str = ""


def read_config_file(path: str) -> Dict[str, str]:
    """``key=value`` lines of a PAI MaxCompute config file (blank and ``#`` lines ignored)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise CredentialsError(f"MaxCompute config file {path} (from {CONFIG_ENV}) does not exist")
    except OSError as e:
        raise CredentialsError(f"cannot read MaxCompute config file {path}: {e.strerror}")
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def load_credentials() -> Credentials:
    """Credentials, the way PAI finds them first, then pyodps' own ways.

    1. the file named by ``ODPS_CONFIG_FILE_PATH`` (``access_id=``, ``access_key=``, ``end_point=``;
       optional ``tunnel_endpoint=``);
    2. ``ALIBABA_CLOUD_ACCESS_KEY_ID`` / ``ALIBABA_CLOUD_ACCESS_KEY_SECRET`` with ``ODPS_ENDPOINT``;
    3. pyodps' ``options.account`` / STS or bearer-token environment, with ``options.endpoint`` or
       ``ODPS_ENDPOINT``.
    """
    path = os.environ.get(CONFIG_ENV)
    if path:
        values = read_config_file(path)
        missing = [k for k in ("access_id", "access_key", "end_point") if not values.get(k)]
        if missing:
            raise CredentialsError(f"MaxCompute config file {path} lacks {', '.join(k + '=' for k in missing)}")
        return Credentials(values["access_id"], values["access_key"], values["end_point"],
                           values.get("tunnel_endpoint") or None, source=path)
    endpoint = os.environ.get("ODPS_ENDPOINT")
    key_id = os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID")
    secret = os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
    if key_id or secret:
        if not (key_id and secret and endpoint):
            need = [n for n, v in (("ALIBABA_CLOUD_ACCESS_KEY_ID", key_id),
                                   ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", secret), ("ODPS_ENDPOINT", endpoint)) if not v]
            raise CredentialsError(f"incomplete MaxCompute credentials in the environment: {', '.join(need)} unset")
        return Credentials(key_id, secret, endpoint, source="environment")
    odps = _pyodps()
    endpoint = odps.options.endpoint or endpoint
    if odps.options.account is not None or odps.accounts.from_environments() is not None:
        if not endpoint:
            raise CredentialsError("pyodps has an account but no endpoint: set odps.options.endpoint or ODPS_ENDPOINT")
        return Credentials(None, None, endpoint, source="pyodps")
    raise CredentialsError(
        f"no MaxCompute credentials: set {CONFIG_ENV} to a file with access_id=, access_key= and "
        "end_point= lines (or ALIBABA_CLOUD_ACCESS_KEY_ID, ALIBABA_CLOUD_ACCESS_KEY_SECRET and ODPS_ENDPOINT)"
    )


_ENTRIES: Dict[Tuple[Credentials, str], Any] = {}
_ENTRIES_LOCK = threading.Lock()


def odps_entry(project: str):
    """A pyodps ``ODPS`` object for ``project`` (cached per credentials and project)."""
    creds = load_credentials()
    key = (creds, project)
    with _ENTRIES_LOCK:
        entry = _ENTRIES.get(key)
        if entry is None:
            odps = _pyodps()
            # overwrite_global=False: pyodps would otherwise make this entry the process-wide default,
            # clobbering whatever the user's own code configured.
            kwargs: Dict[str, Any] = {"project": project, "endpoint": creds.endpoint, "overwrite_global": False}
            if creds.tunnel_endpoint:
                kwargs["tunnel_endpoint"] = creds.tunnel_endpoint
            with translated_errors(f"odps://{project}", "connecting to"):
                if creds.access_id is None:
                    entry = odps.ODPS(**kwargs)
                else:
                    entry = odps.ODPS(creds.access_id, creds.access_key, **kwargs)
            _ENTRIES[key] = entry
    return entry


def tunnel_for(name: OdpsTableName):
    from odps.tunnel import TableTunnel

    return TableTunnel(odps_entry(name.project), project=name.project)


@contextmanager
def translated_errors(url: str, action: str):
    """pyodps and HTTP failures as aimaster's typed, one-line errors naming ``url``."""
    import requests

    odps = _pyodps()
    errors = odps.errors
    try:
        yield
    except AimasterError:
        raise
    except errors.NoSuchObject as e:
        raise InputNotFoundError(f"{url} does not exist ({action}): {_one_line(e)}")
    except (errors.AuthorizationRequired, errors.NoPermission, errors.SignatureNotMatch,
            errors.AuthenticationRequestExpired) as e:
        raise CredentialsError(f"MaxCompute refused the credentials for {url} ({action}): {_one_line(e)}")
    except (errors.ODPSError, requests.RequestException, OSError) as e:
        raise TableIOError(f"MaxCompute {action} {url} failed: {_one_line(e)}")


def is_transient(e: BaseException) -> bool:
    """Worth retrying: network failures and server-side (5xx) errors, not refusals (4xx)."""
    import requests

    if isinstance(e, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    status = getattr(e, "status_code", None)
    return isinstance(e, _pyodps().errors.ODPSError) and (status is None or status >= 500)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if not text.startswith(type(e).__name__) else text


def columns_of(schema) -> List[Column]:
    return [Column(c.name, str(c.type).upper()) for c in schema.simple_columns]


def check_partition(name: OdpsTableName) -> None:
    """After a failed session: is it because the URL names no partition of a partitioned table?"""
    if name.partition:
        return
    try:
        table = odps_entry(name.project).get_table(name.table, project=name.project)
        partitions = [p.name for p in table.table_schema.partitions]
    except Exception:  # noqa: BLE001 - only a better message is at stake; the original error stands
        return
    if partitions:
        raise UrlError(f"{name.url} must name a partition: table {name.project}.{name.table} is partitioned "
                       f"by {', '.join(partitions)} (odps://.../{'/'.join(p + '=...' for p in partitions)})")



LIFETIME_ENV = "AIMASTER_ODPS_SESSION_LIFETIME"
DEFAULT_LIFETIME_S = 24 * 3600.0


def session_lifetime() -> float:
    """Seconds a tunnel session lives on the server (24 h; tests shorten it to seconds)."""
    raw = os.environ.get(LIFETIME_ENV)
    if not raw:
        return DEFAULT_LIFETIME_S
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{LIFETIME_ENV}={raw!r} is not a number of seconds")
    if value <= 0:
        raise ConfigError(f"{LIFETIME_ENV} must be positive, got {raw}")
    return value



def clear_entries() -> None:
    """Forget the cached pyodps entries (tests; credential rotation)."""
    with _ENTRIES_LOCK:
        _ENTRIES.clear()
