"""The states a job goes through, as its record in etcd spells them.

``Pending`` (fewer than ``--min-workers`` registered) -> ``Running`` -> one of the terminal states
``Succeeded``, ``Failed`` or ``Stopped`` (``aimaster stop`` or Ctrl-C; resumable with the same job id).
The values are the wire format of the job record's ``state`` and of ``report.json``: a member compares
equal to, hashes like and serialises as its plain string, so readers of old records need no change.
"""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STOPPED = "Stopped"

    def __str__(self) -> str:  # f-strings and str() give the wire value, not "JobState.RUNNING"
        return self.value

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED)
# What `aimaster run` exits with when the job ends in each terminal state.
EXIT_CODES = {JobState.SUCCEEDED: 0, JobState.FAILED: 1, JobState.STOPPED: 130}
