"""Generations of a job's shared MaxCompute upload sessions: rotated, and committed, before they expire.

A tunnel upload session dies 24 h after its creation with every block it holds, and its blocks only
become rows when it is committed. A job that shares one set of sessions from its first writer to
its end therefore cannot run longer than a day, nor be resumed after a day. So the SDK's table
client uses *generations* of sessions, agreed through the job's etcd (this is the one part of the
table layer that coordinates; the client hands it the dataset):

``ds/<ds>/uploads/<g>``  ``{"sessions": [ids], "t": created, "state": "open"|"sealed"}``

Generation 0 is the sink's own (:meth:`MaxComputeSink.describe`). With ``L`` the session lifetime
and the ages of :class:`~aimaster.io.tables.odps_sink.SessionClock`:

* a slice begins in the newest generation; once that is ``rotate_after`` (L/4) old, one process
  (holding ``ds/<ds>/uploads-new``) creates the next one and every writer moves to it;
* nothing is uploaded into, and no ref committed into, a generation ``stop_after`` (L/2) old: such
  an attempt is given back and redone in a newer generation (the stage raises StageLost, the
  client checks refs before committing);
* a generation ``seal_after`` (5L/8) old is *sealed* by whichever client looks first (holding
  ``ds/<ds>/uploads-seal/<g>``): its committed blocks are read from the commit records, every other
  block is emptied, and each session is committed -- mid-job, long before it expires;
* a generation whose sessions expired before anyone sealed them (the job was down for a day) lost
  the blocks of the slices committed into it: those commits are taken back (``done`` -> ``todo``)
  and the slices redone, so a resumed job still writes every row exactly once.

Sealing relies on nobody uploading into or committing into a generation after ``stop_after``; both
are checked against the local clock just before they happen, so a process paused for more than the
``seal_after - stop_after`` margin (L/8: three hours) exactly between that check and the act could
still land a block or a commit into a sealed generation. Closing that completely needs the commit
transaction itself to compare a per-generation key (see docs/tables.md).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional, Tuple

from aimaster.data.records import TodoRecord
from aimaster.data.store import Compare, Op, loads
from aimaster.io.tables.odps_sink import MAX_BLOCKS, MaxComputeSink, SessionClock

logger = logging.getLogger(__name__)

Commit = Tuple[str, int, Dict[str, Any]]  # (slice id, mod revision of its commit record, the record)

_WAIT_FOR_NEW_S = 60.0


class UploadGenerations:
    """One process's view of a dataset's upload generations (see the module docstring)."""

    def __init__(self, dataset: Any, sink: MaxComputeSink, clock: Optional[SessionClock] = None):
        self.dataset = dataset
        self.store = dataset.store
        self.sink = sink
        self.clock = clock or sink.clock
        self.prefix = dataset.k.base + "uploads/"
        self._gens: Dict[int, Dict[str, Any]] = {}
        self._last_look = 0.0
        self.reopened = 0  # slices whose commit this process took back (their rows were lost)

    # --- reading -----------------------------------------------------------------------------------
    def _key(self, g: int) -> str:
        return f"{self.prefix}{g:06d}"

    def load(self) -> Dict[int, Dict[str, Any]]:
        gens: Dict[int, Dict[str, Any]] = {}
        for rel, value, _ in self.store.range(self.prefix):
            try:
                g = int(rel[len(self.prefix):])
            except ValueError:
                continue
            if isinstance(value, dict) and isinstance(value.get("sessions"), list):
                gens[g] = value
        if 0 not in gens:
            gens[0] = self._register_first()
        self._gens = gens
        return gens

    def _register_first(self) -> Dict[str, Any]:
        """Generation 0 is the sink's sessions, aged from when they were created (a sink described
        before that was recorded: from the plan's creation, which is earlier -- erring old)."""
        created = self.sink.created
        if created is None:
            created = float((self.dataset.plan or {}).get("created") or time.time())
        record = {"sessions": self.sink.session_ids, "t": created, "state": "open"}
        key = self._key(0)
        self.store.txn("register upload generation 0", [Compare.version(key) == 0], [Op.put(key, record)])
        return self.store.get_value(self._key(0)) or record

    def age(self, record: Dict[str, Any]) -> float:
        return time.time() - float(record["t"])

    # --- staging -----------------------------------------------------------------------------------
    def current(self) -> Dict[str, Any]:
        """The generation a slice beginning now stages into: ``{"g", "sessions", "t"}``.

        Every stage begins here, so this is also where old generations get sealed (rate-limited).
        """
        self.maintain()
        if not self._gens:
            self.load()
        g = max(self._gens)
        if self.age(self._gens[g]) >= self.clock.rotate_after:
            g = self._rotate()
        record = self._gens[g]
        return {"g": g, "sessions": list(record["sessions"]), "t": float(record["t"])}

    def _rotate(self) -> int:
        """Move to a generation younger than ``rotate_after``, creating it if nobody has."""
        deadline = time.monotonic() + _WAIT_FOR_NEW_S
        while True:
            gens = self.load()
            g = max(gens)
            if self.age(gens[g]) < self.clock.rotate_after:
                return g
            if self._create(g + 1):
                continue
            # Another process is creating it. The old one still takes stages for a while (until
            # stop_after); past that, wait for the new one rather than stage into a dead end.
            if self.age(gens[g]) < self.clock.stop_after - self.clock.rotate_after or time.monotonic() > deadline:
                return g
            time.sleep(0.2)

    def _create(self, g: int) -> bool:
        st = self.store
        lock = self.prefix[:-1] + "-new"
        key = self._key(g)
        session = self.dataset.session
        ok, _ = session.leased(lambda lease: st.txn(
            f"take the creation of upload generation {g}", [Compare.version(lock) == 0, Compare.version(key) == 0],
            [Op.put(lock, {"w": session.worker_id, "g": g}, lease=lease)]))
        if not ok:
            return False
        try:
            ids, created = self.sink.create_sessions(self.sink.sessions_per_generation)
            st.txn(f"record upload generation {g}", [Compare.version(key) == 0],
                   [Op.put(key, {"sessions": ids, "t": created, "state": "open"})])
            logger.info("aimaster: upload sessions of %s rotated to generation %d", self.sink.url, g)
        finally:
            st.txn("release the upload generation lock", [], [Op.delete(lock)])
        return True

    def committable(self, ref: Dict[str, Any]) -> bool:
        """Whether a staged ref may still be committed (its generation younger than stop_after)."""
        created = ref.get("t")
        return not isinstance(created, (int, float)) or time.time() - created < self.clock.stop_after

    # --- sealing and recovery ----------------------------------------------------------------------
    def maintain(self, force: bool = False) -> int:
        """Seal the generations old enough, take back commits whose rows expired; rate-limited.

        Returns the number of slices taken back (to be redone).
        """
        interval = min(30.0, self.clock.lifetime / 16)
        if not force and time.monotonic() - self._last_look < interval:
            return 0
        self._last_look = time.monotonic()
        if self.store.get_value(self.dataset.k.finalized) is not None:
            return 0
        before = self.reopened
        for g, record in sorted(self.load().items()):
            if record.get("state") == "open" and self.age(record) >= self.clock.seal_after:
                self._seal(g, record)
        return self.reopened - before

    def _seal(self, g: int, record: Dict[str, Any]) -> None:
        st = self.store
        lock = f"{self.prefix[:-1]}-seal/{g:06d}"
        session = self.dataset.session
        ok, _ = session.leased(lambda lease: st.txn(
            f"take the sealing of upload generation {g}", [Compare.version(lock) == 0],
            [Op.put(lock, {"w": session.worker_id}, lease=lease)]))
        if not ok:
            return
        try:
            lost: List[Tuple[str, int, Dict[str, Any]]] = []
            scanned = None  # every commit record, read only if some session no longer lists its blocks
            for k, sid in enumerate(record["sessions"]):
                held = self.sink.block_list(sid)
                if held is None:
                    if scanned is None:
                        scanned = self._scan_commits(set(record["sessions"]))
                    blocks = scanned.get(sid, {})
                else:
                    blocks = self._commits_of_blocks(k, sid, held)
                missing = self.sink.seal(sid, set(blocks))
                lost += [blocks[b] for b in sorted(missing)]
            for slice_id, revision, done in lost:
                self._reopen(slice_id, revision, done, f"its rows were lost: upload session generation {g} of "
                                                       f"{self.sink.url} expired before it was committed")
            st.put(self._key(g), dict(record, state="sealed", sealed=time.time(), lost=len(lost)))
            logger.info("aimaster: upload generation %d of %s sealed (%d slices to redo)", g, self.sink.url,
                        len(lost))
        finally:
            st.txn("release the upload generation seal", [], [Op.delete(lock)])

    def _commits_of_blocks(self, k: int, session: str, blocks: List[int]) -> Dict[int, Commit]:
        """Of the blocks a session holds, those a commit record names: block -> (slice, revision,
        record). A block's slice follows from the block scheme (session ``k`` of its generation), so
        only those slices' records are read -- the work done in the generation, not the whole job."""
        out: Dict[int, Commit] = {}
        per_slice = self.sink.attempts_per_slice
        for block in blocks:
            index = (k * MAX_BLOCKS + block) // per_slice
            if index >= self.dataset.num_slices:
                continue
            slice_id = self.dataset.slice_id(index)
            record, meta = self.store.get(self.dataset.k.done + slice_id)
            for ref in _refs(record):
                if ref.get("session") == session and ref.get("block") == block:
                    out[block] = (slice_id, meta.mod_revision, record)
        return out

    def _scan_commits(self, sessions: set) -> Dict[str, Dict[int, Commit]]:
        """session -> block -> commit, for every commit record naming one of ``sessions``."""
        out: Dict[str, Dict[int, Commit]] = {}
        prefix = self.dataset.k.done
        for rel, raw, meta in self.store.iter_prefix_chunks(prefix):
            try:
                record = loads(raw, self.store.key(rel))
            except Exception:  # noqa: BLE001 - not ours to judge here; the coordinator refuses bad records
                continue
            for ref in _refs(record):
                if ref.get("session") in sessions and isinstance(ref.get("block"), int):
                    out.setdefault(ref["session"], {})[ref["block"]] = (rel[len(prefix):], meta.mod_revision, record)
        return out

    def _reopen(self, slice_id: str, revision: int, record: Dict[str, Any], reason: str) -> None:
        """Take a commit back: its slice is free again (its attempt count goes on, so the redo's
        block ordinal is new)."""
        k = self.dataset.k
        done = k.done + slice_id
        attempts = record.get("a") if isinstance(record.get("a"), int) else 1
        # ``retaken`` changes with every take-back: a process caching which slices are committed
        # (the coordinator reads commit records incrementally) can see that one went away.
        ok, _ = self.store.txn(f"take back the commit of slice {slice_id}", [Compare.mod(done) == revision],
                               [Op.delete(done), Op.put(k.todo + slice_id, TodoRecord(attempts, reason).to_json()),
                                Op.put(k.retaken, {"slice": slice_id, "t": time.time()})])
        if ok:
            self.reopened += 1
            logger.warning("aimaster: slice %s is redone: %s", slice_id, reason)


def _refs(record: Any) -> List[Dict[str, Any]]:
    outputs = record.get("out") if isinstance(record, dict) else None
    return [o["ref"] for o in outputs if isinstance(o, dict) and isinstance(o.get("ref"), dict)] \
        if isinstance(outputs, list) else []
