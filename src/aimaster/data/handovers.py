"""The transitions that hand a slice, or a piece of one, from one holder to another.

Part of the slice state machine (:class:`aimaster.data.coordinator.Dataset` is composed of these
parts); each method is one etcd transaction whose comparisons make it exclusive:

* *give back uncounted*: a claim that never failed (claimed ahead and never started, or given back
  on SIGTERM), or a slice ``aimaster retry`` runs again, goes back to ``todo`` without the attempt
  being counted against ``--max-slice-attempts``;
* *adopt*: a consuming process re-binds a reading process's claim to its own lease
  (:mod:`aimaster.frameworks.claims`);
* *copy slot*: a speculative copy writing a table takes one of its attempt's block ordinals
  (first come, for good).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional, Tuple, Union

from aimaster.data.claim import Claim
from aimaster.data.records import ClaimRecord, FailureRecord, SlotRecord, TodoRecord
from aimaster.data.store import Compare, Op, loads
from aimaster.errors import EtcdDataError

log = logging.getLogger(__name__)


class Handovers:
    """The hand-over transitions.

    A part of :class:`~aimaster.data.coordinator.Dataset` (see that module for the state machine): it
    works on the dataset's state, set up in ``Dataset.__init__``.
    """

    def give_back_uncounted(self, sid: str, held_rel: str, meta: Any,
                            record: Union[ClaimRecord, FailureRecord]) -> bool:
        """``held_rel`` gone and slice ``sid`` back in todo, the attempt not counted: one transaction.

        ``held_rel`` is the key holding the slice now: its claim (``record`` the :class:`ClaimRecord`
        there), or its ``failed/`` record (``record`` a :class:`FailureRecord`: ``aimaster retry``
        gives the slice a fresh budget and the dataset is no longer finalized). ``meta`` is that key's
        metadata as read, or its modification revision (compared); None compares its value with ``record``.

        False, with nothing changed, when the slice moved meanwhile: committed, already free, a copy
        of it still running, or its records rewritten.
        """
        attempts, att_meta = self._attempts(sid)
        retry = isinstance(record, FailureRecord)
        if retry:
            todo = TodoRecord(attempts=0, error=record.error, retried=time.time())
        else:
            n = attempts.attempts if attempts is not None and attempts.attempts else (record.attempt_no or 1)
            todo = TodoRecord(attempts=max(0, n - 1), error=attempts.error if attempts is not None else None)
        k = self.k
        revision = meta if isinstance(meta, int) or meta is None else meta.mod_revision
        compare = [Compare.mod(held_rel) == revision if revision is not None
                   else Compare.value(held_rel) == record.to_json(),
                   Compare.version(k.done + sid) == 0, Compare.version(k.todo + sid) == 0,
                   Compare.prefix_version(k.backup + sid + "/") == 0]
        if held_rel != k.claim + sid:
            compare.append(Compare.version(k.claim + sid) == 0)
        if att_meta is not None:
            compare.append(Compare.mod(k.attempts + sid) == att_meta.mod_revision)
        success = [Op.delete(held_rel), Op.delete(k.attempts + sid), Op.put(k.todo + sid, todo.to_json())]
        if retry:
            success.append(Op.delete(k.finalized))
        ok, _ = self.store.txn(f"{'retry' if retry else 'give back'} slice {sid}", compare, success)
        if ok:
            self._candidates = []
        return bool(ok)

    def adopt(self, slice_id: str, attempt: str, attempt_no: int) -> Tuple[Claim, bool]:
        """This process's claim on a slice a reading process claimed; True if the claim key is now
        bound to our lease (see :func:`aimaster.frameworks.claims.adopt`).

        The key is re-put only if it still holds the reader's attempt (compared by revision), so an
        attempt that already lost its claim never steals the newer one: it comes back ``lost`` and can
        never commit. Where the adoption itself failed (etcd away), the claim stays the reader's and
        commits only while the reader's claim lives. A speculative copy the reader started moves from
        the reader's copy key to ours (a copy commits only through its own worker's key).
        """
        session = self.session
        claim = Claim(dataset=self, slice_id=slice_id, index=self.slice_index(slice_id), attempt=attempt,
                      attempt_no=attempt_no, lease_generation=session.lease_generation)
        rel = self.k.claim + slice_id
        theirs, meta = self._claim_record(rel)
        if theirs is None or theirs.attempt != attempt:
            copy_rel = self.k.backup_of(slice_id, attempt.rpartition(".")[0])
            copy, copy_meta = self._claim_record(copy_rel)
            if copy is not None and copy.attempt == attempt:
                return self._adopt_copy(claim, copy_rel, copy, copy_meta)
            log.warning("aimaster: slice %s reached the consumer after its claim was lost; its output will not "
                        "be committed", slice_id)
            claim.lost = True  # matches no claim key: the commit fails, the output is dropped
            return claim, False
        ours = ClaimRecord(worker=session.worker_id, attempt=attempt, attempt_no=theirs.attempt_no,
                           started=theirs.started, of=theirs.of, via=theirs.worker)
        try:
            ok, _ = session.leased(lambda lease: self.store.txn(
                f"adopt slice {slice_id}", [Compare.mod(rel) == meta.mod_revision],
                [Op.put(rel, ours.to_json(), lease=lease)]))
        except Exception as e:  # noqa: BLE001 - adoption only shortens the at-least-once window
            log.warning("aimaster: could not adopt the claim of slice %s (%s); it stays with its reader",
                        slice_id, e)
            ok = False
        claim.record = ours if ok else theirs  # release() deletes the claim key only while it holds it
        if ok:
            session.track(claim)
        return claim, bool(ok)

    def _claim_record(self, rel: str) -> Tuple[Optional[ClaimRecord], Any]:
        """The claim (or copy) record at ``rel`` and its metadata; None for no key or a bad value."""
        raw, meta = self.store.get_raw(rel)
        try:
            return (ClaimRecord.from_json(raw, self.store.key(rel)) if raw is not None else None), meta
        except EtcdDataError:
            return None, meta

    def _adopt_copy(self, claim: Claim, copy_rel: str, theirs: ClaimRecord, meta: Any) -> Tuple[Claim, bool]:
        """Move a reader's speculative copy to our own copy key, in one transaction; a copy we could
        not move cannot commit (only its worker's key counts), so it comes back ``lost``."""
        session, sid = self.session, claim.slice_id
        ours_rel = self.k.backup_of(sid, session.worker_id)
        ours = ClaimRecord(worker=session.worker_id, attempt=claim.attempt, attempt_no=theirs.attempt_no,
                           started=theirs.started, of=theirs.of, via=theirs.worker)
        claim.backup = True
        try:
            ok, _ = session.leased(lambda lease: self.store.txn(
                f"adopt copy of slice {sid}",
                [Compare.mod(copy_rel) == meta.mod_revision, Compare.version(ours_rel) == 0,
                 Compare.version(self.k.done + sid) == 0],
                [Op.delete(copy_rel), Op.put(ours_rel, ours.to_json(), lease=lease)]))
        except Exception as e:  # noqa: BLE001 - a copy is optional; the primary goes on
            log.warning("aimaster: could not adopt the copy of slice %s (%s); it is dropped", sid, e)
            ok = False
        if ok:
            claim.record = ours
            session.track(claim)
            session.copies_started += 1  # the reader's session is no worker; its consumer counts it
        else:
            claim.lost = True
        return claim, bool(ok)

    def take_copy_slot(self, claim: Claim, slots: int) -> Optional[int]:
        """One of the copy ordinals ``1 .. slots - 1`` of the claim's attempt (first come, for good);
        None when none is left or the slice was committed meanwhile.

        A slot is never given back (a copy that died keeps it): a late copy must never get the ordinal
        of one that committed, or its discard would empty the winner's block.
        """
        done = self.k.done + claim.slice_id
        for k in range(1, slots):
            rel = self.k.slot(claim.slice_id, claim.attempt_no, k)
            ok, responses = self.store.txn(f"take copy slot {k} of slice {claim.slice_id}",
                                           [Compare.version(rel) == 0, Compare.version(done) == 0],
                                           [Op.put(rel, SlotRecord(claim.attempt).to_json())], [Op.get(rel)])
            if ok:
                return k
            existing = responses[0] if responses else []
            if existing:
                try:
                    if SlotRecord.from_json(existing[0][0], self.store.key(rel)).attempt == claim.attempt:
                        return k  # a retried transaction whose first try did take it
                except EtcdDataError:
                    pass  # a hand-written slot is somebody else's: try the next one
            if self.store.get_value(done) is not None:
                return None  # committed meanwhile: the copy is pointless
        return None

    def propose_sink(self, description: dict) -> dict:
        """The dataset's output sink: ``description`` if no writer agreed on one yet, else the agreed one
        (first writer wins). The caller builds its sink from what comes back."""
        rel = self.k.sink
        ok, responses = self.store.txn("share output sink", [Compare.version(rel) == 0],
                                       [Op.put(rel, description)], [Op.get(rel)])
        if ok:
            self._sink = dict(description)
            return self._sink
        existing = responses[0] if responses else []
        value = loads(existing[0][0], self.store.key(rel)) if existing else self.agreed_sink()
        if value is None or not isinstance(value.get("kind"), str):
            raise EtcdDataError(f"value at {self.store.key(rel)} is not an output sink description")
        self._sink = value
        return value
