"""The job report: ``report.json`` in the state directory and the summary printed at the end.

It answers what a user asks after a job, especially one that went through failures: did every
slice commit, which failed and why, how many attempts the slices took, how much speculation ran
and whether it paid off, how often and why workers were relaunched or replaced, and how fast each
worker was.

:func:`assemble` builds the whole report, in one place, from the run's own memory
(:class:`RunRecord`), the final view of the job and its datasets' records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from aimaster.data.preemption import preempted_at
from aimaster.data.records import CommitRecord
from aimaster.errors import EtcdDataError
from aimaster.master import failed_slices, runs
from aimaster.master.failed_slices import item_summary
from aimaster.master.monitor import JobView
from aimaster.master.progress import format_duration


@dataclass(frozen=True)
class RunRecord:
    """What a supervisor remembers of its run (never read back from etcd), for the report."""

    job_id: str
    command: Sequence[str]
    started: float
    generation: int
    reason: Optional[str]
    relaunches: Mapping[str, int]
    replaced: Sequence[str]
    adopted: Sequence[str]
    launched: int
    etcd_restarts: int
    worker_exits: List[Dict[str, Any]]
    spares: Mapping[str, int] = field(default_factory=dict)  # warm spares: {"started": n, "used": m}


def assemble(run: RunRecord, state: str, view: JobView, dataset: Callable[[str], Any],
             stats_by_worker: Dict[str, Dict[str, Any]], previous: Any = None,
             carry_runs: bool = True) -> Dict[str, Any]:
    """``report.json``: the run's memory, the view's counts, each dataset's committed and failed slices
    (``dataset(ds_id)``: its :class:`~aimaster.data.coordinator.Dataset`, None if unplanned), and, when
    ``carry_runs``, what all runs of the job add up to (from ``previous``, the last run's report).

    A dataset whose records read back malformed is named in ``ignored_records``; the report is still written.
    """
    failed, committed = [], []
    for d in view.datasets:
        try:
            ds = dataset(d.ds_id)
            if ds is None:
                continue
            committed += list(ds.commits())
            failed += failed_slices.failed_rows(ds)  # with each slice's items (files or row range)
        except EtcdDataError as e:  # the reason already says it, if that is why the job fails
            view.ignored.append(str(e))
    workers = worker_rows(view, stats_by_worker)
    attempts = attempts_summary(committed)
    ended = time.time()
    report = {
        "job_id": run.job_id,
        "state": state,
        "reason": run.reason,
        "command": run.command,
        "started": run.started,
        "ended": ended,
        "duration_s": round(ended - run.started, 3),
        "generation": run.generation,
        "slices": {"total": view.total, "committed": view.done, "failed": view.failed},
        "attempts": attempts,
        "speculation": speculation_summary(workers, attempts["copies_won_slices"]),
        "datasets": view.to_json()["datasets"],
        "failed_slices": failed,
        "relaunches": dict(run.relaunches),
        "replaced_slow": list(run.replaced),
        "adopted": list(run.adopted),
        "launched": run.launched,
        "warm_spares": {"started": run.spares.get("started", 0), "used": run.spares.get("used", 0)},
        "etcd_restarts": run.etcd_restarts,
        "worker_exits": run.worker_exits,
        "workers": workers,
        "ignored_records": sorted(set(view.ignored)),
    }
    if carry_runs:  # the previous run's report is still there: carry its totals on
        report["all_runs"] = runs.all_runs(previous, report)
    return report


def attempts_summary(committed: Iterable[Tuple[str, CommitRecord]]) -> Dict[str, Any]:
    """How many attempts committed slices took (from their validated commit records)."""
    counts: Dict[int, int] = {}
    copies_won = 0
    for _, record in committed:
        a = record.attempt_no if record.attempt_no is not None else 1
        counts[a] = counts.get(a, 0) + 1
        copies_won += 1 if record.speculative else 0
    total = sum(counts.values())
    return {
        "first_try": counts.get(1, 0),
        "retried": total - counts.get(1, 0),
        "max": max(counts) if counts else 0,
        "histogram": {str(k): v for k, v in sorted(counts.items())},
        "copies_won_slices": copies_won,
    }


def worker_rows(view: JobView, stats_by_worker: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """``aimaster status``'s per-worker rows, plus throughput over the worker's life until its last
    commit (start-up included) and its speculation counters."""
    rows = []
    for row, w in zip(view.to_json()["workers"], view.workers):
        stats = stats_by_worker.get(w.worker_id) or {}
        elapsed = (w.last - w.started) if w.last and w.started and w.last > w.started else None
        row.update({
            "slices_per_s": round(w.slices / elapsed, 3) if elapsed else 0.0,
            "items_per_s": round(w.items / elapsed, 2) if elapsed else 0.0,
            "copies": stats.get("copies", 0), "copies_won": stats.get("copies_won", 0),
            "copies_lost": stats.get("copies_lost", 0), "primaries_lost": stats.get("primaries_lost", 0),
            "preempted": preempted_at(stats) is not None,
        })
        rows.append(row)
    return rows


def speculation_summary(rows: List[Dict[str, Any]], copies_won_slices: int) -> Dict[str, int]:
    def total(name: str) -> int:
        return sum(int(r.get(name) or 0) for r in rows)

    return {
        "copies_started": total("copies"),
        "won": max(total("copies_won"), copies_won_slices),
        "lost": total("copies_lost"),
        # A primary beaten by a copy may never get to lose its commit (it is stopped as moot once
        # the job is done), so every slice a copy won counts as a primary beaten.
        "primaries_beaten": max(total("primaries_lost"), copies_won_slices),
    }


def summary_lines(report: Dict[str, Any], report_path: str) -> List[str]:
    s = report["slices"]
    relaunches = report.get("relaunches", {})
    lines = [f"job {report['job_id']} {report['state']} in {format_duration(report['duration_s'])}: "
             f"{s['committed']}/{s['total']} slices committed, {s['failed']} failed, "
             f"{sum(relaunches.values())} worker relaunch(es)"]
    if report.get("reason"):
        lines.append(f"  reason: {report['reason']}")
    a = report.get("attempts") or {}
    if a.get("retried"):
        lines.append(f"  attempts: {a['first_try']} slice(s) committed at the first attempt, {a['retried']} "
                     f"after retries (at most {a['max']})")
    sp = report.get("speculation") or {}
    if sp.get("copies_started") or sp.get("won"):
        lines.append(f"  speculative copies: {sp.get('copies_started', 0)} started, {sp.get('won', 0)} won, "
                     f"{sp.get('lost', 0)} lost")
    if relaunches:
        lines.append("  relaunches by cause: " + ", ".join(f"{k} {v}" for k, v in sorted(relaunches.items())))
    preempted = [e["worker"] for e in report.get("worker_exits", [])
                 if e.get("preempted") or e.get("stopped") == "preempted"]
    if preempted:
        lines.append(f"  preempted (SIGTERM; slices given back at once, not counted as failures): "
                     f"{', '.join(preempted[:12])}" + (" ..." if len(preempted) > 12 else ""))
    if report.get("replaced_slow"):
        lines.append(f"  slow workers replaced: {', '.join(report['replaced_slow'])}")
    spares = report.get("warm_spares")
    if isinstance(spares, dict) and spares.get("started"):
        lines.append(f"  warm spares: {spares['started']} started, {spares.get('used', 0)} took a slow worker's place")
    if report.get("adopted"):
        lines.append(f"  workers adopted from the previous master: {', '.join(report['adopted'])}")
    failed = report.get("failed_slices", [])
    for f in failed[:20]:
        lines.append(f"  failed slice {f['dataset']}/{f['slice']}: {f['error']}")
        if f.get("items"):
            lines.append(f"    items: {item_summary(f)}")
    if failed:
        lines.append(f"  {len(failed)} failed slice(s) with their items: aimaster status --job-id {report['job_id']} "
                     f"--failed [--json]; once the cause is fixed: aimaster retry --job-id {report['job_id']}")
    busy = [w for w in report.get("workers", []) if w.get("slices")]
    if busy:
        lines.append("  per-worker throughput: " + ", ".join(
            f"{w['worker_id']} {w['slices']} slices ({w['items_per_s']:.1f} items/s)" for w in busy[:12])
            + (" ..." if len(busy) > 12 else ""))
    lines.append(f"  report: {report_path}")
    return lines
