"""The user's index of job state directories, so ``aimaster status`` finds a job from anywhere.

A job's state (embedded etcd data, logs, report) is in ``<root>/jobs/<job-id>/``, with ``<root>``
``./.aimaster`` by default: relative to where ``aimaster run`` was started. ``aimaster status`` run
from another directory would look in *its* ``./.aimaster`` and find nothing. So every state
directory a job is created in is noted here, one small file per job id::

    $AIMASTER_JOB_INDEX (default: $XDG_STATE_HOME/aimaster/jobs, else ~/.local/state/aimaster/jobs)
        <job-id>        JSON: {"roots": [absolute state roots, most recent last], "t": last use}

The index is advisory: it only says where to look, and every hit is checked (the job's directory
must still exist there). Entries whose directory is gone are dropped when read. Writing it never
fails a job: an unwritable home is simply not indexed.
"""

from __future__ import annotations

import json
import os
import time
from typing import List, Optional, Tuple

MAX_ROOTS = 8  # per job id: the same id used from a few directories


def index_dir() -> str:
    explicit = os.environ.get("AIMASTER_JOB_INDEX")
    if explicit:
        return explicit
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "aimaster", "jobs")


def _path(job_id: str) -> str:
    return os.path.join(index_dir(), job_id)


def _job_dir(root: str, job_id: str) -> str:
    return os.path.join(root, "jobs", job_id)


def _read(job_id: str) -> List[str]:
    try:
        with open(_path(job_id)) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return []
    roots = value.get("roots") if isinstance(value, dict) else None
    return [r for r in roots if isinstance(r, str) and os.path.isabs(r)] if isinstance(roots, list) else []


def note(root: str, job_id: str) -> None:
    """Record that job ``job_id`` has its state under ``root`` (best effort)."""
    root = os.path.abspath(root)
    roots = [r for r in _read(job_id) if r != root][-(MAX_ROOTS - 1):] + [root]
    try:
        os.makedirs(index_dir(), exist_ok=True)
        tmp = f"{_path(job_id)}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"roots": roots, "t": time.time()}, f)
        os.replace(tmp, _path(job_id))
    except OSError:
        pass


def find(job_id: str) -> Optional[str]:
    """The most recent state root holding job ``job_id``, if the index knows one that still exists."""
    for root in reversed(_read(job_id)):
        if os.path.isdir(_job_dir(root, job_id)):
            return root
    return None


def latest() -> Optional[Tuple[str, str]]:
    """``(job id, state root)`` of the most recently started job the index knows, if any still exists."""
    try:
        entries = sorted(os.scandir(index_dir()), key=lambda e: e.stat().st_mtime, reverse=True)
    except OSError:
        return None
    for entry in entries:
        if entry.name.endswith(".tmp") or not entry.is_file():
            continue
        root = find(entry.name)
        if root is not None:
            return entry.name, root
    return None
