"""Completion: progress counts, the believed done/failed records, the agreed output sink, finalize."""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, Iterable, Optional, Tuple

from aimaster.data import keys, records
from aimaster.data.outputs import sink_from_description
from aimaster.data.records import CommitRecord, FailureRecord
from aimaster.data.store import Compare, Op, dumps, loads
from aimaster.errors import ConfigError, EtcdDataError

log = logging.getLogger(__name__)


class Completion:
    """Completion, the output sink and finalize.

    A part of :class:`~aimaster.data.coordinator.Dataset` (see that module for the state machine): it
    works on the dataset's state, set up in ``Dataset.__init__``.
    """

    # ------------------------------------------------------------------ progress
    def counts(self) -> Dict[str, int]:
        done, failed = self.completion()
        st = self.store
        return {
            "total": self.num_slices,
            "done": len(done),
            "failed": len(set(failed) - set(done)),
            "running": st.count(self.k.claim),
            "todo": self._count_planned(self.k.todo),
        }

    def _count_planned(self, prefix: str) -> int:
        """Keys under ``prefix`` within the plan's id range (ids outside it are not slices)."""
        start, end = prefix + self.slice_id(0), prefix + self.slice_id(self.num_slices)
        if len(self.slice_id(self.num_slices)) > self.plan["width"]:  # the range ends past the widest id
            end = prefix + ":"  # ':' sorts right after '9'
        return self.store.count_between(start, end)

    def is_complete(self) -> bool:
        """Every planned slice committed or failed, by records that validate (see :mod:`.records`).

        Raw key counts come first: they are cheap, and forged keys can only inflate them, so a
        count short of the plan settles it. Only a count that claims completion is checked key
        by key.
        """
        st = self.store
        if st.count(self.k.done) + st.count(self.k.failed) < self.num_slices:
            return False
        return self._validated_complete()

    def _validated_complete(self) -> bool:
        """Every planned slice has a done or failed record that validates (read incrementally)."""
        done, failed = self.completion()
        return len(set(done) | set(failed)) >= self.num_slices

    def finished(self) -> bool:
        """For a worker waiting at the end of the data: whether every planned slice is committed or
        failed, validating every record only if no peer has done so already.

        :meth:`is_complete` in every waiting worker would have each of them read and validate every
        commit record once the last slice is committed: W workers times S records, all at the same
        moment, on the cores the last commits and the master need (27 s of drain with 32 workers
        and 20,000 slices on 2 cores, 6.7 s with this; hours at 1,000 workers and millions of
        slices). Instead one worker at a time (``ds/<ds>/completing``, bound to its lease)
        validates everything afresh and notes the store revision it started from
        (``ds/<ds>/complete``); a peer believes that note while no done or failed record was
        written since, and while the job has a master (which judges the job from its own reading)
        or the dataset is finalized. A forged note can make workers leave early, never make a job
        succeed: a worker believing it neither finalizes nor publishes anything.
        """
        st = self.store
        # While a peer still holds a claim on a slice that has no commit or failure record, the
        # answer is no. That costs the claims in flight (a few keys) and a point read of the first
        # one's record; counting ``done/`` costs etcd a walk over every commit record (15-25 ms
        # at 20,000 slices), and every waiting worker asked it on each poll while the last slices
        # were being committed, on the cores those commits needed. The claims are validated as
        # ``in_flight`` reads them (a key bound to no lease is deleted, never believed), and a
        # claim key on a settled slice (written by hand, even bound to a live lease) proves
        # nothing: the counts and the validation below decide then.
        if any(not self._settled(sid) for sid, _, _ in self._holds(self.k.claim)):
            return False
        counts = [st.count(self.k.done), st.count(self.k.failed)]
        if sum(counts) < self.num_slices:
            return False
        if self._noted_complete(counts):
            return True
        held = {"w": self.session.worker_id, "t": round(time.time(), 3)}
        took, _ = self.session.leased(lambda lease: st.txn(
            f"validate dataset {self.ds_id}", [Compare.version(self.k.completing) == 0],
            [Op.put(self.k.completing, held, lease=lease)]))
        if not took:
            return False  # a peer is validating: its note (or its verdict, should it fail) comes soon
        try:
            since = st.revision()
            afresh = not any(self._scanned_rev.values())  # nothing read before: this read is all new
            complete = self._validated_complete()  # incremental: cheap while forged keys inflate the counts
            if complete and not afresh:
                # Afresh, from ``since``: the note vouches for every record, and a read in pages
                # is not at one revision, so what earlier incremental reads believed is read again.
                self._scanned_rev = {"done": 0, "failed": 0}
                complete = self._validated_complete()
            if complete:
                st.put(self.k.complete, {"rev": since, "n": self.num_slices, "keys": counts,
                                         "w": self.session.worker_id, "t": round(time.time(), 3)})
            return complete
        finally:
            try:
                st.txn(f"end validating dataset {self.ds_id}", [Compare.value(self.k.completing) == held],
                       [Op.delete(self.k.completing)])
            except Exception as e:  # noqa: BLE001 - the key is bound to our lease: it goes with it
                log.debug("aimaster: could not release %s (%s)", st.key(self.k.completing), e)

    def _noted_complete(self, counts: list) -> bool:
        """Whether ``ds/<ds>/complete`` holds, by a peer's note (see :meth:`finished`): well formed,
        for this plan, the same raw key ``counts`` (done, failed) as when it was written, so none
        was deleted; nothing under ``done/``, ``failed/`` or ``retaken`` written since its
        revision; and believed only where a master judges the job or the dataset is finalized."""
        st = self.store
        raw, meta = st.get_raw(self.k.complete)
        if raw is None:
            return False
        try:
            note = loads(raw, st.key(self.k.complete))
        except EtcdDataError as e:
            self._ignore(self.k.complete, f"it is not a completion note ({e})")
            return False
        rev, n = note.get("rev"), note.get("n")
        # A note is written after reading its revision: one naming a later revision than its own
        # is forged (and would otherwise vouch for records written after it).
        if type(rev) is not int or not 0 <= rev < meta.mod_revision or n != self.num_slices \
                or not isinstance(note.get("w"), str) or not isinstance(note.get("keys"), list):
            self._ignore(self.k.complete, "it is not a completion note of this plan")
            return False
        if note["keys"] != counts:
            return False  # records deleted or added since (an added one is newer than the note, too)
        if st.get_raw(keys.MASTER)[0] is None and st.get_raw(self.k.finalized)[0] is None:
            return False  # no master to judge the job: only a worker's own validation may finalize it
        _, retaken = st.get_raw(self.k.retaken)
        if retaken is not None and retaken.mod_revision > rev:
            return False
        return not (st.any_changed_since(self.k.done, rev) or st.any_changed_since(self.k.failed, rev))

    def completion(self) -> Tuple[Dict[str, int], Dict[str, int]]:
        """(committed, failed): planned slice id -> mod revision of its record, validated.

        Read incrementally (only records changed since the last call), so waiting workers and the
        master can ask every round. A record outside the plan is ignored (and logged once); a record
        of a planned slice that does not validate is refused with an error naming its key, since
        that slice can then never be committed for real.
        """
        return self._scan("done"), self._scan("failed")

    def _scan(self, kind: str) -> Dict[str, int]:
        prefix = self.k.done if kind == "done" else self.k.failed
        known = self._done if kind == "done" else self._failed
        since = self._scanned_rev[kind]
        if kind == "done":
            # A commit taken back (its output died with an expired upload session) touches
            # ``retaken``: what we cached may include it, so everything is read again.
            _, meta = self.store.get_raw(self.k.retaken)  # only its revision counts
            retaken = meta.mod_revision if meta is not None else 0
            if retaken != self._retaken_rev:
                self._retaken_rev, since = retaken, 0
        if since and self.store.count(prefix) < len(known):
            since = 0  # records vanished (deleted by hand): read everything again
        if not since:
            known.clear()
            self._scanned_rev[kind] = 0
        for sid, _, _, meta in self._believed(kind, self._records_since(prefix, since)):
            self._scanned_rev[kind] = max(self._scanned_rev[kind], meta.mod_revision)
            known[sid] = meta.mod_revision
        return known

    def _records_since(self, prefix: str, since: int) -> Iterable[Tuple[str, bytes, Any]]:
        if not since:
            return self.store.iter_prefix_chunks(prefix)  # in pages: the first read may be large
        return self.store.changed_since(prefix, since)

    def _planned(self, slice_id: str) -> Optional[int]:
        return records.planned_index(slice_id, self.plan["width"], self.plan["num_slices"])

    def _ignore(self, rel: str, why: str) -> None:
        if rel not in self._ignored:
            self._ignored.add(rel)
            log.warning("aimaster: ignoring %s: %s", self.store.key(rel), why)

    # ------------------------------------------------------------------ the output sink
    def agreed_sink(self) -> Optional[Dict[str, Any]]:
        """The dataset's output sink as agreed in etcd (None while no worker has written output)."""
        if self._sink is None:
            value = self.store.get_value(self.k.sink)
            if value is not None and not isinstance(value.get("kind"), str):
                raise EtcdDataError(f"value at {self.store.key(self.k.sink)} is not an output sink description")
            self._sink = value
        return self._sink

    def agree_sink(self, description: Dict[str, Any]) -> None:
        """Pin the dataset's output sink (the first writer's wins); refuse a worker writing elsewhere.

        Commit records are only believed when they name this sink, so the finalizer (which
        republishes from records alone) never touches a location outside the job's output.
        """
        current = self.agreed_sink()
        if current is None:
            current = self.propose_sink(description)
        if dumps(current) != dumps(description):
            raise ConfigError(f"dataset {self.ds_id} of this job writes its outputs to {dumps(current)}; this "
                              f"worker's output is {dumps(description)} (use the same output, or a new --job-id)")

    # ------------------------------------------------------------------ finalize
    def committed(self) -> Iterable[Tuple[str, Dict[str, Any]]]:
        """(slice id, record as written) of every validated commit, in slice order."""
        for sid, _, value, _ in self._believed("done", self.store.iter_prefix_chunks(self.k.done)):
            yield sid, value

    def commits(self) -> Iterable[Tuple[str, CommitRecord]]:
        """(slice id, :class:`CommitRecord`) of every validated commit, in slice order."""
        for sid, record, _, _ in self._believed("done", self.store.iter_prefix_chunks(self.k.done)):
            yield sid, record

    def failed(self) -> Iterable[Tuple[str, Dict[str, Any]]]:
        """(slice id, record as written) of every validated ``failed/`` record, in slice order."""
        for sid, _, value, _ in self._believed("failed", self.store.iter_prefix_chunks(self.k.failed)):
            yield sid, value

    def failures(self) -> Iterable[Tuple[str, FailureRecord]]:
        """(slice id, :class:`FailureRecord`) of every validated ``failed/`` record, in slice order."""
        for sid, record, _, _ in self._believed("failed", self.store.iter_prefix_chunks(self.k.failed)):
            yield sid, record

    def _believed(self, kind: str, entries: Iterable[Tuple[str, bytes, Any]]):
        """(slice id, record, its JSON, metadata) of the ``done``/``failed`` entries that validate:
        one outside the plan is ignored (logged once); a record of a planned slice that does not
        validate is refused, naming its key (that slice could never be committed for real)."""
        prefix = self.k.done if kind == "done" else self.k.failed
        for rel, raw, meta in entries:
            sid = rel[len(prefix):]
            if self._planned(sid) is None:
                self._ignore(rel, "its slice id is not in the plan")
                continue
            key = self.store.key(rel)
            value = loads(raw, key, expect=None)
            # The agreed sink is read only for a record with outputs (one etcd read per record
            # while none is agreed, e.g. every record of a job writing no outputs, added up).
            record = (CommitRecord.from_json(value, key, sink=self.agreed_sink) if kind == "done"
                      else FailureRecord.from_json(value, key))
            yield sid, record, value, meta

    def finalize_unless_mastered(self) -> None:
        """Finalize now, unless a master runs the job: it finalizes once every worker has exited.

        A worker finalizing while its peers still run moot attempts would race them: a losing copy
        still uploading its MaxCompute block, or writing its staged file, could land after the
        session was sealed or the staging area cleaned, and so be published. Only a job without
        a master (standalone, or workers started by hand) finalizes from a worker.
        """
        raw, _ = self.store.get_raw(keys.MASTER)
        if raw is None:
            self.finalize()

    def finalize(self) -> bool:
        """Publish every committed output (again, idempotently) and close per-job sinks, once.

        Run by the master once every worker has exited (see :meth:`finalize_unless_mastered`), or in
        a job without a master by the first worker to see the dataset complete; it repairs a crash
        between a commit and its publish.
        Only the dataset's agreed sink is ever rebuilt: every record was checked to name it.
        """
        st = self.store
        if st.get_value(self.k.finalized) is not None:
            return True
        ok, _ = self.session.leased(lambda lease: st.txn(
            "take finalizer", [Compare.version(self.k.finalizing) == 0],
            [Op.put(self.k.finalizing, {"w": self.session.worker_id}, lease=lease)]))
        if not ok:
            return False
        try:
            pairs = [(sid, out["ref"]) for sid, record in self.commits() for out in record.outputs]
            description = self.agreed_sink()
            if description is not None:
                sink = sink_from_description(description)
                for sid, ref in pairs:
                    sink.publish(sid, ref)
                sink.finalize(pairs)
            st.put(self.k.finalized, {"t": time.time(), "w": self.session.worker_id})
        finally:
            st.delete(self.k.finalizing)
        return True
