"""The slice state machine, written once over the :class:`~aimaster.data.store.Store`.

A slice moves through these states (each a key under ``ds/<ds>/``, see :mod:`aimaster.data.keys`)::

    todo ──claim──▶ claim ──commit──▶ done
      ▲               │  (lease lost: worker died / hung)
      └───requeue─────┘──(attempts exhausted)──▶ failed

Every transition is one etcd transaction whose comparisons make it exclusive:

* *plan*: the plan key is written last, after the file list and the todo keys, by the one process
  holding the ``planner`` key; a crash mid-planning leaves no plan, and the next planner starts over.
* *claim*: ``todo/<s>`` unchanged since we read it → delete it, create ``claim/<s>`` bound to our
  lease. Two workers can never claim the same todo entry.
* *commit*: ``done/<s>`` does not exist → create it with the attempt's staged outputs. First committer
  wins; every other attempt of the slice gets ``False`` and discards its staged output.
* *requeue*: the slice is in no state at all (its claim vanished with its lease) → back to todo, or to
  failed once it has been attempted ``max_attempts`` times.

No process needs to be alive for the slice to come back (the lease does it), and any process can
requeue (the master does it promptly; waiting workers do it too, so a job survives its master).
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import pyetcd.utils

from aimaster.data import OutOfRangeException
from aimaster.data.keys import DatasetKeys
from aimaster.data.outputs import OutputSink, StagedRef, sink_from_description
from aimaster.data.session import WorkerSession
from aimaster.data.store import dumps, loads
from aimaster.errors import ConfigError

log = logging.getLogger(__name__)

MAX_ATTEMPTS = int(os.environ.get("AIMASTER_MAX_SLICE_ATTEMPTS", "4"))
CHUNK_BYTES = 256 * 1024  # file-list chunk size: well under etcd's 1.5 MiB request limit
TXN_OPS = 100  # etcd's default --max-txn-ops is 128
CANDIDATES = 64  # claim among the first N free slices, at random, so workers rarely collide


@dataclass
class PlanData:
    """What a planner returns: the dataset's size and, for file datasets, its file list."""

    kind: str  # "files" or "table"
    num_items: int
    source: Dict[str, Any]
    items: Optional[List[str]] = None


@dataclass
class Claim:
    """One attempt at one slice, held by this process."""

    dataset: Dataset
    slice_id: str
    index: int
    attempt: str
    attempt_no: int
    lease_generation: int
    claimed_at: float = field(default_factory=time.time)
    outputs: List[Tuple[OutputSink, StagedRef]] = field(default_factory=list)
    items: int = 0

    def add_output(self, sink: OutputSink, ref: StagedRef) -> None:
        self.outputs.append((sink, ref))


def slice_id_width(num_slices: int) -> int:
    return max(6, len(str(max(num_slices - 1, 0))))


class Dataset:
    """Coordination of one dataset's slices, as seen by one process."""

    def __init__(self, session: WorkerSession, ds_id: str, max_attempts: int = MAX_ATTEMPTS):
        self.session = session
        self.store = session.store
        self.ds_id = ds_id
        self.k = DatasetKeys(ds_id)
        self.max_attempts = max_attempts
        self.plan: Optional[Dict[str, Any]] = None
        self._candidates: List[Tuple[str, Dict[str, Any], int]] = []
        self._chunks: Dict[int, List[str]] = {}
        self._chunk_starts: List[int] = []
        self._last_reconcile = 0.0

    # ------------------------------------------------------------------ planning
    def ensure_plan(self, planner: Callable[[], PlanData], slice_size: int,
                    poll: float = 0.1) -> Dict[str, Any]:
        """Return the dataset's plan, making it if nobody has (exactly one process plans)."""
        if slice_size <= 0 or int(slice_size) != slice_size:
            raise ConfigError(f"slice_size must be a positive integer, got {slice_size!r}")
        st, tx = self.store, self.store.tx
        while True:
            plan = st.get_value(self.k.plan)
            if plan is not None:
                return self._adopt(plan, slice_size)
            ok, _ = st.txn(
                "take planner",
                [tx.version(st.key(self.k.planner)) == 0],
                [tx.put(st.key(self.k.planner), dumps({"w": self.session.worker_id}),
                        lease=self.session.lease)],
            )
            if not ok:
                time.sleep(poll)  # somebody else is planning; their lease ends it if they die
                continue
            try:
                data = planner()
                plan = self._write_plan(data, int(slice_size))
            finally:
                st.delete(self.k.planner)
            if plan is not None:
                return self._adopt(plan, slice_size)

    def load_plan(self) -> Optional[Dict[str, Any]]:
        """Attach to an existing plan (the master and status never plan); None if not planned yet."""
        plan = self.store.get_value(self.k.plan)
        if plan is None:
            return None
        return self._adopt(plan, plan.get("slice_size"))

    def _write_plan(self, data: PlanData, slice_size: int) -> Optional[Dict[str, Any]]:
        st, tx = self.store, self.store.tx
        num_slices = (data.num_items + slice_size - 1) // slice_size
        # Leftovers of a planner that crashed half-way must not survive into this plan.
        for prefix in (self.k.items, self.k.todo):
            st.delete_prefix(prefix)
        chunk_counts: List[int] = []
        if data.items is not None:
            chunk: List[str] = []
            size = 0
            for name in data.items:
                chunk.append(name)
                size += len(name) + 3
                if size >= CHUNK_BYTES:
                    st.put(self.k.item_chunk(len(chunk_counts)), chunk)
                    chunk_counts.append(len(chunk))
                    chunk, size = [], 0
            if chunk:
                st.put(self.k.item_chunk(len(chunk_counts)), chunk)
                chunk_counts.append(len(chunk))
        width = slice_id_width(num_slices)
        empty = dumps({})
        for start in range(0, num_slices, TXN_OPS):
            ops = [tx.put(st.key(self.k.todo + f"{i:0{width}d}"), empty)
                   for i in range(start, min(start + TXN_OPS, num_slices))]
            st.txn("write todo", [], ops)
        plan = {
            "kind": data.kind,
            "num_items": data.num_items,
            "slice_size": slice_size,
            "num_slices": num_slices,
            "width": width,
            "chunks": chunk_counts,
            "source": data.source,
            "created": time.time(),
        }
        ok, _ = st.txn("write plan", [tx.version(st.key(self.k.plan)) == 0],
                       [tx.put(st.key(self.k.plan), dumps(plan))])
        return plan if ok else None

    def _adopt(self, plan: Dict[str, Any], slice_size: int) -> Dict[str, Any]:
        for name, typ in (("num_items", int), ("slice_size", int), ("num_slices", int), ("width", int),
                          ("chunks", list), ("kind", str), ("source", dict)):
            if not isinstance(plan.get(name), typ):
                from aimaster.errors import EtcdDataError

                raise EtcdDataError(f"plan of dataset {self.ds_id} has a bad {name!r}: {plan.get(name)!r}")
        if plan["slice_size"] != int(slice_size):
            raise ConfigError(
                f"dataset {self.ds_id} was planned with slice_size={plan['slice_size']} in this job; "
                f"got slice_size={slice_size} (use a new --job-id to change it)"
            )
        self.plan = plan
        self._chunk_starts = []
        pos = 0
        for n in plan["chunks"]:
            self._chunk_starts.append(pos)
            pos += n
        return plan

    # ------------------------------------------------------------------ slice geometry
    @property
    def num_slices(self) -> int:
        return self.plan["num_slices"]

    def slice_id(self, index: int) -> str:
        return f"{index:0{self.plan['width']}d}"

    def slice_index(self, slice_id: str) -> int:
        return int(slice_id)

    def item_range(self, index: int) -> Tuple[int, int]:
        size = self.plan["slice_size"]
        return index * size, min((index + 1) * size, self.plan["num_items"])

    def items(self, index: int) -> List[str]:
        """The file names of a slice (file datasets), loading only the chunks it spans."""
        import bisect

        start, end = self.item_range(index)
        out: List[str] = []
        c = max(0, bisect.bisect_right(self._chunk_starts, start) - 1)
        while start < end and c < len(self._chunk_starts):
            chunk = self._chunk(c)
            base = self._chunk_starts[c]
            out.extend(chunk[start - base:end - base])
            start = base + len(chunk)
            c += 1
        return out

    def _chunk(self, n: int) -> List[str]:
        if n not in self._chunks:
            value = self.store.get_value(self.k.item_chunk(n), expect=list)
            if value is None or not all(isinstance(x, str) for x in value):
                from aimaster.errors import EtcdDataError

                raise EtcdDataError(f"file list chunk {n} of dataset {self.ds_id} is missing or malformed")
            if len(self._chunks) > 8:
                self._chunks.pop(next(iter(self._chunks)))
            self._chunks[n] = value
        return self._chunks[n]

    # ------------------------------------------------------------------ claim
    def try_claim(self) -> Optional[Claim]:
        """Claim a free slice now, or return None if none is free."""
        st, tx = self.store, self.store.tx
        for _ in range(4 * CANDIDATES):
            if not self._candidates:
                self._candidates = [
                    (rel[len(self.k.todo):], value, meta.mod_revision)
                    for rel, value, meta in st.range(self.k.todo, limit=CANDIDATES)
                ]
                if not self._candidates:
                    return None
            # Alone (standalone), go in order; among peers, pick at random so claims rarely collide.
            pick = 0 if getattr(self.session, "standalone", False) else random.randrange(len(self._candidates))
            sid, value, mod_rev = self._candidates.pop(pick)
            try:
                index = self.slice_index(sid)
            except ValueError:
                continue
            attempt_no = int(value.get("a", 0)) + 1 if isinstance(value.get("a", 0), int) else 1
            attempt = f"{self.session.worker_id}.{uuid.uuid4().hex[:8]}"
            record = {"w": self.session.worker_id, "at": attempt, "a": attempt_no, "t": time.time()}
            attempts = {"a": attempt_no, "e": value.get("e")}
            generation = self.session.lease_generation
            ok, _ = st.txn(
                f"claim slice {sid}",
                [tx.mod(st.key(self.k.todo + sid)) == mod_rev],
                [
                    tx.delete(st.key(self.k.todo + sid)),
                    tx.put(st.key(self.k.claim + sid), dumps(record), lease=self.session.lease),
                    tx.put(st.key(self.k.attempts + sid), dumps(attempts)),
                ],
            )
            if ok:
                return Claim(self, sid, index, attempt, attempt_no, generation)
        return None

    def next_claim(self, wait: bool = True, on_wait: Optional[Callable[[], None]] = None) -> Claim:
        """Claim the next free slice, waiting while others hold the rest.

        Raises OutOfRangeException once every slice is committed or failed.
        """
        delay = 0.05
        while True:
            claim = self.try_claim()
            if claim is not None:
                return claim
            if self.is_complete():
                self.finalize()
                raise OutOfRangeException(f"all {self.num_slices} slices of dataset {self.ds_id} are done")
            if not wait:
                return None
            if time.monotonic() - self._last_reconcile > 1.0:
                self._last_reconcile = time.monotonic()
                if self.requeue_lost():
                    continue
            if on_wait is not None:
                on_wait()
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    # ------------------------------------------------------------------ commit
    def commit(self, claim: Claim) -> bool:
        """Commit an attempt; True if it is the one commit of its slice. Publishes or discards outputs."""
        st, tx = self.store, self.store.tx
        sid = claim.slice_id
        record = {
            "w": self.session.worker_id,
            "at": claim.attempt,
            "a": claim.attempt_no,
            "t": time.time(),
            "dt": round(time.time() - claim.claimed_at, 4),
            "n": claim.items,
            "out": [{"sink": sink.describe(), "ref": ref} for sink, ref in claim.outputs],
        }
        stats = self.session_stats(claim)
        backup_prefix = st.key(self.k.backup + sid + "/")
        ok, responses = st.txn(
            f"commit slice {sid}",
            [tx.version(st.key(self.k.done + sid)) == 0],
            [
                tx.put(st.key(self.k.done + sid), dumps(record)),
                tx.delete(st.key(self.k.claim + sid)),
                tx.delete(st.key(self.k.todo + sid)),
                tx.delete(st.key(self.k.failed + sid)),
                tx.delete(st.key(self.k.attempts + sid)),
                tx.delete(backup_prefix, range_end=pyetcd.utils.prefix_range_end(backup_prefix.encode())),
                tx.put(st.key(f"stats/{self.session.worker_id}"), dumps(stats)),
            ],
            [tx.get(st.key(self.k.done + sid))],
        )
        if not ok:
            # A retried transaction whose first try did commit sees its own record: still a win.
            existing = responses[0] if responses else []
            if existing:
                rec = loads(existing[0][0], st.key(self.k.done + sid))
                ok = rec.get("at") == claim.attempt
        if ok:
            self.session.slices_committed += 1
            self.session.items_committed += claim.items
            for sink, ref in claim.outputs:
                sink.publish(sid, ref)
        else:
            for sink, ref in claim.outputs:
                sink.discard(ref)
        claim.outputs = []
        return ok

    def session_stats(self, claim: Claim) -> Dict[str, Any]:
        s = self.session
        now = time.time()
        if s.first_commit is None:
            s.first_commit = now
        return {"host": s.host, "pid": s.pid, "slices": s.slices_committed + 1,
                "items": s.items_committed + claim.items, "first": s.first_commit, "last": now,
                "started": s.started}

    def release(self, claim: Claim, error: Optional[str] = None) -> None:
        """Give a slice back (the attempt failed in a way the worker survived)."""
        st, tx = self.store, self.store.tx
        sid = claim.slice_id
        for sink, ref in claim.outputs:
            sink.discard(ref)
        claim.outputs = []
        claim_key = st.key(self.k.claim + sid)
        st.txn(f"release slice {sid}", [tx.version(claim_key) > 0], [tx.delete(claim_key)])
        if error:
            self._record_error(sid, claim.attempt_no, error)
        self.requeue(sid)

    def _record_error(self, sid: str, attempt_no: int, error: str) -> None:
        self.store.put(self.k.attempts + sid, {"a": attempt_no, "e": error[-2000:]})

    # ------------------------------------------------------------------ requeue / fail
    def _present(self) -> set:
        present = set()
        for prefix in (self.k.todo, self.k.claim, self.k.done, self.k.failed):
            n = len(prefix)
            for rel, _, _ in self.store.iter_prefix_chunks(prefix):
                present.add(rel[n:])
        for rel, _, _ in self.store.iter_prefix_chunks(self.k.backup):
            present.add(rel[len(self.k.backup):].split("/", 1)[0])
        return present

    def requeue_lost(self) -> int:
        """Put back every slice that is in no state (its holder's lease expired). Returns how many."""
        present = self._present()
        n = 0
        for i in range(self.num_slices):
            sid = self.slice_id(i)
            if sid not in present and self.requeue(sid):
                n += 1
        if n:
            self._candidates = []
        return n

    def requeue(self, sid: str) -> bool:
        """Return a slice nobody holds to todo, or mark it failed after max_attempts."""
        st, tx = self.store, self.store.tx
        attempts = st.get_value(self.k.attempts + sid) or {}
        n = attempts.get("a", 0) if isinstance(attempts.get("a", 0), int) else 0
        error = attempts.get("e") if isinstance(attempts.get("e"), str) else None
        absent = [tx.version(st.key(p + sid)) == 0
                  for p in (self.k.todo, self.k.claim, self.k.done, self.k.failed)]
        backup_prefix = st.key(self.k.backup + sid + "/")
        if n >= self.max_attempts:
            reason = error or "its worker died or lost its lease"
            value = {"a": n, "e": f"failed {n} attempts; last: {reason}", "t": time.time()}
            target = self.k.failed
        else:
            value = {"a": n, "e": error}
            target = self.k.todo
        no_backup = tx.version(backup_prefix, range_end=pyetcd.utils.prefix_range_end(backup_prefix.encode()))
        ok, _ = st.txn(f"requeue slice {sid}", absent + [no_backup == 0],
                       [tx.put(st.key(target + sid), dumps(value))])
        if ok and target == self.k.failed:
            log.error("aimaster: slice %s of dataset %s failed: %s", sid, self.ds_id, value["e"])
        return ok

    # ------------------------------------------------------------------ progress
    def counts(self) -> Dict[str, int]:
        st = self.store
        return {
            "total": self.num_slices,
            "done": st.count(self.k.done),
            "failed": st.count(self.k.failed),
            "running": st.count(self.k.claim),
            "todo": st.count(self.k.todo),
        }

    def is_complete(self) -> bool:
        st = self.store
        return st.count(self.k.done) + st.count(self.k.failed) >= self.num_slices

    # ------------------------------------------------------------------ finalize
    def committed(self) -> Iterable[Tuple[str, Dict[str, Any]]]:
        n = len(self.k.done)
        for rel, raw, _ in self.store.iter_prefix_chunks(self.k.done):
            yield rel[n:], loads(raw, self.store.key(rel))

    def failed(self) -> Iterable[Tuple[str, Dict[str, Any]]]:
        n = len(self.k.failed)
        for rel, raw, _ in self.store.iter_prefix_chunks(self.k.failed):
            yield rel[n:], loads(raw, self.store.key(rel))

    def finalize(self) -> bool:
        """Publish every committed output (again, idempotently) and close per-job sinks, once.

        Run by whichever process first sees the dataset complete (and by the master at the end, in
        case that process died half-way): it repairs a crash between a commit and its publish.
        """
        st, tx = self.store, self.store.tx
        if st.get_value(self.k.finalized) is not None:
            return True
        ok, _ = st.txn("take finalizer", [tx.version(st.key(self.k.finalizing)) == 0],
                       [tx.put(st.key(self.k.finalizing), dumps({"w": self.session.worker_id}),
                               lease=self.session.lease)])
        if not ok:
            return False
        try:
            sinks: Dict[str, OutputSink] = {}
            pairs: Dict[str, List[Tuple[str, StagedRef]]] = {}
            for sid, record in self.committed():
                for out in record.get("out") or []:
                    if not isinstance(out, dict) or not isinstance(out.get("sink"), dict):
                        continue
                    key = dumps(out["sink"])
                    if key not in sinks:
                        sinks[key] = sink_from_description(out["sink"])
                        pairs[key] = []
                    sinks[key].publish(sid, out.get("ref") or {})
                    pairs[key].append((sid, out.get("ref") or {}))
            for key, sink in sinks.items():
                sink.finalize(pairs[key])
            st.put(self.k.finalized, {"t": time.time(), "w": self.session.worker_id})
        finally:
            st.delete(self.k.finalizing)
        return True
