"""A ready Slurm batch script for a job (``aimaster slurm script ... -- COMMAND > job.sbatch``).

Inside the allocation ``aimaster run --launcher slurm`` is the master and runs the workers as job
steps (``srun``), as many as the allocation has tasks. The script asks Slurm for:

- ``--ntasks`` (one per worker), ``--nodes``, ``--cpus-per-task``, ``--gpus-per-task`` as given;
- ``--requeue``: a preempted or failed-node job goes back to the queue; run again under the *same job
  id* (fixed in the script) it resumes, committed slices are never redone;
- ``--signal=B:TERM@SECONDS``: SIGTERM to the batch shell (which ``exec``'d the master) that many
  seconds before the time limit. The master stops its workers with SIGTERM, which gives their slices
  back at once, and exits as *Stopped*: ``sbatch`` the same script again to go on.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import List, Optional


@dataclass
class Sbatch:
    """The allocation asked for (checked by the command line)."""

    job_id: str
    tasks: int
    nodes: Optional[str] = None
    cpus_per_task: Optional[int] = None
    gpus_per_task: Optional[int] = None
    time: Optional[str] = None
    partition: Optional[str] = None
    account: Optional[str] = None
    output: Optional[str] = None
    signal_seconds: int = 120

    def directives(self) -> List[str]:
        lines = [f"--job-name=aimaster-{self.job_id}", f"--ntasks={self.tasks}"]
        for flag, value in (("--nodes", self.nodes), ("--cpus-per-task", self.cpus_per_task),
                            ("--gpus-per-task", self.gpus_per_task), ("--time", self.time),
                            ("--partition", self.partition), ("--account", self.account),
                            ("--output", self.output)):
            if value is not None:
                lines.append(f"{flag}={value}")
        lines += ["--requeue", f"--signal=B:TERM@{self.signal_seconds}"]
        return [f"#SBATCH {line}" for line in lines]


def run_command(job_id: str, run_args: List[str], command: List[str]) -> List[str]:
    """The master's command line inside the allocation (workers: ``$SLURM_NTASKS`` job steps)."""
    return ["aimaster", "run", "--launcher", "slurm", "--job-id", job_id, *run_args, "--", *command]


def render(sbatch: Sbatch, run_args: List[str], command: List[str]) -> str:
    line = shlex.join(run_command(sbatch.job_id, run_args, command))
    return "\n".join([
        "#!/bin/bash",
        *sbatch.directives(),
        "#",
        f"# aimaster job {sbatch.job_id}: written by aimaster slurm script; submit with sbatch. Preempted, it is",
        "# requeued and resumes; stopped before the time limit, sbatch this script again to go on (same job id).",
        "set -euo pipefail",
        f"exec {line}",
        "",
    ])
