"""Workers as Slurm job steps inside the allocation the master runs in (``salloc`` or ``sbatch``).

Each worker is ``srun --ntasks=1 --nodes=1 --overlap ... -- COMMAND``: Slurm picks the node and runs
the task under its own step daemon; the master keeps the ``srun`` as its child, so a step's exit is
the child's exit and its output comes through ``srun`` into the usual worker log files. A dead
worker is relaunched as a new step in the same allocation. ``--overlap`` because an allocation
from ``salloc -n 3 --overcommit`` may hold fewer CPUs than tasks, and a relaunched step must not wait
for the resources of the step it replaces (Slurm >= 20.11 otherwise gives steps exclusive CPUs).

Stopping: SIGTERM to ``srun`` is forwarded to the task (it gives its slices back). SIGKILL cannot be
forwarded, but it need not be: once its ``srun`` is gone, Slurm kills the step's tasks itself, a
stopped (SIGSTOP) one included -- tests/test_slurm_launcher.py checks that while the allocation
still runs.
"""

from __future__ import annotations

import os
import shutil
from typing import Optional

from aimaster.errors import ConfigError
from aimaster.master.launcher import WorkerProcess, worker_name
from aimaster.master.launchers.base import Launcher


def allocation() -> str:
    """The Slurm job id we run inside of; one line when there is none."""
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID")
    if not job:
        raise ConfigError("--launcher slurm runs inside a Slurm allocation (salloc ... aimaster run, or an "
                          "sbatch script): $SLURM_JOB_ID is not set")
    if shutil.which("srun") is None:
        raise ConfigError(f"--launcher slurm: inside Slurm job {job} but srun is not on PATH")
    return job


def default_workers() -> Optional[int]:
    """``$SLURM_NTASKS`` of the allocation: the default worker count under ``--launcher slurm``."""
    value = os.environ.get("SLURM_NTASKS") or os.environ.get("SLURM_NPROCS")
    return int(value) if value and value.isdigit() and int(value) > 0 else None


class SlurmLauncher(Launcher):
    name = "slurm"

    def __init__(self, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0):
        self.job = allocation()
        if cpus_per_worker != int(cpus_per_worker) or gpus_per_worker != int(gpus_per_worker):
            raise ConfigError("--launcher slurm: --cpus-per-worker and --gpus-per-worker are whole numbers")
        self.cpus = int(cpus_per_worker)
        self.gpus = int(gpus_per_worker)

    def srun(self, step_name: str) -> list:
        argv = ["srun", "--ntasks=1", "--nodes=1", "--overlap", "--quiet",
                f"--job-name={step_name}", f"--jobid={self.job}"]
        if self.cpus > 1:
            argv.append(f"--cpus-per-task={self.cpus}")
        if self.gpus:
            argv.append(f"--gpus-per-task={self.gpus}")
        return argv + ["--"]

    def start(self, slot, incarnation, command, env, log_dir, id_suffix="", logs=None):
        name = f"aimaster-{env.get('AIMASTER_JOB_ID', 'job')}-{worker_name(slot, incarnation, id_suffix)}"
        return WorkerProcess(slot, self.srun(name) + list(command), env, log_dir, incarnation, id_suffix, logs)

    def describe(self) -> str:
        return f"slurm (job {self.job}, one srun step per worker)"
