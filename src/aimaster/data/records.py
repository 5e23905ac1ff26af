"""Validation of the slice records read back from etcd, in one place.

Anybody who can write the job's keys (a bug, a stale process of another version, a hostile user)
can put anything under ``done/`` or ``failed/``. Completion and publishing act on those records, so
a record is believed only when it describes something this job can have produced: a slice id of
the plan, an attempt, and outputs staged in the dataset's own output sink. Each check returns
the reason a record is refused (``None`` when it is sound), so callers can name the key.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from aimaster.data.store import dumps


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

