"""What one `aimaster run`/`join`/`retry` asks of the master: the command, the worker count and every knob.

A plain value object, apart from :class:`~aimaster.master.master.Master` so that the CLI, the demo and the
tests can build one without importing the control loop. The defaults of the job's settings are
:class:`~aimaster.settings.JobSettings`' (never written here); :attr:`RunOptions.settings` gives them
back as one object, for the workers' environment and the job record.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, List, Optional

from aimaster.data.store import EtcdConfig
from aimaster.master.policy import FaultPolicy
from aimaster.settings import DEFAULTS, JobSettings


def fault_policy(settings: JobSettings = DEFAULTS) -> FaultPolicy:
    """The fault policy the settings describe (a new one: it counts failures)."""
    return FaultPolicy(settings.execution_mode, settings.fault_tolerant_policy, settings.max_num_of_same_error,
                       fail_fast=settings.fail_fast)


@dataclass
class RunOptions:
    command: List[str]
    job_id: str
    workers: int = 1
    etcd: Optional[EtcdConfig] = None  # None: the job's embedded etcd in the state directory
    state_root: str = ".aimaster"
    min_workers: int = DEFAULTS.min_workers
    policy: FaultPolicy = field(default_factory=fault_policy)
    hang_detection: bool = DEFAULTS.hang_detection
    hang_interval: float = DEFAULTS.hang_interval
    lease_ttl: int = DEFAULTS.lease_ttl
    max_slice_attempts: int = DEFAULTS.max_slice_attempts
    progress: bool = True
    poll_interval: float = 0.5
    stop_grace: float = 10.0
    join_only: bool = False  # `aimaster join`: supervise local workers, no master duties
    launch_interval: float = DEFAULTS.launch_interval  # seconds between worker starts (nothing starts once done)
    standby: bool = False  # wait for the master key instead of failing when another master holds it
    speculation: bool = DEFAULTS.speculation
    speculation_multiplier: float = DEFAULTS.speculation_multiplier
    max_slice_copies: int = DEFAULTS.max_slice_copies
    slow_multiplier: float = DEFAULTS.slow_worker_multiplier  # 0: never replace slow workers
    slow_min_samples: int = DEFAULTS.slow_worker_min_samples
    warm_spares: int = 0  # worker processes started ahead, waiting to replace a slow worker (aimaster.data.spare)
    completion_grace: float = DEFAULTS.completion_grace  # after the last commit, how long moot attempts may still run
    metrics_port: Optional[int] = None  # serve Prometheus metrics on this port (None: off)
    metrics_grace: float = 0.0  # seconds the endpoint serves the final values after the job ended
    log_max_bytes: int = DEFAULTS.log_max_bytes  # per worker log file, before it is rotated
    log_backups: int = DEFAULTS.log_backups  # rotated files kept per worker log (worker-N.out.1 ...)
    tee: bool = False  # also print workers' output on the console, each line prefixed with its worker
    slice_timeout: Optional[float] = DEFAULTS.slice_timeout  # abandon longer attempts (aimaster.master.slice_timeout)
    retry_failed: bool = False  # `aimaster retry`: put the failed slices back first (aimaster.master.retry)
    listen: Optional[Any] = None  # --listen: aimaster.security.listen.Listen (None: loopback only)
    launcher: Optional[Any] = None  # --launcher: aimaster.master.launchers.Launcher (None: local processes)

    @property
    def settings(self) -> JobSettings:
        """These options' job settings: what the workers' environment and the job record carry."""
        policy = self.policy
        return replace(DEFAULTS, execution_mode=policy.execution_mode, fault_tolerant_policy=policy.policy,
                       max_num_of_same_error=policy.max_same_error, fail_fast=policy.fail_fast,
                       **{setting: getattr(self, option) for option, setting in _SETTINGS.items()})

    def with_settings(self, settings: JobSettings) -> RunOptions:
        """A copy of these options following ``settings`` (a joiner following the job record's)."""
        return replace(self, policy=fault_policy(settings),
                       **{option: getattr(settings, setting) for option, setting in _SETTINGS.items()})


# RunOptions field -> the JobSettings field it carries (the fault policy's four travel as one object).
_SETTINGS = {name: name for name in (
    "lease_ttl", "max_slice_attempts", "speculation", "speculation_multiplier", "max_slice_copies",
    "hang_detection", "hang_interval", "slice_timeout", "completion_grace", "min_workers", "launch_interval",
    "log_max_bytes", "log_backups")}
_SETTINGS.update(slow_multiplier="slow_worker_multiplier", slow_min_samples="slow_worker_min_samples")
