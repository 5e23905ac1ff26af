"""MaxCompute tables through pyodps' table tunnel: credentials, errors, and reading.

Reading: one download session per table (partition); its record count plans the slices, and each
row range is one ``open_arrow_reader(start, count, columns=...)`` -- the tunnel sends only those
rows and columns. A session id can be handed to other processes (``describe()``), which re-attach
instead of creating sessions of their own. Sessions expire (``AIMASTER_ODPS_SESSION_LIFETIME``,
24 h): a process reuses its session for half of that, re-attaching to an expired one creates a new
one, and a read that finds its session expired continues on a new session of the same size.

Writing is exactly-once on top of the tunnel's upload sessions: see :mod:`aimaster.io.tables.odps_sink`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import pyarrow as pa

from aimaster.errors import (
    AimasterError,
    ConfigError,
    CredentialsError,
    InputNotFoundError,
    TableIOError,
    UrlError,
)
from aimaster.io.tables.base import TableSource
from aimaster.io.tables.types import Column
from aimaster.io.tables.urls import OdpsTableName, parse_odps_url

logger = logging.getLogger(__name__)

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


def _tunnel(name: OdpsTableName):
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


def _is_transient(e: BaseException) -> bool:
    """Worth retrying: network failures and server-side (5xx) errors, not refusals (4xx)."""
    import requests

    if isinstance(e, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    status = getattr(e, "status_code", None)
    return isinstance(e, _pyodps().errors.ODPSError) and (status is None or status >= 500)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if not text.startswith(type(e).__name__) else text


def _columns_of(schema) -> List[Column]:
    return [Column(c.name, str(c.type).upper()) for c in schema.simple_columns]


def _check_partition(name: OdpsTableName) -> None:
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


# --- reading ---------------------------------------------------------------------------------------


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


_DOWNLOADS: Dict[Tuple[Credentials, str], Tuple[float, Any]] = {}
_DOWNLOADS_LOCK = threading.Lock()


def clear_caches() -> None:
    """Forget cached pyodps entries and download sessions (tests; credential rotation)."""
    with _ENTRIES_LOCK:
        _ENTRIES.clear()
    with _DOWNLOADS_LOCK:
        _DOWNLOADS.clear()


class MaxComputeSource(TableSource):
    """A MaxCompute table or partition, read through one tunnel download session.

    Sessions are shared: within a process, opening the same URL again reuses the session (a
    ``common_io`` reader per slice would otherwise create one session per slice); across processes,
    ``describe()`` carries its id.
    """

    backend = "odps"

    def __init__(self, url: str, download_id: Optional[str] = None):
        self.name = parse_odps_url(url)
        self.url = self.name.url
        key = (load_credentials(), self.url)
        with _DOWNLOADS_LOCK:
            cached = _DOWNLOADS.get(key)
        if cached is not None and time.monotonic() - cached[0] < session_lifetime() / 2 and (
            download_id is None or cached[1].id == download_id
        ):
            session = cached[1]
        else:
            session = self._open_session(download_id)
            with _DOWNLOADS_LOCK:
                _DOWNLOADS[key] = (time.monotonic(), session)
        self.session = session
        self.schema = _columns_of(session.schema)

    def _open_session(self, download_id: Optional[str]):
        tunnel = _tunnel(self.name)
        spec = self.name.partition_spec or None
        session = None
        if download_id:
            try:
                with translated_errors(self.url, "re-attaching download session of"):
                    session = tunnel.create_download_session(self.name.table, partition_spec=spec,
                                                             download_id=download_id)
                if session.status != type(session).Status.Normal:
                    raise TableIOError(f"it is {session.status.value}")
            except (InputNotFoundError, TableIOError) as e:
                logger.warning("download session %s of %s is gone (%s); creating a new one", download_id, self.url, e)
                session = None
        if session is None:
            try:
                with translated_errors(self.url, "opening a download session on"):
                    session = tunnel.create_download_session(self.name.table, partition_spec=spec)
            except (InputNotFoundError, TableIOError):
                _check_partition(self.name)
                raise
        return session

    @property
    def download_id(self) -> str:
        return self.session.id

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.backend, "url": self.url, "download_id": self.session.id}

    def row_count(self) -> int:
        return int(self.session.count)

    def _batches(self, start: int, end: int, names: List[str]) -> Iterator[pa.RecordBatch]:
        unique = list(dict.fromkeys(names))
        done = start
        for retry in (False, True):
            try:
                with translated_errors(self.url, f"reading rows [{done}, {end}) of"):
                    reader = self.session.open_arrow_reader(done, end - done, columns=unique)
                    for batch in reader:
                        if batch.num_rows:
                            done += batch.num_rows
                            yield pa.RecordBatch.from_arrays([batch.column(n) for n in names], names=names)
                return
            except TableIOError:
                if retry or not self._replace_expired_session():
                    raise

    def _replace_expired_session(self) -> bool:
        """After a failed read: if the session expired (a job longer than its lifetime), continue on
        a new one -- of the same table size, else the job's slices would no longer match it."""
        try:
            with translated_errors(self.url, "reloading the download session of"):
                self.session.reload()
        except TableIOError:
            return False
        if self.session.status == type(self.session).Status.Normal:
            return False  # not an expiry: the original error stands
        fresh = self._open_session(None)
        if int(fresh.count) != int(self.session.count):
            raise TableIOError(f"{self.url} changed while the job read it: its download session expired and a "
                               f"new one has {fresh.count} rows, not {self.session.count}")
        logger.warning("download session %s of %s expired; continuing on %s", self.session.id, self.url, fresh.id)
        with _DOWNLOADS_LOCK:
            _DOWNLOADS[(load_credentials(), self.url)] = (time.monotonic(), fresh)
        self.session = fresh
        return True


def open_source(url: str, **options: Any) -> MaxComputeSource:
    return MaxComputeSource(url, **options)


def source_from_description(description: Mapping[str, Any]) -> MaxComputeSource:
    return MaxComputeSource(description["url"], download_id=description.get("download_id"))




# The writing side lives in odps_sink; importing it here registers the "odps" sink kind with this
# backend module and keeps ``aimaster.io.tables.odps.MaxComputeSink`` working.
from aimaster.io.tables.odps_sink import (  # noqa: E402
    DEFAULT_ATTEMPTS_PER_SLICE,
    MAX_BLOCKS,
    MaxComputeSink,
    SessionClock,
    open_sink,
)

__all__ = ["DEFAULT_ATTEMPTS_PER_SLICE", "MAX_BLOCKS", "MaxComputeSink", "MaxComputeSource", "SessionClock",
           "clear_caches", "load_credentials", "open_sink", "open_source", "session_lifetime",
           "source_from_description"]
