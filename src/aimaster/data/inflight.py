"""Slices in flight: who holds what, stale keys cleared, lost slices requeued (or failed)."""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from aimaster.data import keys, records, speculation
from aimaster.data.records import AttemptRecord, ClaimRecord, FailureRecord, TodoRecord
from aimaster.data.store import Compare, Op, loads
from aimaster.errors import EtcdDataError

log = logging.getLogger(__name__)


class InFlight:
    """Holders, requeue and failure.

    A part of :class:`~aimaster.data.coordinator.Dataset` (see that module for the state machine): it
    works on the dataset's state, set up in ``Dataset.__init__``.
    """

    # ------------------------------------------------------------------ requeue / fail
    def _suspects(self) -> List[str]:
        """Slices that may have lost their holder: attempted, but neither claimed nor copied now.

        Every claim writes ``attempts/<s>`` and every commit deletes it, so the attempted-but-not-
        committed slices are about the ones in flight: scanning them (not todo/done, which may hold
        millions) keeps this cheap however large the dataset. A suspect still in todo, done or failed
        is filtered by the requeue transaction's own comparisons.
        """
        n = len(self.k.attempts)
        attempted = {rel[n:] for rel, _, _ in self.store.iter_prefix_chunks(self.k.attempts)}
        if not attempted:
            return []
        return sorted(attempted - set(self.in_flight()))

    def in_flight(self) -> Dict[str, List[str]]:
        """Planned slices held now (primary claim or copies) -> the workers holding them.

        A claim or copy key that is bound to no lease (written by hand) or holds no valid record
        would never go away by itself and keep its slice "held" forever: it is deleted here, so the
        slice counts as lost and is requeued.
        """
        held: Dict[str, List[str]] = {}
        for prefix in (self.k.claim, self.k.backup):
            for sid, record, _ in self._holds(prefix):
                held.setdefault(sid, []).append(record.worker)
        return held

    def attempts_held_here(self) -> Set[str]:
        """The attempts whose claim or copy key names this session's worker now: what a reading
        process still holds itself (not adopted yet). Read as :meth:`in_flight` reads them, so it
        costs what is in flight, not what this process has read so far."""
        me = self.session.worker_id
        return {record.attempt for prefix in (self.k.claim, self.k.backup)
                for _, record, _ in self._holds(prefix) if record.worker == me}

    def _holds(self, prefix: str) -> Iterable[Tuple[str, ClaimRecord, Any]]:
        """(slice id, record, metadata) of the valid claims (``claim/``) or copies (``backup/``)
        of planned slices; any other key there is stale and deleted (see :meth:`in_flight`)."""
        for rel, raw, meta in self.store.iter_prefix_chunks(prefix):
            sid = rel[len(prefix):].split("/", 1)[0]  # backup/<slice>/<worker>
            try:
                record: Optional[ClaimRecord] = ClaimRecord.from_json(raw, self.store.key(rel))
            except EtcdDataError:
                record = None
            if record is None or not meta.lease_id or self._planned(sid) is None:
                self._clear_stale(rel, meta, "bound to no lease" if record is not None and not meta.lease_id
                                  else "not a claim of a planned slice")
                continue
            yield sid, record, meta

    def _clear_stale(self, rel: str, meta: Any, why: str) -> None:
        key = self.store.key(rel)
        ok, _ = self.store.txn(f"clear stale {key}", [Compare.mod(rel) == meta.mod_revision], [Op.delete(rel)])
        if ok:
            log.warning("aimaster: deleted %s: %s", key, why)

    def _beats(self) -> Dict[str, Any]:
        """Every worker's last heartbeat (a beat is advisory: malformed ones read as None)."""
        return self._advisory(keys.BEATS)

    def _advisory(self, prefix: str) -> Dict[str, Any]:
        """Per-worker values under ``prefix`` (beats, stats), malformed ones as None, never an error:
        one hand-written value must not stop every worker of the job."""
        out: Dict[str, Any] = {}
        for rel, raw, _ in self.store.iter_prefix_chunks(prefix):
            try:
                out[rel[len(prefix):]] = loads(raw, self.store.key(rel))
            except EtcdDataError:
                out[rel[len(prefix):]] = None
        return out

    def _attempts(self, sid: str) -> Tuple[Optional[AttemptRecord], Any]:
        """The ``attempts/<s>`` record and its metadata (None, None: the slice is not in flight)."""
        return self._tolerant_get(self.k.attempts + sid, AttemptRecord)

    def _tolerant_get(self, rel: str, kind: Any) -> Tuple[Any, Any]:
        """A slice record (of the record class ``kind``) and its metadata; a malformed value reads as
        an empty record (the key's revision still guards the transactions that rewrite it), so a
        hand-written value cannot stop the worker or the master that meets it."""
        key = self.store.key(rel)
        raw, meta = self.store.get_raw(rel)
        if raw is None:
            return None, None
        try:
            return kind.from_json(raw, key), meta
        except EtcdDataError:
            self._ignore(rel, "its value is not a slice record")
            return kind(), meta

    def nothing_left_for_me(self) -> bool:
        """No slice can still come to this worker, though not all are committed yet.

        True when none is free and every slice still uncommitted is held by this worker (its
        process family included: a DataLoader reader and its consumer) or by a worker that is itself
        waiting for slices, or done, with that slice in hand: those slices are finished, only not
        committed yet (PAI's ``DataWriter`` commits a slice after asking for the next one), and
        would come back only if their holder died. Without this, workers holding their last slice
        would wait for each other forever. A slice a live peer is still processing, or one in no
        state at all (its holder just died; it is being requeued), keeps us waiting.
        """
        if self.store.count(self.k.todo):
            return False
        held = self.in_flight()  # claims before beats: a beat older than a claim cannot park it
        if not held:
            # Nothing in flight: either every slice is settled, which ``finished`` tells at the cost
            # of one worker's validation (not every waiting worker's, as reading them all here
            # would be), or a slice is in no state and is being requeued: wait for either.
            return False
        beats = self._beats()
        me = speculation.family(self.session.worker_id)
        # A slice that a live peer is still working on keeps us waiting, unless its own record
        # settles it (a claim key can outlive its slice's commit only if written by hand). Asked
        # first, one slice at a time, as it is cheap: otherwise every worker that runs out of free
        # slices would read and validate every commit record while the last ones are being committed.
        for sid, holders in held.items():
            ref = f"{self.ds_id}/{sid}"
            if not any(speculation.family(h) == me or records.beat_parks(beats.get(h), ref) for h in holders) \
                    and not self._settled(sid):
                return False
        done, failed = self.completion()
        settled = set(done) | set(failed)
        open_slices = [sid for sid in held if sid not in settled]
        return len(settled) + len(open_slices) >= self.num_slices

    def _settled(self, sid: str) -> bool:
        """Whether slice ``sid`` has a commit or failure record that validates, read for this slice
        alone, and judged as :meth:`completion` judges every record."""
        for kind, prefix in (("done", self.k.done), ("failed", self.k.failed)):
            raw, meta = self.store.get_raw(prefix + sid)
            if raw is not None and any(True for _ in self._believed(kind, [(prefix + sid, raw, meta)])):
                return True
        return False

    def requeue_lost(self) -> int:
        """Put back every slice that is in no state (its holder's lease expired). Returns how many."""
        n = 0
        for sid in self._suspects():
            if self.requeue(sid):
                n += 1
        if n:
            self._candidates = []
        return n

    def requeue(self, sid: str) -> bool:
        """Return a slice nobody holds to todo, or mark it failed after max_attempts."""
        attempts = self._attempts(sid)[0] or AttemptRecord()
        n, error = attempts.attempts, attempts.error
        absent = [Compare.version(p + sid) == 0 for p in (self.k.todo, self.k.claim, self.k.done, self.k.failed)]
        value: Any
        if n >= self.max_attempts:
            reason = error or "its worker died or lost its lease"
            value = FailureRecord(attempts=n, error=f"failed {n} attempts; last: {reason}", failed=time.time())
            target = self.k.failed
        else:
            value = TodoRecord(attempts=n, error=error)
            target = self.k.todo
        ok, _ = self.store.txn(f"requeue slice {sid}", absent + [Compare.prefix_version(self.k.backups_of(sid)) == 0],
                               [Op.put(target + sid, value.to_json())])
        if ok and target == self.k.failed:
            log.error("aimaster: slice %s of dataset %s failed: %s", sid, self.ds_id, value.error)
        return ok
