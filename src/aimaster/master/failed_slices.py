"""The failed slices of a job, each with what it holds and why it failed: the list a user fixing
bad data needs (``aimaster status --failed [--json]``, the ``failed_slices`` of ``report.json``).

A row names the slice (dataset and slice id), its attempts, its last error and its *items*: the
input files of a file dataset (full paths, as the worker's ``get_next_slice()`` returned them) or
the row range of a table dataset (the ``?start=&end=`` URL the worker read). Items come from the
plan, which never changes, and the rows from validated ``failed/`` records only
(:meth:`aimaster.data.coordinator.Dataset.failed`), so nothing forged lands in the list.
"""

from __future__ import annotations

from typing import Any, Dict, List

from aimaster.errors import EtcdDataError

MAX_FILES = 1000  # per slice in a row; a slice holds ``slice_size`` files, rarely more than this


def slice_items(ds: Any, sid: str) -> Dict[str, Any]:
    """What slice ``sid`` of dataset ``ds`` holds: ``{"files": [...]}`` or ``{"table", "start", "end", "url"}``."""
    plan = ds.plan
    index = ds.slice_index(sid)
    if plan["kind"] == "files":
        from aimaster.io import files

        base = plan["source"].get("base")
        names = ds.items(index)
        paths = [files.join(base, n) for n in names] if isinstance(base, str) and base else names
        out: Dict[str, Any] = {"files": paths[:MAX_FILES]}
        if len(paths) > MAX_FILES:
            out["more_files"] = len(paths) - MAX_FILES
        return out
    lo, hi = ds.item_range(index)
    offset = plan["source"].get("offset")
    offset = offset if isinstance(offset, int) and not isinstance(offset, bool) else 0
    url = plan["source"].get("url")
    out = {"start": offset + lo, "end": offset + hi}
    if isinstance(url, str):
        out.update(table=url, url=f"{url}?start={offset + lo}&end={offset + hi}")
    return out


def failed_rows(ds: Any) -> List[Dict[str, Any]]:
    """One row per failed (and not since committed) slice of ``ds``, in slice order."""
    done, _ = ds.completion()
    rows = []
    for sid, record in ds.failures():
        if sid in done:
            continue
        row: Dict[str, Any] = {"dataset": ds.ds_id, "slice": sid, "error": record.error,
                               "attempts": record.attempts}
        try:
            row["items"] = slice_items(ds, sid)
        except EtcdDataError as e:  # a file-list chunk gone bad: the row still says which slice
            row["items"] = {"error": str(e)}
        rows.append(row)
    return rows


def item_summary(row: Dict[str, Any], limit: int = 3) -> str:
    """A short, one-line account of a row's items for the terminal."""
    items = row.get("items") or {}
    if "files" in items:
        names = items["files"]
        more = len(names) - limit + int(items.get("more_files", 0))
        return ", ".join(names[:limit]) + (f" (+{more} more)" if more > 0 else "")
    if "url" in items:
        return items["url"]
    if "start" in items:
        return f"rows {items['start']}..{items['end']}"
    return items.get("error", "")
