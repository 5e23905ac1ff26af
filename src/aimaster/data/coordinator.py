"""The slice state machine, written once over the :class:`~aimaster.data.store.Store`.

A slice moves through these states (each a key under ``ds/<ds>/``, see :mod:`aimaster.data.keys`)::

    todo ──claim──▶ claim ──commit──▶ done
      ▲               │ ╲
      │               │  ╲──copy──▶ backup/<w> ──commit──▶ done   (first commit wins)
      └───requeue─────┘──(attempts exhausted)──▶ failed
                 (lease lost: worker died / hung)

Every transition is one etcd transaction whose comparisons make it exclusive:

* *plan*: the plan key is written last, after the file list and the todo keys, by the one process
  holding the ``planner`` key; a crash mid-planning leaves no plan, and the next planner starts over.
* *claim*: ``todo/<s>`` unchanged since we read it → delete it, create ``claim/<s>`` bound to our
  lease. Two workers can never claim the same todo entry.
* *copy* (speculative backup, see :mod:`aimaster.data.speculation`): an idle worker, when no slice is
  free, copies the longest-running held slice: ``claim/<s>`` and ``attempts/<s>`` unchanged since read,
  ``done/<s>`` absent, fewer than ``max_copies`` copies of this attempt so far → create
  ``backup/<s>/<worker>`` bound to its lease. The copy keeps the slice id and the attempt number.
* *commit*: ``done/<s>`` does not exist, and the attempt still holds its claim (or copy) key → create
  ``done/<s>`` with the attempt's staged outputs. First committer wins (primary or copy); every other
  attempt of the slice gets ``False`` and discards its staged output, and so does an attempt whose
  claim was lost (its lease expired while the worker was cut off, or it was given back on SIGTERM),
  even when nobody else has committed the slice yet.
* *requeue*: the slice is in no state at all (its claim and every copy vanished with their leases) →
  back to todo, or to failed once it has been attempted ``max_attempts`` times.

A claim or copy transaction whose reply was lost (etcd restarting under it) is retried by the store;
the retry's comparison fails, so the failure branch reads the key back and recognises our own attempt:
a slice is never left held by a worker that does not know it holds it.

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

from aimaster.data import OutOfRangeException, keys, records, speculation
from aimaster.data.keys import DatasetKeys
from aimaster.data.outputs import OutputSink, StagedRef, sink_from_description
from aimaster.data.session import WorkerSession
from aimaster.data.store import dumps, loads
from aimaster.errors import ConfigError, EtcdDataError

log = logging.getLogger(__name__)

MAX_ATTEMPTS = int(os.environ.get("AIMASTER_MAX_SLICE_ATTEMPTS", "4"))
CHUNK_BYTES = 256 * 1024  # file-list chunk size: well under etcd's 1.5 MiB request limit
TXN_OPS = 100  # etcd's default --max-txn-ops is 128
CANDIDATES = 64  # claim among N free slices, at random, so workers rarely collide
CLAIM_WINDOW = 1024  # slices spanned by one candidate read


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
    backup: bool = False  # a speculative copy of a slice another worker holds
    record: Optional[Dict[str, Any]] = None  # what our claim/copy key holds, to delete only our own
    claim_latency: Optional[float] = None  # seconds the claim transaction took (for the histograms)

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
        self._next: Optional[Claim] = None  # claimed inside the previous commit's transaction
        self._chunks: Dict[int, List[str]] = {}
        self._chunk_starts: List[int] = []
        self._last_reconcile = 0.0
        self.speculation = speculation.enabled()
        self.speculation_multiplier = speculation.multiplier()
        self.max_copies = speculation.max_copies()
        self._durations: Tuple[float, List[float]] = (0.0, [])
        # Validated completion, read incrementally: planned slice id -> mod revision of its record.
        self._done: Dict[str, int] = {}
        self._failed: Dict[str, int] = {}
        self._scanned_rev = {"done": 0, "failed": 0}
        self._retaken_rev = 0  # mod revision of ds/<ds>/retaken when completion was last read
        self._ignored: set = set()  # keys of records outside the plan, warned about once
        self._sink: Optional[Dict[str, Any]] = None  # the dataset's agreed output sink, once known
        self._agreed: set = set()  # ids of the sink objects checked against it
        self._ended_early = False  # OutOfRange was raised while this worker still held slices
        if isinstance(getattr(session, "datasets", None), dict):
            session.datasets.setdefault(ds_id, self)  # its claims are given back on SIGTERM

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
            # "No plan yet" is part of the comparison: a process that read no plan just before the
            # previous planner finished must not take the freed planner key and plan again (its
            # clean-up would delete the file list and re-create todo keys under running workers).
            ok, _ = self.session.leased(lambda lease: st.txn(
                "take planner",
                [tx.version(st.key(self.k.planner)) == 0, tx.version(st.key(self.k.plan)) == 0],
                [tx.put(st.key(self.k.planner), dumps({"w": self.session.worker_id}), lease=lease)],
            ))
            if not ok:
                self.session.beat("waiting")  # waiting for the planner is not hanging
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
                # Budget in the bytes etcd will hold (a CJK character is 3 bytes of UTF-8, 6 when
                # escaped), not in characters: 2,500 long CJK names once overflowed one chunk.
                cost = len(dumps(name).encode("utf-8")) + 1
                if chunk and size + cost > CHUNK_BYTES:
                    st.put(self.k.item_chunk(len(chunk_counts)), chunk)
                    chunk_counts.append(len(chunk))
                    chunk, size = [], 0
                chunk.append(name)
                size += cost
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
            if not isinstance(plan.get(name), typ) or isinstance(plan.get(name), bool):
                raise EtcdDataError(
                    f"value at {self.store.key(self.k.plan)} has a bad {name!r}: {plan.get(name)!r:.80}")
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
                raise EtcdDataError(f"file list chunk {n} of dataset {self.ds_id} is missing or malformed")
            if len(self._chunks) > 8:
                self._chunks.pop(next(iter(self._chunks)))
            self._chunks[n] = value
        return self._chunks[n]

    # ------------------------------------------------------------------ claim
    def try_claim(self) -> Optional[Claim]:
        """Claim a free slice now, or return None if none is free."""
        if self._next is not None:
            claim, self._next = self._next, None
            claim.claimed_at = time.time()
            return claim
        st, tx = self.store, self.store.tx
        for _ in range(4 * CANDIDATES):
            if not self._candidates:
                self._refill_candidates()
                if not self._candidates:
                    return None
            # Alone (standalone), go in order; among peers, pick at random so claims rarely collide.
            pick = 0 if getattr(self.session, "standalone", False) else random.randrange(len(self._candidates))
            sid, value, mod_rev = self._candidates.pop(pick)
            claim, attempts = self._new_attempt(sid, value)
            t0 = time.monotonic()
            if self._take(claim, f"claim slice {sid}", st.key(self.k.claim + sid),
                          [tx.mod(st.key(self.k.todo + sid)) == mod_rev],
                          [tx.delete(st.key(self.k.todo + sid)),
                           tx.put(st.key(self.k.attempts + sid), dumps(attempts))],
                          claim.record):
                claim.claim_latency = time.monotonic() - t0
                return claim
            # Lost to another worker: our window is contended; look elsewhere next time.
            self._candidates = []
        return None

    def _new_attempt(self, sid: str, todo: Dict[str, Any]) -> Tuple[Claim, Dict[str, Any]]:
        """A new primary attempt at free slice ``sid`` (its todo value given): the Claim, whose
        ``record`` is what the claim key will hold, and the ``attempts/<s>`` value to write."""
        previous = todo.get("a", 0)
        attempt_no = previous + 1 if isinstance(previous, int) and not isinstance(previous, bool) else 1
        error = todo.get("e") if isinstance(todo.get("e"), str) else None
        me = self.session.worker_id
        attempt = f"{me}.{uuid.uuid4().hex[:8]}"
        claim = Claim(self, sid, self.slice_index(sid), attempt, attempt_no, self.session.lease_generation)
        claim.record = {"w": me, "at": attempt, "a": attempt_no, "t": time.time()}
        return claim, {"a": attempt_no, "e": error, "w": me, "b": 0}

    def _claim_ops(self, sid: str, value: Dict[str, Any], lease) -> Tuple[Claim, Dict[str, Any], list]:
        """The claim of candidate ``sid``: its Claim, its record, and the operations that take it."""
        st, tx = self.store, self.store.tx
        claim, attempts = self._new_attempt(sid, value)
        ops = [tx.delete(st.key(self.k.todo + sid)),
               tx.put(st.key(self.k.claim + sid), dumps(claim.record), lease=lease),
               tx.put(st.key(self.k.attempts + sid), dumps(attempts))]
        return claim, claim.record, ops

    def _piggyback(self, lease) -> Optional[Tuple[Claim, Any]]:
        """A nested transaction claiming one more free slice, to ride inside a commit.

        One transaction per slice instead of two: the commit of a slice also claims the next one
        (when the caller will ask for it, as the SDK clients do), if that candidate is still free.
        """
        if not self._candidates:
            self._refill_candidates()
        while self._candidates:
            sid, value, mod_rev = self._candidates.pop(
                0 if getattr(self.session, "standalone", False) else random.randrange(len(self._candidates)))
            try:
                claim, _, ops = self._claim_ops(sid, value, lease)
            except ValueError:
                continue
            tx, st = self.store.tx, self.store
            return claim, tx.txn([tx.mod(st.key(self.k.todo + sid)) == mod_rev], ops, [])
        return None

    def _refill_candidates(self) -> None:
        """Candidate free slices: a random window of the todo keys, else the first ones.

        Every worker reading the *first* free slices makes them all race for the same keys (each lost
        race is a wasted transaction); a random, bounded window spreads them out, and a bounded key
        range keeps the read cheap (etcd counts every key of a range, whatever the limit).
        """
        st, todo = self.store, self.k.todo
        found: List[Tuple[str, bytes, Any]] = []
        standalone = getattr(self.session, "standalone", False)
        if not standalone and self.num_slices > CANDIDATES:
            for _ in range(2):
                r = random.randrange(self.num_slices)
                end = r + CLAIM_WINDOW
                found = self._todo_range(todo + self.slice_id(r),
                                         todo + self.slice_id(end) if end < self.num_slices else None)
                if found:
                    break
        if not found:
            found = self._todo_range(todo, None)
        self._candidates = []
        for rel, raw, meta in found:
            sid = rel[len(todo):]
            if self._planned(sid) is None:
                self._ignore(rel, "its slice id is not in the plan")
                continue
            try:
                value = loads(raw, st.key(rel))
            except EtcdDataError:
                value = {}  # a todo key's presence is what counts; its attempt count restarts
            self._candidates.append((sid, value, meta.mod_revision))

    def _todo_range(self, start_rel: str, end_rel: Optional[str]) -> List[Tuple[str, bytes, Any]]:
        """Up to CANDIDATES todo keys from ``start_rel`` (raw values: one bad value spoils no claim)."""
        st = self.store
        start = st.key(start_rel)
        end = (st.key(end_rel) if end_rel is not None
               else pyetcd.utils.prefix_range_end(pyetcd.utils.to_bytes(st.key(self.k.todo))))
        items = st.call(f"range {start}", lambda c: list(c.get_range(
            start, end, limit=CANDIDATES, sort_order="ascend", sort_target="key")))
        n = len(st.prefix)
        return [(meta.key.decode("utf-8", "replace")[n:], raw, meta) for raw, meta in items]

    def _take(self, claim: Claim, what: str, key: str, compare: list, ops: list, record: Dict[str, Any]) -> bool:
        """Create ``key`` (our attempt, bound to our lease) with ``ops`` if ``compare`` holds.

        The heartbeat goes in the same transaction, listing the new attempt, so the master always
        knows which slices a worker held when it died.
        """
        st, tx = self.store, self.store.tx
        session = self.session
        session.track(claim)
        try:
            claim.record = record

            def txn(lease):
                claim.lease_generation = session.lease_generation
                success = [tx.put(key, dumps(record), lease=lease), *ops]
                if session._register:
                    success.append(tx.put(st.key(keys.beat(session.worker_id)),
                                          dumps(session.beat_value("working")), lease=lease))
                return st.txn(what, compare, success, [tx.get(key)])

            ok, responses = session.leased(txn)
            if not ok:
                # A retried transaction whose first try did apply: the key holds our own attempt.
                existing = responses[0] if responses else []
                ok = bool(existing) and loads(existing[0][0], key).get("at") == claim.attempt
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

    def try_copy(self) -> Optional[Claim]:
        """Start a speculative copy of the longest-running slice held by another worker, if worth it."""
        if not self.speculation or self.max_copies < 1:
            return None
        st, tx = self.store, self.store.tx
        me = self.session.worker_id
        held = list(self._holds(self.k.claim))
        if not held:
            return None
        # A holder waiting for slices (or done) has finished its slice and only not committed it yet.
        beats = self._beats()
        held = [(sid, v, m) for sid, v, m in held if not records.beat_parks(beats.get(v["w"]), f"{self.ds_id}/{sid}")]
        metas = {sid: meta for sid, _, meta in held}
        mine = {sid for ds, sid, _ in list(self.session.claims) if ds == self.ds_id}
        age_needed = speculation.min_age(self._recent_durations(), self.speculation_multiplier)
        candidates = speculation.copy_candidates([(sid, v) for sid, v, _ in held], me, mine, time.time(),
                                                 age_needed)
        for _, sid, record in candidates[:4]:
            attempts, att_meta = self._attempts(sid)
            if attempts is None or attempts.get("a") != record["a"]:
                continue  # the attempt we saw is over already
            if attempts.get("e"):
                continue  # earlier attempts failed: a copy would more likely die the same way than win
            copies = attempts.get("b") if isinstance(attempts.get("b"), int) else 0
            if copies >= self.max_copies:
                continue
            try:
                index = self.slice_index(sid)
            except ValueError:
                continue
            attempt = f"{me}.{uuid.uuid4().hex[:8]}"
            claim = Claim(self, sid, index, attempt, record["a"], self.session.lease_generation, backup=True)
            key = st.key(self.k.backup_of(sid, me))
            mine_rec = {"w": me, "at": attempt, "a": record["a"], "t": time.time(), "of": record.get("at")}
            self.session.copies_started += 1
            if self._take(claim, f"copy slice {sid}", key,
                          [tx.mod(st.key(self.k.claim + sid)) == metas[sid].mod_revision,
                           tx.mod(st.key(self.k.attempts + sid)) == att_meta.mod_revision,
                           tx.version(st.key(self.k.done + sid)) == 0],
                          [tx.put(st.key(self.k.attempts + sid), dumps(dict(attempts, b=copies + 1))),
                           tx.put(st.key(keys.stats(me)), dumps(self.session.stats_value()))],
                          mine_rec):
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
            if self.is_complete():
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

    # ------------------------------------------------------------------ commit
    def commit(self, claim: Claim, claim_next: bool = False) -> bool:
        """Commit an attempt; True if it is the one commit of its slice. Publishes or discards outputs.

        ``claim_next``: also claim the next free slice in the same transaction; the following
        :meth:`try_claim`/:meth:`next_claim` returns it. Only for callers that do ask for the next
        slice right after (a claim nobody asks for is held until the process exits).
        """
        st, tx = self.store, self.store.tx
        session = self.session
        sid = claim.slice_id
        now = time.time()
        dt = max(0.0, now - claim.claimed_at)
        record = {
            "w": session.worker_id,
            "at": claim.attempt,
            "a": claim.attempt_no,
            "t": now,
            "dt": round(dt, 4),
            "n": claim.items,
            "out": [{"sink": sink.describe(), "ref": ref} for sink, ref in claim.outputs],
        }
        if claim.backup:
            record["spec"] = True
        # Latencies for the master's histograms: this attempt's claim, the worker's previous commit.
        if claim.claim_latency is not None:
            record["lc"] = round(claim.claim_latency, 6)
        if getattr(session, "last_commit_latency", None) is not None:
            record["lm"] = round(session.last_commit_latency, 6)
        for sink in {id(sink): sink for sink, _ in claim.outputs}.values():
            if id(sink) not in self._agreed:
                self.agree_sink(sink.describe())
                self._agreed.add(id(sink))
        session.untrack(claim)
        commit_t0 = time.monotonic()
        stats = self._stats_if_won(claim, dt, now)
        backup_prefix = st.key(self.k.backup + sid + "/")
        done_key = st.key(self.k.done + sid)
        held_key = st.key(self.k.backup_of(sid, session.worker_id) if claim.backup else self.k.claim + sid)

        def txn(lease):
            success = [
                tx.put(done_key, dumps(record)),
                tx.delete(st.key(self.k.claim + sid)),
                tx.delete(st.key(self.k.todo + sid)),
                tx.delete(st.key(self.k.failed + sid)),
                tx.delete(st.key(self.k.attempts + sid)),
                tx.delete(backup_prefix, range_end=pyetcd.utils.prefix_range_end(backup_prefix.encode())),
                tx.put(st.key(keys.stats(session.worker_id)), dumps(stats)),
            ]
            piggy[:] = []
            extra = None
            if claim_next and self._next is None and self.plan is not None:
                extra = self._piggyback(lease)
            if session._register:
                # The beat lists the slice claimed in this very transaction: were the worker to die
                # now, the master must know it held that one too.
                also = [f"{self.ds_id}/{extra[0].slice_id}"] if extra is not None else []
                success.append(tx.put(st.key(keys.beat(session.worker_id)),
                                      dumps(session.beat_value("working" if also else None, also=also)),
                                      lease=lease))
            if extra is not None:  # last: its reply is the last response, read below
                piggy.append(extra[0])
                success.append(extra[1])
            compare = [tx.version(done_key) == 0]
            if claim.record is not None:
                # Only while our attempt still holds its claim or copy key: one whose lease expired
                # (the worker was cut off or stopped past the TTL) or that was given back on SIGTERM
                # must never commit, even if nobody else has yet.
                compare.append(tx.value(held_key) == dumps(claim.record))
            return st.txn(f"commit slice {sid}", compare, success, [tx.get(done_key)])

        piggy: List[Claim] = []
        ok, responses = session.leased(txn)
        session.last_commit_latency = time.monotonic() - commit_t0
        if ok and piggy and responses and responses[-1].WhichOneof("response") == "response_txn" \
                and responses[-1].response_txn.succeeded:
            self._next = piggy[0]
            session.track(self._next)
        if not ok:
            # A retried transaction whose first try did commit sees its own record: still a win.
            existing = responses[0] if responses else []
            if existing:
                rec = loads(existing[0][0], done_key)
                ok = rec.get("at") == claim.attempt
        if ok:
            if session.first_commit is None:
                session.first_commit = now
            session.slices_committed += 1
            session.items_committed += claim.items
            session.recent.append(dt)
            session.busy += dt
            if claim.backup:
                session.copies_won += 1
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
        st, tx = self.store, self.store.tx
        sid = claim.slice_id
        for sink, ref in claim.outputs:
            sink.discard(ref)
        claim.outputs = []
        self.session.untrack(claim)
        # A copy gives back only itself; the primary attempt it shadows goes on.
        key = st.key(self.k.backup_of(sid, self.session.worker_id) if claim.backup else self.k.claim + sid)
        if claim.record is not None:  # only our own attempt: after a lost lease the key may be another's
            st.txn(f"release slice {sid}", [tx.value(key) == dumps(claim.record)], [tx.delete(key)])
        if error and not claim.backup:
            self.record_error(sid, self.session.worker_id, error)
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
        st, tx = self.store, self.store.tx
        error = error[-2000:]
        attempts, meta = self._attempts(sid)
        if attempts is None or attempts.get("w") != worker_id:
            return False
        ok, _ = st.txn(f"record error of slice {sid}", [tx.mod(st.key(self.k.attempts + sid)) == meta.mod_revision],
                       [tx.put(st.key(self.k.attempts + sid), dumps(dict(attempts, e=error)))])
        for prefix, fmt in ((self.k.todo, "{e}"), (self.k.failed, "failed {a} attempts; last: {e}")):
            value, vmeta = self._tolerant_get(prefix + sid)
            if value is not None and value.get("e") != error and not value.get("w"):
                text = fmt.format(a=value.get("a", attempts.get("a")), e=error)
                st.txn(f"record error of slice {sid}", [tx.mod(st.key(prefix + sid)) == vmeta.mod_revision],
                       [tx.put(st.key(prefix + sid), dumps(dict(value, e=text, w=worker_id)))])
        return ok

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
                held.setdefault(sid, []).append(record["w"])
        return held

    def _holds(self, prefix: str) -> Iterable[Tuple[str, Dict[str, Any], Any]]:
        """(slice id, record, metadata) of the valid claims (``claim/``) or copies (``backup/``)
        of planned slices; any other key there is stale and deleted (see :meth:`in_flight`)."""
        for rel, raw, meta in self.store.iter_prefix_chunks(prefix):
            sid = rel[len(prefix):].split("/", 1)[0]  # backup/<slice>/<worker>
            try:
                record = loads(raw, self.store.key(rel))
            except EtcdDataError:
                record = None
            worker = records.holder(record)
            if worker is None or not meta.lease_id or self._planned(sid) is None:
                self._clear_stale(rel, meta, "bound to no lease" if worker is not None and not meta.lease_id
                                  else "not a claim of a planned slice")
                continue
            yield sid, record, meta

    def _clear_stale(self, rel: str, meta: Any, why: str) -> None:
        st, tx = self.store, self.store.tx
        key = st.key(rel)
        ok, _ = st.txn(f"clear stale {key}", [tx.mod(key) == meta.mod_revision], [tx.delete(key)])
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

    def _attempts(self, sid: str) -> Tuple[Optional[Dict[str, Any]], Any]:
        return self._tolerant_get(self.k.attempts + sid)

    def _tolerant_get(self, rel: str) -> Tuple[Optional[Dict[str, Any]], Any]:
        """A slice record and its metadata; a malformed value reads as an empty record (the key's
        revision still guards the transactions that rewrite it), so a hand-written value cannot
        stop the worker or the master that meets it."""
        key = self.store.key(rel)
        raw, meta = self.store.call(f"get {key}", lambda c: c.get(key))
        if raw is None:
            return None, None
        try:
            return loads(raw, key), meta
        except EtcdDataError:
            self._ignore(rel, "its value is not a slice record")
            return {}, meta

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
        done, failed = self.completion()
        settled = set(done) | set(failed)
        open_slices = {sid: holders for sid, holders in held.items() if sid not in settled}
        if len(settled) + len(open_slices) < self.num_slices:
            return False
        beats = self._beats()
        me = speculation.family(self.session.worker_id)
        for sid, holders in open_slices.items():
            ref = f"{self.ds_id}/{sid}"
            if not any(speculation.family(h) == me or records.beat_parks(beats.get(h), ref) for h in holders):
                return False
        return True

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
        st, tx = self.store, self.store.tx
        attempts = self._attempts(sid)[0] or {}
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
        st = self.store
        start, end = st.key(prefix + self.slice_id(0)), st.key(prefix + self.slice_id(self.num_slices))
        if len(self.slice_id(self.num_slices)) > self.plan["width"]:  # the range ends past the widest id
            end = st.key(prefix + ":")  # ':' sorts right after '9'
        return st.call(f"count {start}", lambda c: c.get_range_response(start, end, count_only=True).count)

    def is_complete(self) -> bool:
        """Every planned slice committed or failed, by records that validate (see :mod:`.records`).

        Raw key counts come first: they are cheap, and forged keys can only inflate them, so a
        count short of the plan settles it. Only a count that claims completion is checked key
        by key.
        """
        st = self.store
        if st.count(self.k.done) + st.count(self.k.failed) < self.num_slices:
            return False
        done, failed = self.completion()
        return len(set(done) | set(failed)) >= self.num_slices

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
            key = self.store.key(self.k.retaken)
            _, meta = self.store.call(f"get {key}", lambda c: c.get(key))  # only its revision counts
            retaken = meta.mod_revision if meta is not None else 0
            if retaken != self._retaken_rev:
                self._retaken_rev, since = retaken, 0
        if since and self.store.count(prefix) < len(known):
            since = 0  # records vanished (deleted by hand): read everything again
        if not since:
            known.clear()
            self._scanned_rev[kind] = 0
        for sid, _, meta in self._believed(kind, self._records_since(prefix, since)):
            self._scanned_rev[kind] = max(self._scanned_rev[kind], meta.mod_revision)
            known[sid] = meta.mod_revision
        return known

    def _records_since(self, prefix: str, since: int) -> Iterable[Tuple[str, bytes, Any]]:
        if not since:
            return self.store.iter_prefix_chunks(prefix)
        absolute = self.store.key(prefix)
        n = len(self.store.prefix)
        items = self.store.call(f"range {absolute}", lambda c: list(
            c.get_prefix(absolute, min_mod_revision=since + 1)))
        return [(meta.key.decode("utf-8", "replace")[n:], raw, meta) for raw, meta in items]

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
        st, tx = self.store, self.store.tx
        current = self.agreed_sink()
        if current is None:
            key = st.key(self.k.sink)
            ok, _ = st.txn("agree on the output sink", [tx.version(key) == 0], [tx.put(key, dumps(description))])
            current = description if ok else self.agreed_sink()
            self._sink = current
        if dumps(current) != dumps(description):
            raise ConfigError(f"dataset {self.ds_id} of this job writes its outputs to {dumps(current)}; this "
                              f"worker's output is {dumps(description)} (use the same output, or a new --job-id)")

    # ------------------------------------------------------------------ finalize
    def committed(self) -> Iterable[Tuple[str, Dict[str, Any]]]:
        """(slice id, record) of every validated commit, in slice order."""
        for sid, record, _ in self._believed("done", self.store.iter_prefix_chunks(self.k.done)):
            yield sid, record

    def failed(self) -> Iterable[Tuple[str, Dict[str, Any]]]:
        for sid, record, _ in self._believed("failed", self.store.iter_prefix_chunks(self.k.failed)):
            yield sid, record

    def _believed(self, kind: str, entries: Iterable[Tuple[str, bytes, Any]]):
        """(slice id, record, metadata) of the ``done``/``failed`` entries that validate: one outside
        the plan is ignored (logged once); a record of a planned slice that does not validate is
        refused, naming its key (that slice could never be committed for real)."""
        prefix = self.k.done if kind == "done" else self.k.failed
        for rel, raw, meta in entries:
            sid = rel[len(prefix):]
            if self._planned(sid) is None:
                self._ignore(rel, "its slice id is not in the plan")
                continue
            record = loads(raw, self.store.key(rel))
            # The agreed sink is read only for a record with outputs (one etcd read per record
            # while none is agreed, e.g. every record of a job writing no outputs, added up).
            outputs = isinstance(record, dict) and bool(record.get("out"))
            problem = (records.commit_problem(record, self.agreed_sink() if outputs else self._sink)
                       if kind == "done" else records.failure_problem(record))
            if problem is not None:
                raise EtcdDataError(f"refusing the record at {self.store.key(rel)}: {problem}")
            yield sid, record, meta

    def finalize_unless_mastered(self) -> None:
        """Finalize now, unless a master runs the job: it finalizes once every worker has exited.

        A worker finalizing while its peers still run moot attempts would race them: a losing copy
        still uploading its MaxCompute block, or writing its staged file, could land after the
        session was sealed or the staging area cleaned, and so be published. Only a job without
        a master (standalone, or workers started by hand) finalizes from a worker.
        """
        key = self.store.key(keys.MASTER)
        raw, _ = self.store.call(f"get {key}", lambda c: c.get(key))
        if raw is None:
            self.finalize()

    def finalize(self) -> bool:
        """Publish every committed output (again, idempotently) and close per-job sinks, once.

        Run by the master once every worker has exited (see :meth:`finalize_unless_mastered`), or in
        a job without a master by the first worker to see the dataset complete; it repairs a crash
        between a commit and its publish.
        Only the dataset's agreed sink is ever rebuilt: every record was checked to name it.
        """
        st, tx = self.store, self.store.tx
        if st.get_value(self.k.finalized) is not None:
            return True
        ok, _ = self.session.leased(lambda lease: st.txn(
            "take finalizer", [tx.version(st.key(self.k.finalizing)) == 0],
            [tx.put(st.key(self.k.finalizing), dumps({"w": self.session.worker_id}), lease=lease)]))
        if not ok:
            return False
        try:
            pairs = [(sid, out["ref"]) for sid, record in self.committed() for out in record.get("out") or []]
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
