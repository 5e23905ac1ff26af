"""Validation of the slice records read back from etcd, in one place.

Anybody who can write the job's keys (a bug, a stale process of another version, a hostile user)
can put anything under ``done/`` or ``failed/``. Completion and publishing act on those records, so
a record is believed only when it describes something this job can have produced: a slice id of
the plan, an attempt, and outputs staged in the dataset's own output sink. Each check returns
the reason a record is refused (``None`` when it is sound), so callers can name the key.

The records themselves are frozen dataclasses below (:class:`ClaimRecord`, :class:`TodoRecord`,
:class:`AttemptRecord`, :class:`CommitRecord`, :class:`FailureRecord`, :class:`SlotRecord`): every
module builds and reads them here, never as dicts of one-letter keys of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from aimaster.data.store import dumps, loads
from aimaster.errors import EtcdDataError


def planned_index(slice_id: str, width: int, num_slices: int) -> Optional[int]:
    """The index of ``slice_id`` if it is one of the plan's ids (exactly as the plan spells them)."""
    if not isinstance(slice_id, str) or len(slice_id) != width or not slice_id.isdigit():
        return None
    index = int(slice_id)
    return index if index < num_slices else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def commit_problem(record: Any, sink: Optional[Mapping[str, Any]]) -> Optional[str]:
    """Why a ``done/<slice>`` record is not a commit of this job (None if it is one).

    ``sink`` is the dataset's output sink as agreed in etcd (None: no output agreed yet). A record
    with outputs must name exactly that sink: the finalizer republishes from records alone, so a
    record naming another directory would otherwise move files wherever it says.
    """
    if not isinstance(record, dict):
        return "it is not an object"
    if not isinstance(record.get("at"), str) or not record["at"]:
        return "it names no attempt"
    if not isinstance(record.get("w"), str):
        return "it names no worker"
    for name in ("n", "a"):
        if name in record and not (isinstance(record[name], int) and not isinstance(record[name], bool)):
            return f"its {name!r} is not an integer"
    for name in ("t", "dt"):
        if name in record and not _is_number(record[name]):
            return f"its {name!r} is not a number"
    outputs = record.get("out", [])
    if not isinstance(outputs, list):
        return "its outputs are not a list"
    for out in outputs:
        if not isinstance(out, dict) or not isinstance(out.get("sink"), dict) or not isinstance(out.get("ref"), dict):
            return "an output entry is malformed"
        if sink is None:
            return "it has outputs but the dataset has agreed on no output sink"
        if dumps(out["sink"]) != dumps(dict(sink)):
            return f"an output names a sink outside the job's output ({dumps(out['sink'])[:200]})"
    return None


def failure_problem(record: Any) -> Optional[str]:
    """Why a ``failed/<slice>`` record is not one this job wrote (None if it is)."""
    if not isinstance(record, dict):
        return "it is not an object"
    if "e" in record and record["e"] is not None and not isinstance(record["e"], str):
        return "its error is not a string"
    return None


def holder(record: Any) -> Optional[str]:
    """The worker id a claim or copy record names, or None when the record is malformed."""
    if isinstance(record, dict) and isinstance(record.get("w"), str) and isinstance(record.get("at"), str):
        return record["w"]
    return None


def beat_parks(beat: Any, ref: str) -> bool:
    """Whether a heartbeat says its worker waits for slices (or is done) while holding ``ref``.

    Such a worker has finished the slice and will commit it when its program gets there (the
    PAI ``DataWriter`` commits the previous slice only after asking for the next one): the slice
    can come back to the pool only if that worker dies.
    """
    if not isinstance(beat, dict) or beat.get("state") not in ("waiting", "done"):
        return False
    held = beat.get("held")
    return isinstance(held, list) and ref in held


# ---------------------------------------------------------------------------------- typed records
# The slice records, one frozen dataclass each. ``to_json`` writes the compact keys older data and
# every reader know (``"w"``, ``"at"``, ``"a"``, ...); ``from_json`` validates once, here, and refuses
# a value aimaster would not have written with an :class:`EtcdDataError` naming its key.

def _decode(raw: Any, key: str) -> Dict[str, Any]:
    """The JSON object ``raw`` holds (bytes or str as read from etcd, or an already decoded value)."""
    if isinstance(raw, (bytes, bytearray, str)):
        value = loads(raw.encode("utf-8") if isinstance(raw, str) else bytes(raw), key, expect=None)
    else:
        value = raw
    if not isinstance(value, dict):
        raise EtcdDataError(f"refusing the record at {key}: it is not an object")
    return value


def _refuse(key: str, problem: str) -> EtcdDataError:
    return EtcdDataError(f"refusing the record at {key}: {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(value: Dict[str, Any], key: str, field_name: str, check: Callable[[Any], bool], kind: str) -> Any:
    item = value.get(field_name)
    if item is not None and not check(item):
        raise _refuse(key, f"its {field_name!r} is not {kind}")
    return item


def _str(value: Any) -> bool:
    return isinstance(value, str)


def _compact(pairs: Dict[str, Any]) -> Dict[str, Any]:
    """The wire form: fields left at None are not written (as the dicts of old never had them)."""
    return {name: value for name, value in pairs.items() if value is not None}


@dataclass(frozen=True)
class ClaimRecord:
    """``claim/<s>`` (a primary attempt) or ``backup/<s>/<w>`` (a speculative copy), bound to a lease.

    ``of`` is the primary attempt a copy shadows; ``via`` the reading process whose claim a
    consuming process adopted (``frameworks.claims``). The exact JSON is compared by the commit and
    release transactions, so a claim is recognised as ours only while its key holds this record.
    """

    worker: str  # "w"
    attempt: str  # "at"
    attempt_no: Optional[int] = None  # "a"
    started: Optional[float] = None  # "t"
    of: Optional[str] = None  # "of"
    via: Optional[str] = None  # "via"

    def to_json(self) -> Dict[str, Any]:
        return _compact({"w": self.worker, "at": self.attempt, "a": self.attempt_no, "t": self.started,
                         "of": self.of, "via": self.via})

    @classmethod
    def from_json(cls, raw: Any, key: str) -> ClaimRecord:
        value = _decode(raw, key)
        if holder(value) is None:
            raise _refuse(key, "it names no worker and attempt")
        return cls(worker=value["w"], attempt=value["at"],
                   attempt_no=_optional(value, key, "a", _is_int, "an integer"),
                   started=_optional(value, key, "t", _is_number, "a number"),
                   of=_optional(value, key, "of", _str, "a string"),
                   via=_optional(value, key, "via", _str, "a string"))


@dataclass(frozen=True)
class TodoRecord:
    """``todo/<s>``: a free slice, with the attempts it has had (``"a"``) and the last error (``"e"``).

    ``worker`` (``"w"``) is who recorded that error; ``retried`` when ``aimaster retry`` put the slice
    back with a fresh budget.
    """

    attempts: int = 0  # "a"
    error: Optional[str] = None  # "e"
    worker: Optional[str] = None  # "w"
    retried: Optional[float] = None  # "retried"

    def to_json(self) -> Dict[str, Any]:
        # "e" is always written (null when none): the todo values of old always had it.
        return dict(_compact({"a": self.attempts, "w": self.worker, "retried": self.retried}), e=self.error)

    @classmethod
    def from_json(cls, raw: Any, key: str) -> TodoRecord:
        value = _decode(raw, key)
        return cls(attempts=_optional(value, key, "a", _is_int, "an integer") or 0,
                   error=_optional(value, key, "e", _str, "a string"),
                   worker=_optional(value, key, "w", _str, "a string"),
                   retried=_optional(value, key, "retried", _is_number, "a number"))

    @classmethod
    def tolerant(cls, raw: Any, key: str) -> TodoRecord:
        """A todo value as a claim reads it: its presence is what counts; a malformed value reads as
        a fresh slice (its attempt count restarts) instead of stopping the claim."""
        if raw == _PLANNED_TODO_BYTES:  # the value of nearly every claim, decoded once (records are frozen)
            return _FRESH_TODO
        try:
            return cls.from_json(raw, key)
        except EtcdDataError:
            return cls()


_FRESH_TODO = TodoRecord()
# What the planner writes for every slice (aimaster.data.planning): a fresh todo entry.
PLANNED_TODO = dumps({})
_PLANNED_TODO_BYTES = PLANNED_TODO.encode("utf-8")


@dataclass(frozen=True)
class AttemptRecord:
    """``attempts/<s>`` (no lease: it outlives the attempt): primary attempts started so far
    (``"a"``), the worker of the latest (``"w"``), copies started of it (``"b"``), the last error (``"e"``)."""

    attempts: int = 0  # "a"
    worker: Optional[str] = None  # "w"
    copies: int = 0  # "b"
    error: Optional[str] = None  # "e"

    def to_json(self) -> Dict[str, Any]:
        return dict(_compact({"a": self.attempts, "w": self.worker, "b": self.copies}), e=self.error)

    @classmethod
    def from_json(cls, raw: Any, key: str) -> AttemptRecord:
        value = _decode(raw, key)
        return cls(attempts=_optional(value, key, "a", _is_int, "an integer") or 0,
                   worker=_optional(value, key, "w", _str, "a string"),
                   copies=_optional(value, key, "b", _is_int, "an integer") or 0,
                   error=_optional(value, key, "e", _str, "a string"))


@dataclass(frozen=True)
class CommitRecord:
    """``done/<s>``: the one commit of a slice (see :func:`commit_problem` for what is believed).

    ``outputs`` are ``{"sink": description, "ref": staged ref}`` entries; ``speculative`` says a copy
    won (``"spec"``); ``claim_latency``/``commit_latency`` (``"lc"``/``"lm"``) feed the master's histograms.
    """

    worker: str  # "w"
    attempt: str  # "at"
    attempt_no: Optional[int] = None  # "a"
    committed: Optional[float] = None  # "t"
    duration: Optional[float] = None  # "dt"
    items: Optional[int] = None  # "n"
    outputs: Tuple[Dict[str, Any], ...] = ()  # "out"
    speculative: bool = False  # "spec"
    claim_latency: Optional[float] = None  # "lc"
    commit_latency: Optional[float] = None  # "lm"

    def to_json(self) -> Dict[str, Any]:
        return _compact({"w": self.worker, "at": self.attempt, "a": self.attempt_no, "t": self.committed,
                         "dt": self.duration, "n": self.items, "out": list(self.outputs),
                         "spec": True if self.speculative else None, "lc": self.claim_latency,
                         "lm": self.commit_latency})

    @classmethod
    def from_json(cls, raw: Any, key: str,
                  sink: Union[None, Mapping[str, Any], Callable[[], Optional[Mapping[str, Any]]]] = None
                  ) -> CommitRecord:
        """``sink``: the dataset's agreed output sink, or a function reading it (asked only for a
        record with outputs: one etcd read per record would add up for a job writing none)."""
        value = _decode(raw, key)
        agreed = sink() if callable(sink) and value.get("out") else (None if callable(sink) else sink)
        problem = commit_problem(value, agreed)
        if problem is not None:
            raise _refuse(key, problem)
        # The latencies are advisory (histograms): a malformed one reads as absent, never refuses.
        return cls(worker=value["w"], attempt=value["at"], attempt_no=value.get("a"), committed=value.get("t"),
                   duration=value.get("dt"), items=value.get("n"), outputs=tuple(value.get("out") or ()),
                   speculative=value.get("spec") is True,
                   claim_latency=value["lc"] if _is_number(value.get("lc")) else None,
                   commit_latency=value["lm"] if _is_number(value.get("lm")) else None)


@dataclass(frozen=True)
class FailureRecord:
    """``failed/<s>``: a slice given up on after ``attempts`` (``"a"``), with its error (``"e"``),
    when (``"t"``), and the worker whose error it is (``"w"``) once one was recorded."""

    attempts: Optional[int] = None  # "a"
    error: Optional[str] = None  # "e"
    failed: Optional[float] = None  # "t"
    worker: Optional[str] = None  # "w"

    def to_json(self) -> Dict[str, Any]:
        return _compact({"a": self.attempts, "e": self.error, "t": self.failed, "w": self.worker})

    @classmethod
    def from_json(cls, raw: Any, key: str) -> FailureRecord:
        value = _decode(raw, key)
        problem = failure_problem(value)
        if problem is not None:
            raise _refuse(key, problem)
        return cls(attempts=value.get("a") if _is_int(value.get("a")) else None, error=value.get("e"),
                   failed=value.get("t") if _is_number(value.get("t")) else None,
                   worker=value.get("w") if isinstance(value.get("w"), str) else None)


@dataclass(frozen=True)
class SlotRecord:
    """``slots/<s>/<a>.<k>`` (table outputs): the copy attempt that took block ordinal ``k``."""

    attempt: str  # "at"

    def to_json(self) -> Dict[str, Any]:
        return {"at": self.attempt}

    @classmethod
    def from_json(cls, raw: Any, key: str) -> SlotRecord:
        value = _decode(raw, key)
        if not isinstance(value.get("at"), str):
            raise _refuse(key, "it names no attempt")
        return cls(value["at"])
