"""Ending an attempt: its commit (first committer wins), its release, and the error it leaves behind."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Dict, List, Optional

from aimaster.data import keys
from aimaster.data.claim import Claim
from aimaster.data.claiming import names_attempt
from aimaster.data.records import CommitRecord, FailureRecord, TodoRecord
from aimaster.data.store import Compare, Op

log = logging.getLogger(__name__)


class Committing:
    """Commit and release.

    A part of :class:`~aimaster.data.coordinator.Dataset` (see that module for the state machine): it
    works on the dataset's state, set up in ``Dataset.__init__``.
    """

    # ------------------------------------------------------------------ commit
    def commit(self, claim: Claim, claim_next: bool = False) -> bool:
        """Commit an attempt; True if it is the one commit of its slice. Publishes or discards outputs.

        ``claim_next``: also claim the next free slice in the same transaction; the following
        :meth:`try_claim`/:meth:`next_claim` returns it. Only for callers that do ask for the next
        slice right after (a claim nobody asks for is held until the process exits).
        """
        st, k = self.store, self.k
        session = self.session
        sid = claim.slice_id
        now = time.time()
        dt = max(0.0, now - claim.claimed_at)
        # Latencies for the master's histograms: this attempt's claim, the worker's previous commit.
        record = CommitRecord(
            worker=session.worker_id, attempt=claim.attempt, attempt_no=claim.attempt_no, committed=now,
            duration=round(dt, 4), items=claim.items,
            outputs=tuple({"sink": sink.describe(), "ref": ref} for sink, ref in claim.outputs),
            speculative=claim.backup,
            claim_latency=round(claim.claim_latency, 6) if claim.claim_latency is not None else None,
            commit_latency=(round(session.last_commit_latency, 6) if session.last_commit_latency is not None
                            else None))
        for sink in {id(sink): sink for sink, _ in claim.outputs}.values():
            if id(sink) not in self._agreed:
                self.agree_sink(sink.describe())
                self._agreed.add(id(sink))
        session.untrack(claim)
        commit_t0 = time.monotonic()
        # A copy's win always shows at once (speculation's counters); other commits carry the
        # counters at most every STATS_EVERY seconds.
        with_stats = claim.backup or session.stats_due()
        stats = self._stats_if_won(claim, dt, now) if with_stats else None
        done = k.done + sid
        held_rel = k.backup_of(sid, session.worker_id) if claim.backup else k.claim + sid

        def txn(lease):
            success = [
                Op.put(done, record.to_json()),
                Op.delete(k.claim + sid),
                Op.delete(k.todo + sid),
                Op.delete(k.failed + sid),
                Op.delete(k.attempts + sid),
                Op.delete_prefix(k.backups_of(sid)),
                *([Op.put(keys.stats(session.worker_id), stats)] if with_stats else []),
            ]
            piggy[:] = []
            extra = None
            if claim_next and self._next is None and self.plan is not None:
                extra = self._piggyback(lease, exclude=sid)
            if session.registered:
                # The beat lists the slice claimed in this very transaction: were the worker to die
                # now, the master must know it held that one too.
                also = [f"{self.ds_id}/{extra[0].slice_id}"] if extra is not None else []
                success.append(Op.put(keys.beat(session.worker_id),
                                      session.beat_value("working" if also else None, also=also), lease=lease))
            if extra is not None:  # last: its reply is the last response, read below
                piggy.append(extra[0])
                success.append(extra[1])
            compare = [Compare.version(done) == 0]
            held = claim.held_compare(held_rel)
            if held is not None:
                # Only while our attempt still holds its claim or copy key: one whose lease expired
                # (the worker was cut off or stopped past the TTL) or that was given back on SIGTERM
                # must never commit, even if nobody else has yet.
                compare.append(held)
            return st.txn(f"commit slice {sid}", compare, success, [Op.get(done)])

        piggy: List[Claim] = []
        result = session.leased(txn)
        ok, responses = result
        session.last_commit_latency = time.monotonic() - commit_t0
        if ok and piggy and responses and responses[-1].WhichOneof("response") == "response_txn" \
                and responses[-1].response_txn.succeeded:
            self._next = piggy[0]
            self._next.written_at(result.revision)  # its claim key was put in this transaction
            session.track(self._next)
        elif ok and piggy:
            self._candidates = []  # the candidate was taken meanwhile: our list is stale, read afresh
        if not ok:
            # A retried transaction whose first try did commit sees its own record: still a win.
            ok = names_attempt(responses, st.key(done), claim.attempt)
        if ok:
            if session.first_commit is None:
                session.first_commit = now
            session.slices_committed += 1
            session.items_committed += claim.items
            session.recent.append(dt)
            session.busy += dt
            if claim.backup:
                session.copies_won += 1
            if with_stats:
                session.stats_written()
            else:
                session.stats_dirty = True
            for sink, ref in claim.outputs:
                sink.publish(sid, ref)
            if self._ended_early and self.is_complete():
                self.finalize_unless_mastered()  # nobody else may be left to see the dataset complete
        else:
            if claim.backup:
                session.copies_lost += 1
            else:
                session.primaries_lost += 1
            for sink, ref in claim.outputs:
                sink.discard(ref)
            session.publish_stats()
        claim.outputs = []
        return ok

    def _stats_if_won(self, claim: Claim, dt: float, now: float) -> Dict[str, Any]:
        """The worker's counters as they will be if this commit wins (written in the same transaction)."""
        s = self.session
        value = s.stats_value()
        value.update(slices=s.slices_committed + 1, items=s.items_committed + claim.items,
                     first=s.first_commit or now, last=now, busy=round(s.busy + dt, 3),
                     recent=[round(x, 4) for x in (list(s.recent) + [dt])[-(s.recent.maxlen or 1):]],
                     copies_won=s.copies_won + (1 if claim.backup else 0))
        return value

    def release(self, claim: Claim, error: Optional[str] = None) -> None:
        """Give a slice back (the attempt failed in a way the worker survived)."""
        sid = claim.slice_id
        for sink, ref in claim.outputs:
            sink.discard(ref)
        claim.outputs = []
        self.session.untrack(claim)
        # A copy gives back only itself; the primary attempt it shadows goes on.
        rel = self.k.backup_of(sid, self.session.worker_id) if claim.backup else self.k.claim + sid
        held = claim.held_compare(rel)
        if held is not None:  # only our own attempt: after a lost lease the key may be another's
            self.store.txn(f"release slice {sid}", [held], [Op.delete(rel)])
        if error and not claim.backup:
            # The attempt's own worker: a DataLoader worker releasing a claim lent by its consumer
            # (frameworks.lent) releases the consumer's attempt.
            owner = claim.record.worker if claim.record is not None else self.session.worker_id
            self.record_error(sid, owner, error)
        self.requeue(sid)
        try:
            self.session.beat(force=True)
        except Exception:  # noqa: BLE001 - a heartbeat is advisory; the release itself is done
            pass

    def record_error(self, sid: str, worker_id: str, error: str) -> bool:
        """Note why ``worker_id``'s attempt at a slice failed, for the report and the failed/ record.

        Written into ``attempts/<s>`` only while that attempt is still the latest (a newer attempt by
        another worker has its own story); if the slice was meanwhile requeued or given up on, the
        todo or failed record gets the error instead of a generic "its worker died".
        """
        st = self.store
        error = error[-2000:]
        attempts, meta = self._attempts(sid)
        if attempts is None or attempts.worker != worker_id:
            return False
        ok, _ = st.txn(f"record error of slice {sid}", [Compare.mod(self.k.attempts + sid) == meta.mod_revision],
                       [Op.put(self.k.attempts + sid, dataclasses.replace(attempts, error=error).to_json())])
        for prefix, kind, fmt in ((self.k.todo, TodoRecord, "{e}"),
                                  (self.k.failed, FailureRecord, "failed {a} attempts; last: {e}")):
            value, vmeta = self._tolerant_get(prefix + sid, kind)
            if value is not None and value.error != error and not value.worker:
                number = value.attempts if value.attempts is not None else attempts.attempts
                text = fmt.format(a=number, e=error)
                st.txn(f"record error of slice {sid}", [Compare.mod(prefix + sid) == vmeta.mod_revision],
                       [Op.put(prefix + sid, dataclasses.replace(value, error=text, worker=worker_id).to_json())])
        return ok
