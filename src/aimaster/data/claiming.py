"""Claiming a free slice, copying a held one (speculation), and waiting for one: the claim transitions."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from aimaster.data import OutOfRangeException, keys, records, speculation
from aimaster.data.claim import Claim
from aimaster.data.records import AttemptRecord, ClaimRecord, TodoRecord
from aimaster.data.store import Compare, Op, loads

log = logging.getLogger(__name__)

CANDIDATES = 64  # claim among N free slices, at random, so workers rarely collide
# Slice ids spanned by a candidate read at first, and at least (see Claiming._size_window). etcd 3.5
# walks every key of a range to count it, whatever the limit: a 1,024-id window of free slices cost
# etcd 1.7 ms for its 64 candidates, a 128-id one 0.46 ms (a commit costs it about 0.45 ms).
CLAIM_WINDOW = 2 * CANDIDATES


def attempt_id(worker_id: str) -> str:
    """A new attempt's id: the worker's id and 8 random hex digits (32 bits from the OS, as a uuid4's
    first 8 digits were, without building the uuid: a claim makes one per slice)."""
    return f"{worker_id}.{os.urandom(4).hex()}"


def names_attempt(responses: Any, key: str, attempt: str) -> bool:
    """Whether the failure branch's read-back of ``key`` (its one ``get``) holds ``attempt``: a
    retried transaction whose first try did apply finds its own record there."""
    existing = responses[0] if responses else []
    if not existing:
        return False
    value = loads(existing[0][0], key, expect=None)
    return isinstance(value, dict) and value.get("at") == attempt


class Claiming:
    """Claims and speculative copies.

    A part of :class:`~aimaster.data.coordinator.Dataset` (see that module for the state machine): it
    works on the dataset's state, set up in ``Dataset.__init__``.
    """

    # ------------------------------------------------------------------ claim
    def take_claimed_ahead(self) -> Optional[Claim]:
        """The slice a commit claimed ahead (``commit(claim_next=True)``) and nobody asked for yet,
        no longer reserved for the next :meth:`try_claim` (None: there is none)."""
        claim, self._next = self._next, None
        return claim

    def try_claim(self) -> Optional[Claim]:
        """Claim a free slice now, or return None if none is free."""
        if self._next is not None:
            claim, self._next = self._next, None
            claim.claimed_at = time.time()
            return claim
        for _ in range(4 * CANDIDATES):
            if not self._candidates:
                self._refill_candidates()
                if not self._candidates:
                    self._note_drained()
                    return None
            pick = self._pick()
            sid, todo, mod_rev = self._candidates.pop(pick)
            claim, ops = self._claim_ops(sid, self._todo_record(sid, todo))
            t0 = time.monotonic()
            if self._take(claim, f"claim slice {sid}", self.k.claim + sid,
                          [Compare.mod(self.k.todo + sid) == mod_rev], ops):
                claim.claim_latency = time.monotonic() - t0
                return claim
            # Lost to another worker: our window is contended; look elsewhere next time.
            self._candidates = []
        return None

    def _note_drained(self) -> None:
        """No slice is free: say so, once (``ds/<ds>/drained``), so that readers holding slices they
        claimed ahead give them back instead of keeping an idle peer waiting (see
        :mod:`aimaster.frameworks.feed`). Advisory: a failed write only delays that."""
        if self._drained_seen:
            return
        try:
            self.store.txn("note that no slice is free", [Compare.version(self.k.drained) == 0],
                           [Op.put(self.k.drained, {"w": self.session.worker_id, "t": round(time.time(), 3)})])
            self._drained_seen = True
        except Exception as e:  # noqa: BLE001 - advisory; the next failed claim tries again
            log.debug("aimaster: could not note that dataset %s has no free slice (%s)", self.ds_id, e)

    def drained(self) -> bool:
        """Whether a worker of this run found no free slice: every slice was handed out at least once,
        so what a reader holds beyond the slice it reads keeps somebody waiting. One key read (and
        none once seen: the marker stays until the next run starts, see ``master.startup``)."""
        if not self._drained_seen:
            self._drained_seen = self.store.get_raw(self.k.drained)[0] is not None
        return self._drained_seen

    def _new_attempt(self, sid: str, todo: TodoRecord) -> Tuple[Claim, AttemptRecord]:
        """A new primary attempt at free slice ``sid`` (its todo record given): the Claim, whose
        ``record`` is what the claim key will hold, and the ``attempts/<s>`` record to write."""
        attempt_no = todo.attempts + 1
        me = self.session.worker_id
        attempt = attempt_id(me)
        claim = Claim(self, sid, self.slice_index(sid), attempt, attempt_no, self.session.lease_generation,
                      record=ClaimRecord(worker=me, attempt=attempt, attempt_no=attempt_no, started=time.time()))
        return claim, AttemptRecord(attempts=attempt_no, worker=me, copies=0, error=todo.error)

    def _claim_ops(self, sid: str, todo: TodoRecord) -> Tuple[Claim, list]:
        """A new attempt at candidate ``sid``: its Claim and the operations besides the claim key's
        own put that take it (the one builder, whether a claim is taken alone or inside a commit)."""
        claim, attempts = self._new_attempt(sid, todo)
        return claim, [Op.delete(self.k.todo + sid), Op.put(self.k.attempts + sid, attempts.to_json())]

    def _piggyback(self, lease, exclude: str) -> Optional[Tuple[Claim, Any]]:
        """A nested transaction claiming one more free slice, to ride inside a commit of ``exclude``.

        One transaction per slice instead of two: the commit of a slice also claims the next one
        (when the caller will ask for it, as the SDK clients do), if that candidate is still free.
        A candidate list that another instance's claims made stale (a framework consumer commits
        what its readers claimed) may still name the committed slice: never that one (etcd refuses
        a transaction touching a key twice).
        """
        if not self._candidates:
            self._refill_candidates()
        while self._candidates:
            sid, todo, mod_rev = self._candidates.pop(self._pick())
            if sid == exclude:
                continue
            try:
                claim, ops = self._claim_ops(sid, self._todo_record(sid, todo))
            except ValueError:
                continue
            ops.insert(1, Op.put(self.k.claim + sid, claim.held_value(), lease=lease))
            return claim, Op.txn([Compare.mod(self.k.todo + sid) == mod_rev], ops)
        return None

    def _pick(self) -> int:
        """Which candidate to try: alone (standalone), in order; among peers, at random, so claims
        rarely collide."""
        return 0 if self.session.standalone else random.randrange(len(self._candidates))

    def _refill_candidates(self) -> None:
        """Candidate free slices: a random window of the todo keys, else the first ones.

        Every worker reading the *first* free slices makes them all race for the same keys (each lost
        race is a wasted transaction); a random, bounded window spreads them out, and a bounded key
        range keeps the read cheap (etcd counts every key of a range, whatever the limit).
        """
        todo = self.k.todo
        found: List[Tuple[str, bytes, Any]] = []
        # After a refill that found no free slice at all, a waiting worker's next looks (it polls)
        # read the whole todo range at once: it holds few keys by then, and two random windows
        # that are all but sure to be empty would cost two reads more each time.
        if not self.session.standalone and self.num_slices > CANDIDATES and not self._none_free:
            for _ in range(2):
                r = random.randrange(self.num_slices)
                end = r + self._window
                found = self._todo_range(todo + self.slice_id(r),
                                         todo + self.slice_id(end) if end < self.num_slices else None)
                self._size_window(r, found, cut=end >= self.num_slices)
                if found:
                    break
        if not found:
            found = self._todo_range(todo, None)
        self._none_free = not found
        self._candidates = []
        for rel, raw, meta in found:
            sid = rel[len(todo):]
            if self._planned(sid) is None:
                self._ignore(rel, "its slice id is not in the plan")
                continue
            self._candidates.append((sid, raw, meta.mod_revision))

    def _todo_record(self, sid: str, raw: bytes) -> TodoRecord:
        """A candidate's todo record, decoded only once it is picked: a refill reads up to
        CANDIDATES of them, most of which go to other workers before we would get to them."""
        return TodoRecord.tolerant(raw, self.store.key(self.k.todo + sid))

    def _size_window(self, start: int, found: List[Tuple[str, bytes, Any]], cut: bool) -> None:
        """Size the next candidate window to the density of free slices the last read (from slice
        ``start``; ``cut`` short by the last slice) showed, so that it holds about CANDIDATES of them.

        etcd's cost of a range is the keys inside it, not the ids it spans (it walks them all to
        count them). Claimed slices leave no todo key behind, so as the data drains a fixed window
        holds fewer and fewer candidates: refills grow frequent, and peers end up racing for the few
        left (near the end, every worker falling back to the *first* free slices). A window much
        wider than the free slices need costs etcd a walk over keys it does not send: at the start,
        when every slice is free, 64 candidates lie in 64 ids. A full read says how many ids its
        candidates spanned (the last one's id); a short one, how thin the whole window was (unless
        the last slice cut it short). Growth is bounded (8 times per read): a read that fell into
        a stretch peers just emptied says little of the rest.
        """
        if len(found) >= CANDIDATES:  # full: they spanned up to the last one (+50%: a margin)
            last = self._planned(found[-1][0][len(self.k.todo):])
            spanned = last - start + 1 if last is not None and last >= start else self._window
            self._window = max(CLAIM_WINDOW, min(self._window, spanned * 3 // 2))
        elif not cut:
            grown = self._window * CANDIDATES // max(len(found), 1)
            self._window = min(max(self.num_slices, CLAIM_WINDOW), 8 * self._window, grown)

    def _todo_range(self, start_rel: str, end_rel: Optional[str]) -> List[Tuple[str, bytes, Any]]:
        """Up to CANDIDATES todo keys from ``start_rel`` (raw values: one bad value spoils no claim)."""
        # None: to the end of the todo prefix ("todo0" sorts right after every "todo/<slice>").
        end = end_rel if end_rel is not None else self.k.todo[:-1] + chr(ord("/") + 1)
        return self.store.raw_between(start_rel, end, CANDIDATES)

    def _take(self, claim: Claim, what: str, rel: str, compare: list, ops: list) -> bool:
        """Create ``rel`` (our attempt ``claim.record``, bound to our lease) with ``ops`` if ``compare`` holds.

        The heartbeat goes in the same transaction, listing the new attempt, so the master always
        knows which slices a worker held when it died.
        """
        st = self.store
        session = self.session
        session.track(claim)
        try:
            def txn(lease):
                claim.lease_generation = session.lease_generation
                success = [Op.put(rel, claim.held_value(), lease=lease), *ops]
                if session.registered:
                    success.append(Op.put(keys.beat(session.worker_id), session.beat_value("working"), lease=lease))
                return st.txn(what, compare, success, [Op.get(rel)])

            result = session.leased(txn)
            ok, responses = result
            if ok:
                claim.written_at(result.revision)
            else:
                # A retried transaction whose first try did apply: the key holds our own attempt
                # (written at a revision this reply does not tell: its commit compares the value).
                ok = names_attempt(responses, st.key(rel), claim.attempt)
        except BaseException:
            session.untrack(claim)
            raise
        if not ok:
            session.untrack(claim)
        return ok

    # ------------------------------------------------------------------ speculative copies
    def _recent_durations(self) -> List[float]:
        """Pooled recent slice durations of every worker in the job (cached briefly)."""
        when, values = self._durations
        if time.monotonic() - when > 2.0:
            values = speculation.pooled_durations(self._advisory(keys.STATS).items())
            self._durations = (time.monotonic(), values)
        return values

    def _copy_targets(self) -> List[Tuple[str, Dict[str, Any], Any, AttemptRecord, Any]]:
        """Slices held by other workers that are worth a speculative copy now, longest-running first:
        ``(slice id, claim record, claim key metadata, attempts record, its metadata)``.

        Not a slice whose holder is waiting (it finished it, only not committed yet), nor one whose
        attempts failed before (a copy would more likely die the same way than win), nor one with
        ``max_copies`` copies already.
        """
        if not self.speculation or self.max_copies < 1:
            return []
        me = self.session.worker_id
        held = list(self._holds(self.k.claim))
        if not held:
            return []
        beats = self._beats()
        held = [(sid, rec, m) for sid, rec, m in held
                if not records.beat_parks(beats.get(rec.worker), f"{self.ds_id}/{sid}")]
        metas = {sid: meta for sid, _, meta in held}
        mine = {sid for ds, sid, _ in list(self.session.claims) if ds == self.ds_id}
        age_needed = speculation.min_age(self._recent_durations(), self.speculation_multiplier)
        candidates = speculation.copy_candidates([(sid, rec.to_json()) for sid, rec, _ in held], me, mine,
                                                 time.time(), age_needed)
        out = []
        for _, sid, record in candidates[:4]:
            attempts, att_meta = self._attempts(sid)
            if attempts is None or attempts.attempts != record["a"]:
                continue  # the attempt we saw is over already
            if attempts.error or attempts.copies >= self.max_copies:
                continue
            try:
                self.slice_index(sid)
            except ValueError:
                continue
            out.append((sid, record, metas[sid], attempts, att_meta))
        return out

    def copy_worth_taking(self) -> bool:
        """Whether :meth:`try_copy` would find a slice to copy now (it reads, takes nothing): a
        consumer whose readers do the claiming asks before starting them again."""
        return bool(self._copy_targets())

    def try_copy(self) -> Optional[Claim]:
        """Start a speculative copy of the longest-running slice held by another worker, if worth it."""
        me = self.session.worker_id
        for sid, record, meta, attempts, att_meta in self._copy_targets():
            index = self.slice_index(sid)
            attempt = attempt_id(me)
            claim = Claim(self, sid, index, attempt, record["a"], self.session.lease_generation, backup=True,
                          record=ClaimRecord(worker=me, attempt=attempt, attempt_no=record["a"], started=time.time(),
                                             of=record.get("at")))
            copied = dataclasses.replace(attempts, copies=attempts.copies + 1)
            self.session.copies_started += 1
            if self._take(claim, f"copy slice {sid}", self.k.backup_of(sid, me),
                          [Compare.mod(self.k.claim + sid) == meta.mod_revision,
                           Compare.mod(self.k.attempts + sid) == att_meta.mod_revision,
                           Compare.version(self.k.done + sid) == 0],
                          [Op.put(self.k.attempts + sid, copied.to_json()),
                           # A reading child's session is no worker: its consumer counts the copy.
                           *([Op.put(keys.stats(me), self.session.stats_value())] if self.session.registered
                             else [])]):
                log.info("aimaster: %s copies slice %s held by %s for %.1fs", me, sid, record.get("w"),
                         time.time() - record["t"])
                return claim
            self.session.copies_started -= 1
        return None

    def next_claim(self, wait: bool = True, on_wait: Optional[Callable[[], Any]] = None) -> Claim:
        """Claim the next free slice, waiting while others hold the rest.

        ``on_wait`` runs before each pause; a truthy result (progress) skips the pause.
        Raises OutOfRangeException once every slice is committed or failed, or once no slice can
        come to this worker any more (see :meth:`nothing_left_for_me`).
        """
        delay = 0.05
        while True:
            claim = self.try_claim()
            if claim is not None:
                return claim
            if self.finished():
                self.session.beat("done")
                self.finalize_unless_mastered()
                raise OutOfRangeException(f"all {self.num_slices} slices of dataset {self.ds_id} are done")
            if not wait:
                return None
            claim = self.try_copy()
            if claim is not None:
                return claim
            # Waiting is not hanging: the master's hang detection leaves a waiting worker alone.
            # Peers read this beat too: what a waiting worker holds is finished, not in progress.
            self.session.beat("waiting")
            if self.nothing_left_for_me():
                if on_wait is not None and on_wait():
                    continue  # our own slices in flight got committed: look again
                self._ended_early = True
                self.session.beat("done")
                raise OutOfRangeException(
                    f"no slice of dataset {self.ds_id} is left to hand out: the uncommitted ones are held by "
                    f"this worker or by workers finishing theirs")
            if time.monotonic() - self._last_reconcile > 1.0:
                self._last_reconcile = time.monotonic()
                if self.requeue_lost():
                    continue
            if on_wait is not None and on_wait():
                continue  # the hook made progress (committed our own slices in flight): look again now
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
