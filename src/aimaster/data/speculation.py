"""Which in-flight slice an idle worker should copy, and when (MapReduce backup tasks, Spark speculation).

Near the end of a job the free slices run out while a few are still held, often by a slow or stuck
worker. An idle worker then starts a *speculative copy* of the slice that has been running longest;
both attempts go on and the first commit wins (the coordinator's commit transaction makes that
exclusive), the other attempt's staged output is discarded.

Copying every held slice would double the work of the last wave for nothing, so, like Spark's
``spark.speculation.multiplier``, a slice is copied only once it has run ``multiplier`` times longer
than the median slice duration of the job (pooled over every worker's recent durations, which the
workers publish with their commits). Until a few slices have committed there is no median and the
oldest slice is copied outright: with nothing else to do, a duplicate costs only idle capacity.

Pure functions over plain data, so the policy is tested without etcd. Whether to copy at all, the
multiplier and the copies per slice are job settings (:class:`aimaster.settings.JobSettings`).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

MIN_SAMPLES = 3


def median(values: Sequence[float]) -> Optional[float]:
    xs = sorted(values)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2.0


def pooled_durations(stats: Iterable[Tuple[str, Dict[str, Any]]], exclude: Optional[str] = None) -> List[float]:
    """Every worker's recent slice durations (``stats/<worker>`` ``recent``), optionally but one's."""
    out: List[float] = []
    for worker_id, value in stats:
        if worker_id == exclude or not isinstance(value, dict):
            continue
        recent = value.get("recent")
        if isinstance(recent, list):
            out += [float(x) for x in recent if isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0]
    return out


def min_age(durations: Sequence[float], factor: float) -> float:
    """How long a slice must have run before it is worth a copy."""
    if len(durations) < MIN_SAMPLES:
        return 0.0
    return factor * (median(durations) or 0.0)


def copy_candidates(claims: Iterable[Tuple[str, Dict[str, Any]]], me: str, mine: Set[str], now: float,
                    age_needed: float) -> List[Tuple[float, str, Dict[str, Any]]]:
    """(age, slice id, claim record) of slices worth copying, longest-running first.

    Our own slices are never copied (we are busy with them, or their copy is ours already), nor
    those of our own process family (a DataLoader reader ``w0.1234`` and its consumer ``w0``).
    """
    out = []
    for sid, record in claims:
        if sid in mine or not isinstance(record, dict) or family(str(record.get("w"))) == family(me):
            continue
        started = record.get("t")
        if not isinstance(started, (int, float)) or not isinstance(record.get("a"), int):
            continue
        age = now - float(started)
        if age >= age_needed:
            out.append((age, sid, record))
    out.sort(key=lambda x: -x[0])
    return out


def family(worker_id: str) -> str:
    """The worker a sub-worker (a forked reader, ``<worker>.<pid>``) belongs to: ``w0.1234`` -> ``w0``."""
    head, dot, tail = worker_id.rpartition(".")
    return head if dot and tail.isdigit() else worker_id
