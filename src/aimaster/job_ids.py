"""New job ids: one home for the name every command that starts a job without ``--job-id`` gives it.

``aimaster run`` and ``aimaster slurm script`` both need one; the engines must not import the
command line to get it (an import circle), so it lives below both.
"""

from __future__ import annotations

import datetime
import uuid


def new_job_id() -> str:
    """``job-YYYYmmdd-HHMMSS-xxxx``: sortable by start time, unique by its random suffix."""
    return datetime.datetime.now().strftime("job-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
