"""The master pod's readiness: its etcd runs and already holds the job's record.

The etcd Service routes to the master pod only once it is *ready*, so a worker pod never meets an
etcd that does not know the job yet (``aimaster join`` would refuse it at once: "no job J", a pod
failure counted against ``backoffLimitPerIndex``); before that it is refused a connection, which it
retries for ``AIMASTER_ETCD_RETRY_SECONDS``. The check starts nothing: a state directory whose etcd
is not running is simply not ready (``aimaster status`` would start one to read the data).
"""

from __future__ import annotations

from typing import Optional

from aimaster.data import keys
from aimaster.errors import AimasterError
from aimaster.master.state_dir import JobStateDir


def not_ready(state_root: str, job_id: str, probe_seconds: float = 3.0) -> Optional[str]:
    """Why the master of ``job_id`` is not ready yet, or None when it is."""
    from aimaster.data.connect import connect

    state = JobStateDir(state_root, job_id)
    endpoint = state.running_etcd()
    if endpoint is None:
        return f"the etcd of job {job_id} is not running"
    try:
        store = connect(state.client_config(endpoint, retry_seconds=probe_seconds), job_id, probe_seconds)
        try:
            record = store.get_value(keys.JOB)
        finally:
            store.close()
    except AimasterError as e:
        return f"the etcd of job {job_id} does not answer: {e}"
    if record is None:
        return f"job {job_id} has no record in its etcd yet"
    return None
