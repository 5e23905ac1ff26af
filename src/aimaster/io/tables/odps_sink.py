"""Exactly-once output to a MaxCompute table through shared tunnel upload sessions.

The tunnel's rules shape the design (see docs/tables.md for the sources):

* A session holds numbered blocks (ids 0..19999); uploading a block id again *replaces* it.
* Committing a session commits **every block it holds** -- the commit request names no blocks
  (pyodps' ``commit(blocks)`` only checks the list on the client side).
* A session is committed once, by anyone who knows its id, and **expires 24 h after its creation**:
  its blocks are then gone.
* Sessions are expensive and rate-limited (500 per table per 5 minutes, 32 concurrent commits), so
  a job shares a few of them rather than creating one per slice.

So the sessions are shared by every worker. A slice attempt's rows become one block whose id is
derived from the slice number and the attempt's *ordinal*, a number no other attempt of the slice
has (the SDK gives primaries and each speculative copy their own; see
:func:`aimaster.inference.attempt_names.attempt_ordinal`) -- concurrent attempts never share a block, and a
loser that empties its block only ever touches its own::

    n = slice_index * attempts_per_slice + ordinal      (ordinal < attempts_per_slice)
    session = sessions[n // 20000], block = n % 20000

The attempt string passed to :meth:`MaxComputeSink.open_stage` is ``"<ordinal>"`` or
``"<ordinal>.<anything>"``. ``attempts_per_slice`` (default 8) is the block budget per slice; an
ordinal beyond it is a clear TableIOError, never a silent collision.

**Generations.** Because sessions expire, one set of sessions cannot hold a job that runs longer
than their lifetime (``AIMASTER_ODPS_SESSION_LIFETIME``, default 24 h). The sessions in
:meth:`describe` are generation 0; the SDK rotates to fresh generations and commits old ones
mid-job (:mod:`aimaster.io.tables.odps_generations`). This module only needs a stage to say which
generation it writes to (``open_stage(..., generation={"g", "sessions", "t"})``) and follows the
age rules of :class:`SessionClock`: a block is never uploaded into a generation older than
``stop_after`` -- the stage raises :class:`~aimaster.io.tables.base.StageLost` and the attempt is
redone in a newer one -- and the staged ref carries the generation's creation time so the committer
can apply the same rule.

Because a commit takes whatever blocks exist, a losing attempt's block is *emptied* (overwritten
with zero rows) by ``discard``, and sealing a session (:meth:`MaxComputeSink.seal`, also what
``finalize`` does for every session holding committed blocks) empties every block that is not a
committed one before committing. The committed table therefore holds exactly the committed
attempts' rows, in the order of the sessions' block lists.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple

import pyarrow as pa

from aimaster.data.outputs import StagedRef, register_sink
from aimaster.errors import ConfigError, InputNotFoundError, TableIOError
from aimaster.io.tables.base import StageLost, StageWriter, TableSink
from aimaster.io.tables.odps_arrow import arrow_batches, write_arrow_block
from aimaster.io.tables.odps_connect import (
    check_partition,
    columns_of,
    is_transient,
    session_lifetime,
    translated_errors,
    tunnel_for,
)
from aimaster.io.tables.types import Column
from aimaster.io.tables.urls import parse_odps_url

logger = logging.getLogger(__name__)

MAX_BLOCKS = 20000
DEFAULT_ATTEMPTS_PER_SLICE = 8
_UPLOAD_RETRIES = 3
_SEAL_TRIES = 5


@dataclass(frozen=True)
class SessionClock:
    """The ages (seconds since a generation's sessions were created) at which its use changes.

    * ``rotate_after`` (1/4 of the lifetime): no new stage begins in it; a newer generation is made.
    * ``stop_after`` (1/2): no block is uploaded into it and no ref into it is committed; an
      attempt that gets there is redone in a newer generation.
    * ``seal_after`` (5/8): it is committed (its committed blocks become rows), well before it
      expires. The gap to ``stop_after`` covers uploads and commits in flight and clock skew.
    """

    lifetime: float

    @property
    def rotate_after(self) -> float:
        return self.lifetime / 4

    @property
    def stop_after(self) -> float:
        return self.lifetime / 2

    @property
    def seal_after(self) -> float:
        return self.lifetime * 5 / 8

    @classmethod
    def from_env(cls) -> SessionClock:
        return cls(session_lifetime())


def _slice_index(slice_id: str) -> int:
    match = re.search(r"(\d+)$", slice_id)
    if match is None:
        raise TableIOError(f"MaxCompute output needs slice ids ending in the slice number; got {slice_id!r}")
    return int(match.group(1))


def attempt_number(attempt: Any) -> int:
    """The ordinal an attempt string starts with (``"5"`` or ``"5.w0.1a2b"`` -> 5)."""
    head = str(attempt).split(".", 1)[0]
    if not head.isdigit():
        raise TableIOError(f"MaxCompute output needs the attempt's ordinal within its slice (0, 1, ...) "
                           f"first in its attempt name; got {attempt!r}")
    return int(head)


def _not_normal(session) -> bool:
    return session.status != type(session).Status.Normal


def _is_status_conflict(e: BaseException) -> bool:
    """The tunnel refused because of the session's state (committed, expired)."""
    text = str(e)
    return "StatusConflict" in text or "expired" in text.lower() or getattr(e, "code", None) == "StatusConflict"


@register_sink
class MaxComputeSink(TableSink):
    """An existing MaxCompute table (partition) written through shared tunnel upload sessions.

    Build it with :meth:`open` (creates the sessions, or re-attaches to ``session_ids``) or from
    its ``describe()`` dict; :func:`open_table_sink` gives one whose sessions are created on first
    use. ``copies_per_attempt`` says how many speculative copies of an attempt the ordinals leave
    room for (``slots_per_attempt = 1 + copies``); ``created`` is when the generation-0 sessions were
    created (``describe()`` records it so every process ages them alike).
    """

    kind = "odps"

    def __init__(self, url: str, sessions: Optional[List[str]] = None, slice_count: Optional[int] = None,
                 attempts_per_slice: int = DEFAULT_ATTEMPTS_PER_SLICE, copies_per_attempt: Optional[int] = None,
                 created: Optional[float] = None):
        self.name = parse_odps_url(url)
        self.url = self.name.url
        if attempts_per_slice < 1 or attempts_per_slice > MAX_BLOCKS:
            raise ConfigError(f"attempts_per_slice must be in 1..{MAX_BLOCKS}, got {attempts_per_slice}")
        if copies_per_attempt is not None and copies_per_attempt < 0:
            raise ConfigError(f"copies_per_attempt must be >= 0, got {copies_per_attempt}")
        self.attempts_per_slice = int(attempts_per_slice)
        self.copies_per_attempt = None if copies_per_attempt is None else int(copies_per_attempt)
        self.slice_count = None if slice_count is None else int(slice_count)
        self.created = None if created is None else float(created)
        self.clock = SessionClock.from_env()
        self._session_ids: Optional[List[str]] = list(sessions) if sessions else None
        # Set by the SDK's table client: the upload generation a stage opened without one goes to
        # (the torch/TF bindings open stages that way). Not part of the description.
        self.generation_source: Optional[Callable[[], Dict[str, Any]]] = None
        self._sessions: Dict[str, Any] = {}
        self._schema: Optional[List[Column]] = None
        self._lock = threading.RLock()

    @classmethod
    def open(cls, url: str, session_ids: Optional[List[str]] = None, slice_count: Optional[int] = None,
             attempts_per_slice: int = DEFAULT_ATTEMPTS_PER_SLICE, **options: Any) -> MaxComputeSink:
        """Create the upload sessions now (``session_ids=None``) or re-attach to existing ones."""
        sink = cls(url, session_ids, slice_count, attempts_per_slice, **options)
        for sid in sink.session_ids:
            sink._session(sid)
        return sink

    # --- sessions ---------------------------------------------------------------------------------
    @property
    def slots_per_attempt(self) -> int:
        """Ordinals per attempt: the primary's and one per speculative copy (legacy layout: 2)."""
        return 1 + (1 if self.copies_per_attempt is None else self.copies_per_attempt)

    @property
    def sessions_per_generation(self) -> int:
        if not self.slice_count:
            return 1
        return max(1, math.ceil(self.slice_count * self.attempts_per_slice / MAX_BLOCKS))

    @property
    def session_ids(self) -> List[str]:
        """Generation 0: the sessions of :meth:`describe` (created on first use)."""
        with self._lock:
            if self._session_ids is None:
                self._session_ids, created = self.create_sessions(self.sessions_per_generation)
                if self.created is None:
                    self.created = created
            return list(self._session_ids)

    def create_sessions(self, n: int) -> Tuple[List[str], float]:
        """``n`` new upload sessions, and a time no later than their creation on the server."""
        created = time.time()
        return [self._create_session() for _ in range(n)], created

    def _create_session(self) -> str:
        spec = self.name.partition_spec or None
        tunnel = tunnel_for(self.name)
        try:
            with translated_errors(self.url, "opening an upload session on"):
                session = tunnel.create_upload_session(self.name.table, partition_spec=spec,
                                                       create_partition=bool(spec))
        except (InputNotFoundError, TableIOError):
            check_partition(self.name)
            raise
        with self._lock:
            self._sessions[session.id] = session
        return session.id

    def _session(self, session_id: str, reload: bool = False):
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            spec = self.name.partition_spec or None
            with translated_errors(self.url, f"attaching upload session {session_id} of"):
                session = tunnel_for(self.name).create_upload_session(self.name.table, partition_spec=spec,
                                                                   upload_id=session_id)
            with self._lock:
                self._sessions[session_id] = session
        elif reload:
            with translated_errors(self.url, f"reloading upload session {session_id} of"):
                session.reload()
        return session

    def block_list(self, session_id: str) -> Optional[List[int]]:
        """The blocks an open session holds, in its list's order; None if it is not open (any more)."""
        try:
            session = self._session(session_id, reload=True)
        except TableIOError:
            return None
        return None if _not_normal(session) else [int(b) for b in (session.blocks or [])]

    def is_closed(self, session_id: str) -> bool:
        """Whether a session no longer takes blocks (committed, expired, ...); False when unknown."""
        try:
            return _not_normal(self._session(session_id, reload=True))
        except TableIOError:
            return False

    @property
    def schema(self) -> List[Column]:
        if self._schema is None:
            self._schema = columns_of(self._session(self.session_ids[0]).schema)
        return self._schema

    def describe(self) -> Dict[str, Any]:
        description = {"kind": self.kind, "url": self.url, "sessions": self.session_ids,
                       "slice_count": self.slice_count, "attempts_per_slice": self.attempts_per_slice}
        # Added by later versions; left out when absent so an older job's description stays equal.
        if self.copies_per_attempt is not None:
            description["copies_per_attempt"] = self.copies_per_attempt
        if self.created is not None:
            description["created"] = self.created
        return description

    def generation0(self) -> Dict[str, Any]:
        """The sink's own sessions as a generation nobody rotates or seals (no ``t``: no age rule;
        a writer owning its sessions, like common_io's TableWriter, may use them until they expire)."""
        return {"g": 0, "sessions": self.session_ids, "t": None}

    # --- staging ----------------------------------------------------------------------------------
    def block_of(self, slice_id: str, attempt: Any, sessions: Optional[List[str]] = None) -> Tuple[str, int]:
        """The (upload session id, block id) of a slice attempt; TableIOError when out of range."""
        index, number = _slice_index(slice_id), attempt_number(attempt)
        if number >= self.attempts_per_slice:
            # Configuration, not I/O: the job's output was opened for fewer attempts (or copies per
            # attempt) than this run makes; a relaunch would fail the same way.
            raise ConfigError(
                f"slice {slice_id} needs block ordinal {number} of {self.url}, beyond its attempts_per_slice="
                f"{self.attempts_per_slice} (block slots per slice, {self.slots_per_attempt} per attempt), fixed "
                "when the job first opened its output: run it with the --max-slice-attempts and "
                "--max-slice-copies it started with, or as a new --job-id")
        n = index * self.attempts_per_slice + number
        ids = self.session_ids if sessions is None else list(sessions)
        if n // MAX_BLOCKS >= len(ids):
            raise TableIOError(f"slice {slice_id} of {self.url} needs block {n}, beyond the {len(ids)} upload "
                               f"session(s) x {MAX_BLOCKS} blocks of this sink; create it with slice_count=")
        return ids[n // MAX_BLOCKS], n % MAX_BLOCKS

    def open_stage(self, slice_id: str, attempt: str, generation: Optional[Mapping[str, Any]] = None,
                   **options: Any) -> StageWriter:
        if not generation and self.generation_source is not None:
            generation = self.generation_source()
        gen = dict(generation) if generation else self.generation0()
        stage = _BlockStage(self, slice_id, attempt, gen)
        stage.session_id, stage.block = self.block_of(stage.slice_id, stage.attempt, gen["sessions"])
        return stage

    def too_old(self, created: Optional[float], limit: float) -> bool:
        return created is not None and time.time() - float(created) >= limit

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
                    if attempt == _UPLOAD_RETRIES - 1 or not is_transient(e) or _is_status_conflict(e):
                        raise
            logger.warning("retrying upload of block %d to %s", block, self.url)
            time.sleep(delay)
            delay *= 2

    @staticmethod
    def _write_block(session, block: int, tables: List[pa.Table]) -> None:
        batches = arrow_batches(session, tables)  # Arrow where it writes the same values (odps_arrow)
        if batches is not None:
            write_arrow_block(session, block, batches)
            return
        writer = session.open_record_writer(block)
        try:
            for table in tables:
                columns = [col.to_pylist() for col in table.columns]
                for values in zip(*columns):
                    writer.write(session.new_record(list(values)))
        finally:
            writer.close()

    def _check_ref(self, staged: StagedRef) -> Tuple[str, int]:
        session, block = staged.get("session"), staged.get("block")
        if not isinstance(session, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", session) \
                or not isinstance(block, int) or isinstance(block, bool) or not 0 <= block < MAX_BLOCKS:
            raise TableIOError(f"staged ref {dict(staged)!r} names no block of an upload session of {self.url}")
        return session, block

    # --- publishing -------------------------------------------------------------------------------
    def publish(self, slice_id: str, staged: StagedRef) -> None:
        """Nothing to do per slice: committed blocks become rows when their session is sealed."""
        self._check_ref(staged)

    def discard(self, staged: StagedRef) -> None:
        """Empty the block: a session's commit takes every block it holds, losers' included."""
        session_id, block = self._check_ref(staged)
        try:
            session = self._session(session_id, reload=True)
            if _not_normal(session):
                return  # committed or expired: nothing to take back
            self.upload_block(session_id, block, [])
        except TableIOError as e:
            if not (_is_status_conflict(e) or self.is_closed(session_id)):
                raise  # else it closed meanwhile: the commit that closed it emptied our block first

    def seal(self, session_id: str, keep: Set[int]) -> Set[int]:
        """Commit ``session_id`` holding exactly blocks ``keep``; returns those of ``keep`` it lacks.

        Every other block it holds is emptied first. A session committed already is left alone (an
        earlier seal did it); one that expired lost everything, so all of ``keep`` is returned.
        Blocks uploaded while this runs (a late loser) make pyodps' block-list check fail: they are
        emptied in turn and the commit retried.
        """
        from odps.tunnel.errors import TunnelError

        keep = {int(b) for b in keep}
        for _ in range(_SEAL_TRIES):
            try:
                session = self._session(session_id, reload=True)
            except TableIOError:
                if keep:
                    raise
                return set()  # nothing of ours in it: whatever happened to it does not matter
            status = type(session).Status
            if session.status == status.Closed:
                return set()
            if session.status == status.Expired:
                return keep
            if session.status != status.Normal:
                raise TableIOError(f"upload session {session_id} of {self.url} is {session.status.value}; "
                                   "its blocks cannot be committed")
            held = [int(b) for b in (session.blocks or [])]
            for stray in sorted(set(held) - keep):
                self.upload_block(session_id, stray, [])
            if not set(held) & keep:
                return keep - set(held)  # nothing to commit: leave it to expire
            try:
                with translated_errors(self.url, f"committing upload session {session_id} of"):
                    try:
                        session.commit(held)
                    except TunnelError as e:
                        if "not match" not in str(e) and "not exists" not in str(e):
                            raise
                        logger.info("upload session %s of %s changed while being committed (%s); again",
                                    session_id, self.url, e)
                        continue
                return keep - set(held)
            except TableIOError as e:
                if not _is_status_conflict(e):
                    raise
                logger.info("upload session %s of %s could not be committed (%s); looking again", session_id,
                            self.url, e)
        raise TableIOError(f"upload session {session_id} of {self.url} kept changing; cannot commit it")

    def finalize(self, committed: Iterable[Tuple[str, StagedRef]]) -> None:
        """Seal every session holding committed blocks; a committed block that is not there fails it.

        A redone finalize (after a crash) skips sessions committed already. Sessions holding no
        committed block are left to expire: nothing of them is ever visible.
        """
        wanted: Dict[str, Dict[int, str]] = {}
        for slice_id, ref in committed:
            session_id, block = self._check_ref(ref)
            wanted.setdefault(session_id, {})[block] = slice_id
        lost: List[str] = []
        for session_id in sorted(wanted):
            missing = self.seal(session_id, set(wanted[session_id]))
            lost += [wanted[session_id][b] for b in sorted(missing)]
        if lost:
            raise TableIOError(
                f"upload sessions of {self.url} lack committed blocks of {len(lost)} slice(s): "
                f"{', '.join(sorted(lost)[:20])} (a session expired before it was committed, e.g. while "
                "the job was down); those slices must be redone")


class _BlockStage(StageWriter):
    """A slice attempt's rows, buffered as validated Arrow tables, uploaded as one block on commit.

    Uploading at commit (rather than streaming while the slice is computed) keeps no tunnel
    connection idle for the length of a slow slice -- the server drops those.
    """

    sink: MaxComputeSink
    session_id: str
    block: int

    def __init__(self, sink: MaxComputeSink, slice_id: str, attempt: str, generation: Dict[str, Any]):
        super().__init__(sink, slice_id, attempt)
        self.generation = generation
        self._tables: List[pa.Table] = []

    def _write_table(self, table: pa.Table) -> None:
        self._tables.append(table)

    def commit(self) -> StagedRef:
        if self.closed:
            raise ValueError(f"stage of slice {self.slice_id} attempt {self.attempt} is closed")
        self.closed = True
        tables, self._tables = self._tables, []
        created, g = self.generation.get("t"), self.generation.get("g", 0)
        lost = (f"slice {self.slice_id} attempt {self.attempt} cannot be staged in upload session "
                f"{self.session_id} of {self.sink.url}")
        if self.sink.too_old(created, self.sink.clock.stop_after):
            raise StageLost(f"{lost}: its generation {g} is too old to take blocks (it is committed soon)")
        try:
            self.sink.upload_block(self.session_id, self.block, tables)
        except TableIOError as e:
            if self.sink.is_closed(self.session_id):
                raise StageLost(f"{lost}: the session was committed or expired ({e})") from None
            raise
        ref: StagedRef = {"session": self.session_id, "block": self.block, "rows": self.rows, "g": g}
        if created is not None:
            ref["t"] = created
        return ref

    def abort(self) -> None:
        self.closed = True
        self._tables = []


def open_sink(url: str, **options: Any) -> MaxComputeSink:
    return MaxComputeSink(url, **options)
