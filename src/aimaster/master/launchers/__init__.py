"""Where a job's workers run: the launcher interface and its registry.

The master decides *what* to do with its worker slots (launch, relaunch after a back-off, stop a hung
or slow worker, start nothing once the data is done); a launcher only does it somewhere. It starts
one worker for a slot with the job's environment and hands back a :class:`~aimaster.master.launcher.Worker`
handle (``poll()`` for its exit, ``signal()`` to stop it, its log files and last stderr lines), and
``close()`` leaves nothing behind at the end of the run: the interface is
:class:`~aimaster.master.launchers.base.Launcher`. Three exist:

* ``local`` (:class:`~aimaster.master.launchers.local.LocalLauncher`): subprocesses of the master, as
  ever, optionally each slot with its own GPUs (:mod:`aimaster.master.launchers.gpus`);
* ``ray`` (:mod:`aimaster.master.launchers.ray_actors`): one Ray actor per worker, spread over the
  cluster's nodes, running COMMAND as its subprocess;
* ``slurm`` (:mod:`aimaster.master.launchers.slurm_steps`): one ``srun`` job step per worker inside
  the allocation the master runs in.

A launcher is made from the command line by :func:`make_launcher`, which fails with one line
(:class:`~aimaster.errors.ConfigError`) before any job exists when the engine is not there.
"""

from __future__ import annotations

from typing import Optional

from aimaster.errors import ConfigError
from aimaster.master.launchers.base import Launcher
from aimaster.master.launchers.local import LocalLauncher

NAMES = ("local", "ray", "slurm")
__all__ = ["NAMES", "Launcher", "LocalLauncher", "make_launcher"]


def make_launcher(name: str, workers: int, ray_address: str = "auto", cpus_per_worker: float = 1.0,
                  gpus_per_worker: float = 0, gpus: Optional[str] = None) -> Launcher:
    """The launcher ``aimaster run --launcher NAME`` asked for, checked now (one line if it cannot run)."""
    if name == "local":
        if gpus is not None and not gpus_per_worker:
            raise ConfigError("--gpus needs --gpus-per-worker G (how many of them each worker gets)")
        if not gpus_per_worker:
            return LocalLauncher()
        from aimaster.master.launchers.gpus import slot_gpus

        return LocalLauncher(slot_gpus(workers, gpus_per_worker, gpus))
    if gpus is not None:
        raise ConfigError(f"--gpus lists this machine's GPUs for --launcher local; {name} places GPUs itself")
    if name == "ray":
        from aimaster.master.launchers.ray_actors import RayLauncher

        return RayLauncher(ray_address, cpus_per_worker, gpus_per_worker)
    if name == "slurm":
        from aimaster.master.launchers.slurm_steps import SlurmLauncher

        return SlurmLauncher(cpus_per_worker, gpus_per_worker)
    raise ConfigError(f"unknown launcher {name!r} (one of {', '.join(NAMES)})")
