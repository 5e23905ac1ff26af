"""What all the runs of a resumed job add up to, for its report and end summary.

A job stopped, failed or killed and run again with the same ``--job-id`` resumes: its slices count
what every run committed (they are read from etcd), but each run's own report knows only its own
duration, relaunches and launches. The previous run's ``report.json`` is still in the state directory
when a run ends, so the totals are carried from one report to the next (``all_runs``). A run killed
before it wrote its report is missing from them; ``runs_reported`` says how many are in.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from aimaster.master.progress import format_duration


def _num(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else 0


def _counts(value: Any) -> Dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): int(v) for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}


def all_runs(previous: Optional[Dict[str, Any]], report: Dict[str, Any]) -> Dict[str, Any]:
    """This run's totals plus those carried by the previous run's report (of this job, an earlier
    generation; anything else -- another job's file, a malformed one -- is not added)."""
    this = {"runs_reported": 1, "duration_s": _num(report.get("duration_s")),
            "relaunches": _counts(report.get("relaunches")), "launched": int(_num(report.get("launched")))}
    generation = report.get("generation")
    if not isinstance(previous, dict) or previous.get("job_id") != report.get("job_id"):
        return this
    prev_gen = previous.get("generation")
    if not (isinstance(prev_gen, int) and isinstance(generation, int) and prev_gen < generation):
        return this
    carried = previous.get("all_runs") if isinstance(previous.get("all_runs"), dict) else {
        "runs_reported": 1, "duration_s": previous.get("duration_s"), "relaunches": previous.get("relaunches"),
        "launched": previous.get("launched")}
    relaunches = _counts(carried.get("relaunches"))
    for cause, n in this["relaunches"].items():
        relaunches[cause] = relaunches.get(cause, 0) + n
    return {"runs_reported": int(_num(carried.get("runs_reported"))) + 1,
            "duration_s": round(_num(carried.get("duration_s")) + this["duration_s"], 3),
            "relaunches": relaunches, "launched": int(_num(carried.get("launched"))) + this["launched"]}


def summary_lines(report: Dict[str, Any]) -> List[str]:
    """One line for the end summary of a resumed job: what every run added up to."""
    runs = report.get("all_runs")
    generation = report.get("generation")
    if not isinstance(runs, dict) or not isinstance(generation, int) or generation < 2:
        return []
    reported = runs.get("runs_reported", 1)
    missing = f" ({generation - reported} without a report: killed)" if reported < generation else ""
    return [f"  all {generation} runs of the job{missing}: {format_duration(runs.get('duration_s'))} in all, "
            f"{sum(runs.get('relaunches', {}).values())} worker relaunch(es), {runs.get('launched', 0)} worker "
            f"start(s); the slices above count every run"]
