"""What the supervisor decides, as values: each round's decisions are a list of these small frozen records.

:mod:`aimaster.master.supervisor` returns them from what it observed; :mod:`aimaster.master.apply`
carries them out through the fleet and its launcher (start a worker with an environment, stop it).
Keeping the decision a value is what lets the tests check the decision with no etcd and no process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Log:
    """Say something on the console (the master's log)."""

    message: str


@dataclass(frozen=True)
class GiveBack:
    """A worker ended: record ``error`` (if any) on the slices it held, revoke its lease, requeue them."""

    worker_id: str
    error: Optional[str] = None


@dataclass(frozen=True)
class Relaunch:
    """Start a new incarnation in ``slot``, counted under ``relaunches[cause]``: after the slot's
    crash-loop back-off (from the dead worker's ``uptime``), or after a fixed ``delay`` when set."""

    slot: int
    cause: str
    uptime: float = 0.0
    delay: Optional[float] = None


@dataclass(frozen=True)
class RestartAll:
    """``--job-execution-mode=Sync``: bump the job's restart epoch and restart every worker we run;
    ``announce``: say so (a preemption restarts the group without a message of its own)."""

    cause: str
    announce: bool = True


@dataclass(frozen=True)
class FailJob:
    """Stop every worker and end the job Failed, with ``reason`` in its record and report."""

    reason: str


@dataclass(frozen=True)
class KillWorker:
    """SIGKILL a worker (hung, or still there when it should be gone), recording ``reason`` as its stop reason."""

    worker_id: str
    reason: str
    message: Optional[str] = None
    idle: Optional[float] = None  # a hung worker: seconds without progress (for the message of another applier)


@dataclass(frozen=True)
class RecordSliceError:
    """Record ``error`` on a slice's latest attempt (the attempt is being abandoned, see --slice-timeout)."""

    ds_id: str
    slice_id: str
    worker_id: str
    error: str


@dataclass(frozen=True)
class TerminateWorker:
    """SIGTERM a worker, SIGKILL after ``grace`` seconds; never blocks the round."""

    worker_id: str
    reason: str
    grace: float = 5.0


@dataclass(frozen=True)
class ReplaceWorker:
    """A slow worker: start a fresh incarnation in its slot now; the slow one retires once that one runs."""

    worker_id: str
    pace: float
    typical: float


@dataclass(frozen=True)
class CancelPending:
    """Early stop: every slice is committed, so no pending worker start happens."""

    count: int
