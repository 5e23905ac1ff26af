"""MaxCompute tables through pyodps' table tunnel: the backend module, and reading.

Reading: one download session per table (partition); its record count plans the slices, and each
row range is one ``open_arrow_reader(start, count, columns=...)`` -- the tunnel sends only those
rows and columns. A session id can be handed to other processes (``describe()``), which re-attach
instead of creating sessions of their own. Sessions expire (``AIMASTER_ODPS_SESSION_LIFETIME``,
24 h): a process reuses its session for half of that, re-attaching to an expired one creates a new
one, and a read that finds its session expired continues on a new session of the same size.

Writing is exactly-once on top of the tunnel's upload sessions: see :mod:`aimaster.io.tables.odps_sink`.
Credentials, the pyodps entry and the translation of its errors, which both sides use, are in
:mod:`aimaster.io.tables.odps_connect`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import pyarrow as pa

from aimaster.errors import InputNotFoundError, TableIOError
from aimaster.io.tables.base import TableSource
from aimaster.io.tables.odps_connect import (  # noqa: F401 - CONFIG_ENV, load_credentials: public here too
    CONFIG_ENV,
    Credentials,
    check_partition,
    clear_entries,
    columns_of,
    load_credentials,
    session_lifetime,
    translated_errors,
    tunnel_for,
)
from aimaster.io.tables.urls import parse_odps_url

logger = logging.getLogger(__name__)


_DOWNLOADS: Dict[Tuple[Credentials, str], Tuple[float, Any]] = {}
_DOWNLOADS_LOCK = threading.Lock()


def clear_caches() -> None:
    """Forget cached pyodps entries and download sessions (tests; credential rotation)."""
    clear_entries()
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
        self.schema = columns_of(session.schema)

    def _open_session(self, download_id: Optional[str]):
        tunnel = tunnel_for(self.name)
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
                check_partition(self.name)
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




# This is the "odps" backend module (open_source, open_sink, source_from_description): the writing
# side lives in odps_sink, which imports nothing from here; importing it registers the "odps" sink
# kind and keeps ``aimaster.io.tables.odps.MaxComputeSink`` working.
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
