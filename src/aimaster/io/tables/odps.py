"""MaxCompute tables through pyodps' table tunnel.

Reading: one download session per table (partition); its record count plans the slices, and each
row range is one ``open_arrow_reader(start, count, columns=...)`` -- the tunnel sends only those
rows and columns. A session id can be handed to other processes (``describe()``), which re-attach
instead of creating sessions of their own.

Writing is exactly-once on top of the tunnel's upload sessions, whose rules shape the design:

* A session holds numbered blocks (ids 0..19999); uploading a block id again *replaces* it.
* Committing a session commits **every block it holds** -- the commit request names no blocks
  (pyodps' ``commit(blocks)`` only checks the list on the client side).
* A session is committed once, by anyone who knows its id.

So one session (or a few, see below) is created per output table and shared by all workers through
``describe()``. A slice attempt's rows become one block whose id is derived from the slice number
and the attempt number -- concurrent attempts of a slice never share a block, and a retry of the
same attempt overwrites its own block::

    n = slice_index * attempts_per_slice + attempt      (attempt < attempts_per_slice)
    session = sessions[n // 20000], block = n % 20000

``slice_index`` is the number at the end of the slice id and ``attempt`` must be a decimal integer
(the attempt's ordinal within its slice). ``attempts_per_slice`` defaults to 8; pass
``slice_count`` when creating the sink and it creates ``ceil(slice_count * 8 / 20000)`` sessions, so
tables of any size fit; a block id out of range is a clear TableIOError, never a silent collision.

Because the commit takes whatever blocks exist, a losing attempt's block is *emptied* (overwritten
with zero rows) by ``discard``, and ``finalize`` empties every block that is not in the committed
list (attempts that crashed before anyone could discard them) before committing. The committed
table therefore holds exactly the committed attempts' rows, in slice order.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import pyarrow as pa

from aimaster.data.outputs import StagedRef, register_sink
from aimaster.errors import (
    AimasterError,
    ConfigError,
    CredentialsError,
    InputNotFoundError,
    TableIOError,
    UrlError,
)
from aimaster.io.tables.base import StageWriter, TableSink, TableSource
from aimaster.io.tables.types import Column
from aimaster.io.tables.urls import OdpsTableName, parse_odps_url

logger = logging.getLogger(__name__)

CONFIG_ENV = "ODPS_CONFIG_FILE_PATH"
MAX_BLOCKS = 20000
DEFAULT_ATTEMPTS_PER_SLICE = 8
_UPLOAD_RETRIES = 3


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


_SESSION_REUSE_S = 12 * 3600  # download sessions live 24 h on the server
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
        if cached is not None and time.monotonic() - cached[0] < _SESSION_REUSE_S and (
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
            except (InputNotFoundError, TableIOError) as e:
                logger.warning("download session %s of %s is gone (%s); creating a new one", download_id, self.url, e)
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
        with translated_errors(self.url, f"reading rows [{start}, {end}) of"):
            reader = self.session.open_arrow_reader(start, end - start, columns=unique)
            for batch in reader:
                if batch.num_rows:
                    yield pa.RecordBatch.from_arrays([batch.column(n) for n in names], names=names)


# --- writing ---------------------------------------------------------------------------------------


def _slice_index(slice_id: str) -> int:
    match = re.search(r"(\d+)$", slice_id)
    if match is None:
        raise TableIOError(f"MaxCompute output needs slice ids ending in the slice number; got {slice_id!r}")
    return int(match.group(1))


def _attempt_number(attempt: Any) -> int:
    text = str(attempt)
    if not text.isdigit():
        raise TableIOError(f"MaxCompute output needs the attempt's ordinal within its slice (0, 1, ...); "
                           f"got {attempt!r}")
    return int(text)


@register_sink
class MaxComputeSink(TableSink):
    """An existing MaxCompute table (partition) written through shared tunnel upload sessions.

    Build it with :meth:`open` (creates the sessions, or re-attaches to ``session_ids``) or from
    its ``describe()`` dict; :func:`open_table_sink` gives one whose sessions are created on first
    use. See the module docstring for the block scheme.
    """

    kind = "odps"

    def __init__(self, url: str, sessions: Optional[List[str]] = None, slice_count: Optional[int] = None,
                 attempts_per_slice: int = DEFAULT_ATTEMPTS_PER_SLICE):
        self.name = parse_odps_url(url)
        self.url = self.name.url
        if attempts_per_slice < 1 or attempts_per_slice > MAX_BLOCKS:
            raise ConfigError(f"attempts_per_slice must be in 1..{MAX_BLOCKS}, got {attempts_per_slice}")
        self.attempts_per_slice = int(attempts_per_slice)
        self.slice_count = None if slice_count is None else int(slice_count)
        self._session_ids: Optional[List[str]] = list(sessions) if sessions else None
        self._sessions: Dict[str, Any] = {}
        self._schema: Optional[List[Column]] = None
        self._lock = threading.RLock()

    @classmethod
    def open(cls, url: str, session_ids: Optional[List[str]] = None, slice_count: Optional[int] = None,
             attempts_per_slice: int = DEFAULT_ATTEMPTS_PER_SLICE) -> MaxComputeSink:
        """Create the upload sessions now (``session_ids=None``) or re-attach to existing ones."""
        sink = cls(url, session_ids, slice_count, attempts_per_slice)
        for sid in sink.session_ids:
            sink._session(sid)
        return sink

    @property
    def session_ids(self) -> List[str]:
        with self._lock:
            if self._session_ids is None:
                n = 1
                if self.slice_count:
                    n = max(1, math.ceil(self.slice_count * self.attempts_per_slice / MAX_BLOCKS))
                self._session_ids = [self._create_session() for _ in range(n)]
            return list(self._session_ids)

    def _create_session(self):
        spec = self.name.partition_spec or None
        tunnel = _tunnel(self.name)
        try:
            with translated_errors(self.url, "opening an upload session on"):
                session = tunnel.create_upload_session(self.name.table, partition_spec=spec,
                                                       create_partition=bool(spec))
        except (InputNotFoundError, TableIOError):
            _check_partition(self.name)
            raise
        self._sessions[session.id] = session
        return session.id

    def _session(self, session_id: str, reload: bool = False):
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                spec = self.name.partition_spec or None
                with translated_errors(self.url, f"attaching upload session {session_id} of"):
                    session = _tunnel(self.name).create_upload_session(self.name.table, partition_spec=spec,
                                                                       upload_id=session_id)
                self._sessions[session_id] = session
            elif reload:
                with translated_errors(self.url, f"reloading upload session {session_id} of"):
                    session.reload()
            return session

    @property
    def schema(self) -> List[Column]:
        if self._schema is None:
            self._schema = _columns_of(self._session(self.session_ids[0]).schema)
        return self._schema

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "url": self.url, "sessions": self.session_ids,
                "slice_count": self.slice_count, "attempts_per_slice": self.attempts_per_slice}

    def block_of(self, slice_id: str, attempt: Any) -> Tuple[str, int]:
        """The (upload session id, block id) of a slice attempt; TableIOError when out of range."""
        index, number = _slice_index(slice_id), _attempt_number(attempt)
        if number >= self.attempts_per_slice:
            raise TableIOError(f"slice {slice_id} attempt {number} of {self.url} exceeds the "
                               f"{self.attempts_per_slice} block slots per slice (attempts_per_slice)")
        n = index * self.attempts_per_slice + number
        ids = self.session_ids
        if n // MAX_BLOCKS >= len(ids):
            raise TableIOError(f"slice {slice_id} of {self.url} needs block {n}, beyond the {len(ids)} upload "
                               f"session(s) x {MAX_BLOCKS} blocks of this sink; create it with slice_count=")
        return ids[n // MAX_BLOCKS], n % MAX_BLOCKS

    def open_stage(self, slice_id: str, attempt: str) -> StageWriter:
        stage = _BlockStage(self, slice_id, attempt)
        stage.session_id, stage.block = self.block_of(stage.slice_id, stage.attempt)
        return stage

    def upload_block(self, session_id: str, block: int, tables: Iterable[pa.Table]) -> None:
        """Write ``tables`` as block ``block``, replacing it; retried whole on transient failures."""
        tables = list(tables)
        session = self._session(session_id)
        delay = 0.5
        for attempt in range(_UPLOAD_RETRIES):
            with translated_errors(self.url, f"uploading block {block} of session {session_id} to"):
                try:
                    self._write_block(session, block, tables)
                    return
                except Exception as e:
                    if attempt == _UPLOAD_RETRIES - 1 or not _is_transient(e):
                        raise
            logger.warning("retrying upload of block %d to %s", block, self.url)
            time.sleep(delay)
            delay *= 2

    @staticmethod
    def _write_block(session, block: int, tables: List[pa.Table]) -> None:
        writer = session.open_record_writer(block)
        try:
            for table in tables:
                columns = [col.to_pylist() for col in table.columns]
                for values in zip(*columns):
                    writer.write(session.new_record(list(values)))
        finally:
            writer.close()

    def _check_ref(self, staged: StagedRef) -> Tuple[str, int]:
        block = staged.get("block")
        if staged.get("session") not in self.session_ids or not isinstance(block, int) or not 0 <= block < MAX_BLOCKS:
            raise TableIOError(f"staged ref {dict(staged)!r} names no block of the upload sessions of {self.url}")
        return staged["session"], block

    def publish(self, slice_id: str, staged: StagedRef) -> None:
        """Nothing to do per slice: committed blocks become visible when :meth:`finalize` commits."""
        self._check_ref(staged)

    def discard(self, staged: StagedRef) -> None:
        """Empty the block: a session's commit takes every block it holds, losers' included."""
        session_id, block = self._check_ref(staged)
        session = self._session(session_id, reload=True)
        if session.status != type(session).Status.Normal:
            return  # already committed or gone: nothing to take back
        self.upload_block(session_id, block, [])

    def finalize(self, committed: Iterable[Tuple[str, StagedRef]]) -> None:
        """Commit each upload session once, holding exactly the committed blocks' rows."""
        wanted: Dict[str, set] = {sid: set() for sid in self.session_ids}
        for _slice_id, ref in committed:
            session_id, block = self._check_ref(ref)
            wanted[session_id].add(block)
        for session_id, blocks in wanted.items():
            session = self._session(session_id, reload=True)
            status = type(session).Status
            if session.status == status.Closed:
                continue  # committed by an earlier finalize
            if session.status != status.Normal:
                raise TableIOError(f"upload session {session_id} of {self.url} is {session.status.value}; "
                                   "its blocks cannot be committed")
            held = {int(b) for b in (session.blocks or [])}
            missing = sorted(blocks - held)
            if missing:
                raise TableIOError(f"upload session {session_id} of {self.url} lacks committed blocks {missing[:10]}")
            for stray in sorted(held - blocks):
                self.upload_block(session_id, stray, [])
            with translated_errors(self.url, f"committing upload session {session_id} of"):
                session.commit(sorted(held))


class _BlockStage(StageWriter):
    """A slice attempt's rows, buffered as validated Arrow tables, uploaded as one block on commit.

    Uploading at commit (rather than streaming while the slice is computed) keeps no tunnel
    connection idle for the length of a slow slice -- the server drops those.
    """

    sink: MaxComputeSink
    session_id: str
    block: int

    def __init__(self, sink: MaxComputeSink, slice_id: str, attempt: str):
        super().__init__(sink, slice_id, attempt)
        self._tables: List[pa.Table] = []

    def _write_table(self, table: pa.Table) -> None:
        self._tables.append(table)

    def commit(self) -> StagedRef:
        if self.closed:
            raise ValueError(f"stage of slice {self.slice_id} attempt {self.attempt} is closed")
        self.closed = True
        tables, self._tables = self._tables, []
        self.sink.upload_block(self.session_id, self.block, tables)
        return {"session": self.session_id, "block": self.block, "rows": self.rows}

    def abort(self) -> None:
        self.closed = True
        self._tables = []


def open_source(url: str, **options: Any) -> MaxComputeSource:
    return MaxComputeSource(url, **options)


def open_sink(url: str, **options: Any) -> MaxComputeSink:
    return MaxComputeSink(url, **options)


def source_from_description(description: Mapping[str, Any]) -> MaxComputeSource:
    return MaxComputeSource(description["url"], download_id=description.get("download_id"))


