"""The ``aimaster run`` options that choose where workers run (``--launcher`` and its settings).

Kept beside the launchers so that ``cli.py`` only gains a decorator and one call: the options, their
checks and the default worker count of each engine live in one place.
"""

from __future__ import annotations

from typing import Optional, Tuple

import click

from aimaster.master.launchers import NAMES, Launcher, make_launcher


def launcher_options(f):
    for option in reversed([
        click.option("--launcher", type=click.Choice(NAMES), default="local", show_default=True,
                     help="Where workers run: local subprocesses, Ray actors spread over a Ray cluster, or "
                          "srun job steps inside a Slurm allocation (-n defaults to $SLURM_NTASKS)."),
        click.option("--ray-address", default="auto", show_default=True, metavar="ADDR",
                     help="--launcher ray: the cluster to connect to (HOST:PORT of its head, or auto)."),
        click.option("--cpus-per-worker", type=click.FloatRange(0), default=1.0, show_default=True,
                     help="--launcher ray/slurm: CPUs reserved for each worker."),
        click.option("--gpus-per-worker", type=click.FloatRange(0), default=0, show_default=True,
                     help="GPUs for each worker: Ray and Slurm place them; locally each slot gets its own "
                          "CUDA_VISIBLE_DEVICES from --gpus (or nvidia-smi -L)."),
        click.option("--gpus", metavar="0,1,...",
                     help="--launcher local: this machine's GPUs to split between the worker slots."),
    ]):
        f = option(f)
    return f


def launcher_from_options(workers: int, workers_given: bool, launcher: str = "local", ray_address: str = "auto",
                          cpus_per_worker: float = 1.0, gpus_per_worker: float = 0,
                          gpus: Optional[str] = None) -> Tuple[int, Optional[Launcher]]:
    """(worker count, launcher) for ``aimaster run``; None for the plain local launcher."""
    if launcher == "slurm" and not workers_given:
        from aimaster.master.launchers.slurm_steps import allocation, default_workers

        allocation()  # outside an allocation: that is the one line to say, not a missing count
        workers = default_workers() or workers
    if launcher == "local" and not gpus_per_worker and gpus is None:
        return workers, None
    return workers, make_launcher(launcher, workers, ray_address, cpus_per_worker, gpus_per_worker, gpus)
