"""What the master and ``aimaster status`` believe of the job-level records they read back from etcd.

Anybody who can write the job's keys (a bug, a stale process of another version, a hostile user)
can put anything there, and the master acts on what it reads: it adopts and signals the pids that
registrations name, counts live workers, waits for them, decides when the job is over. So every
value is checked for the shape aimaster writes before it is used, and what is wrong is handled by
what the value is for:

* per-worker *advisory* data -- a registration (``workers/<w>``), a heartbeat (``beat/<w>``),
  counters (``stats/<w>``), the age of a claim -- is left out, with a warning naming the key: the
  job's outcome does not rest on it, and one stray key must not stop a thousand workers. A
  registration also has to be bound to a lease (a live worker's is): a hand-written one never
  expires and would keep the master waiting for a worker that does not exist;
* the job record (``job``) and a dataset's plan are what the job's outcome rests on: a value of the
  wrong shape, or a plan that changed after it was made (plans never change), ends the job Failed
  with an :class:`~aimaster.errors.EtcdDataError` naming the key (the master's own job record is
  kept in memory, so the end is written over whatever was there).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from aimaster.data.coordinator import slice_id_width
from aimaster.data.store import Store, loads
from aimaster.errors import EtcdDataError
from aimaster.master.job_state import JobState

JOB_STATES = tuple(s.value for s in JobState)

Problem = Optional[str]  # why a value is refused; None when it is sound


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _fields(value: Dict[str, Any], checks: Dict[str, Tuple[Callable[[Any], bool], str]]) -> Problem:
    for name, (ok, what) in checks.items():
        if name in value and not ok(value[name]):
            return f"its {name!r} is not {what}: {value[name]!r:.60}"
    return None


_NUM_OR_NONE = (lambda v: v is None or _is_num(v), "a number")
_COUNT = (_is_int, "a non-negative integer")
_STR = (lambda v: isinstance(v, str), "a string")


# ---------------------------------------------------------------------------------- the job record
def job_problem(value: Any) -> Problem:
    if not isinstance(value, dict):
        return "it is not an object"
    if value.get("state") not in JOB_STATES:
        return f"its state {value.get('state')!r:.40} is not one of {', '.join(JOB_STATES)}"
    return _fields(value, {
        "generation": _COUNT, "workers": _COUNT, "min_workers": _COUNT,
        "created": _NUM_OR_NONE, "updated": _NUM_OR_NONE, "ended": _NUM_OR_NONE, "running_since": _NUM_OR_NONE,
        "reason": (lambda v: v is None or isinstance(v, str), "a string"),
        "command": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
        "options": (lambda v: isinstance(v, dict), "an object"),
        "resumed": (lambda v: isinstance(v, bool), "true or false"),
    })


def check_job(value: Any, key: str) -> Optional[Dict[str, Any]]:
    """The job record read from ``key`` (None: not written yet); EtcdDataError if it is not one."""
    if value is None:
        return None
    problem = job_problem(value)
    if problem is not None:
        raise EtcdDataError(f"value at {key} is not a job record: {problem}")
    return value


# ---------------------------------------------------------------------------------- a dataset plan
def plan_problem(plan: Any) -> Problem:
    """Why a plan is not one a planner wrote (its numbers must also agree with each other)."""
    if not isinstance(plan, dict):
        return "it is not an object"
    for name, ok, what in (("kind", lambda v: isinstance(v, str), "a string"),
                           ("num_items", _is_int, "a non-negative integer"),
                           ("slice_size", lambda v: _is_int(v, 1), "a positive integer"),
                           ("num_slices", _is_int, "a non-negative integer"),
                           ("width", lambda v: _is_int(v, 1), "a positive integer"),
                           ("chunks", lambda v: isinstance(v, list) and all(_is_int(x) for x in v),
                            "a list of counts"),
                           ("source", lambda v: isinstance(v, dict), "an object")):
        if not ok(plan.get(name)):
            return f"its {name!r} is not {what}: {plan.get(name)!r:.60}"
    expected = -(-plan["num_items"] // plan["slice_size"])
    if plan["num_slices"] != expected:
        return (f"its num_slices {plan['num_slices']} does not match {plan['num_items']} items in slices of "
                f"{plan['slice_size']} ({expected})")
    if plan["width"] != slice_id_width(plan["num_slices"]):
        return f"its width {plan['width']} does not match {plan['num_slices']} slices"
    if plan["chunks"] and sum(plan["chunks"]) != plan["num_items"]:
        return f"its file list chunks hold {sum(plan['chunks'])} names for {plan['num_items']} items"
    return None


def check_plan(plan: Any, key: str) -> Dict[str, Any]:
    problem = plan_problem(plan)
    if problem is not None:
        raise EtcdDataError(f"value at {key} is not a dataset plan: {problem}")
    return plan


# ---------------------------------------------------------------------------------- per-worker data
def registration_problem(value: Any, meta: Any) -> Problem:
    if not isinstance(value, dict):
        return "it is not an object"
    lease = getattr(meta, "lease_id", 0)
    if not lease:
        return "it is bound to no lease (a live worker's registration is)"
    if value.get("lease") != lease:
        return "the lease it names is not the one it is bound to"
    if not isinstance(value.get("host"), str) or not _is_int(value.get("pid"), 1):
        return "it names no host and pid"
    return _fields(value, {
        "started": (_is_num, "a number"), "ttl": _COUNT, "slot": _COUNT, "incarnation": _COUNT,
        "launcher": (lambda v: v is None or isinstance(v, str), "a string"),
    })


def beat_problem(value: Any, meta: Any = None) -> Problem:
    if not isinstance(value, dict):
        return "it is not an object"
    return _fields(value, {
        "t": (_is_num, "a number"), "state": _STR, "slices": _COUNT,
        "held": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of slices"),
    })


STATS_COUNTERS = ("slices", "items", "copies", "copies_won", "copies_lost", "primaries_lost")


def stats_problem(value: Any, meta: Any = None) -> Problem:
    if not isinstance(value, dict):
        return "it is not an object"
    checks = {name: _COUNT for name in STATS_COUNTERS}
    checks.update({
        "first": _NUM_OR_NONE, "last": _NUM_OR_NONE, "started": _NUM_OR_NONE, "busy": _NUM_OR_NONE,
        "host": _STR, "pid": _COUNT,
        "recent": (lambda v: isinstance(v, list) and all(_is_num(x) for x in v), "a list of durations"),
    })
    return _fields(value, checks)


def claim_problem(value: Any, meta: Any = None) -> Problem:
    if not isinstance(value, dict) or not isinstance(value.get("w"), str):
        return "it names no worker"
    return None


# ---------------------------------------------------------------------------------- reading
Refused = Tuple[str, int, str]  # (absolute key, mod revision, why)


def read_prefix(store: Store, prefix: str, problem_of: Callable[[Any, Any], Problem]
                ) -> Tuple[Dict[str, Tuple[Any, Any]], List[Refused]]:
    """Every value under ``prefix`` that passes ``problem_of``: ``{name after the prefix: (value,
    metadata)}``, and the refused ones, each with why (one bad value spoils no other)."""
    good: Dict[str, Tuple[Any, Any]] = {}
    refused: List[Refused] = []
    for rel, raw, meta in store.iter_prefix_chunks(prefix):
        key = store.key(rel)
        try:
            value = loads(raw, key)
        except EtcdDataError as e:
            refused.append((key, meta.mod_revision, str(e)))
            continue
        problem = problem_of(value, meta)
        if problem is not None:
            refused.append((key, meta.mod_revision, f"value at {key} is refused: {problem}"))
            continue
        good[rel[len(prefix):]] = (value, meta)
    return good, refused


class Warnings:
    """Says each refused value once (per key and revision), not every round of the master's loop."""

    def __init__(self, say: Optional[Callable[[str], None]] = None):
        self.say = say
        self._said: Dict[str, int] = {}
        self.current: List[str] = []  # the refusals of the latest read, for `aimaster status`

    def note(self, refused: List[Refused]) -> None:
        for key, rev, why in refused:
            self.current.append(why)
            if self._said.get(key) != rev:
                self._said[key] = rev
                if self.say is not None:
                    self.say(f"warning: ignoring {why}")
