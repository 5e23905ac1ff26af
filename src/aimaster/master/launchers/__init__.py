"""Where a job's workers run: the launcher interface and its registry.

The master decides *what* to do with its worker slots (launch, relaunch after a back-off, stop a hung
or slow worker, start nothing once the data is done); a launcher only does it somewhere. It starts
one worker for a slot with the job's environment and hands back a :class:`~aimaster.master.launcher.Worker`
handle (``poll()`` for its exit, ``signal()`` to stop it, its log files and last stderr lines), and
``close()`` leaves nothing behind at the end of the run. Three exist:

* ``local`` (:class:`LocalLauncher`): subprocesses of the master, as ever, optionally each slot with
  its own GPUs (:mod:`aimaster.master.launchers.gpus`);
* ``ray`` (:mod:`aimaster.master.launchers.ray_actors`): one Ray actor per worker, spread over the
  cluster's nodes, running COMMAND as its subprocess;
* ``slurm`` (:mod:`aimaster.master.launchers.slurm_steps`): one ``srun`` job step per worker inside
  the allocation the master runs in.

A launcher is made from the command line by :func:`make_launcher`, which fails with one line
(:class:`~aimaster.errors.ConfigError`) before any job exists when the engine is not there.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from aimaster.errors import ConfigError
from aimaster.master.launcher import LogOptions, Worker, WorkerProcess

NAMES = ("local", "ray", "slurm")


class Launcher:
    """Starts workers for slots; the master's policies never depend on which one."""

    name = "local"

    def start(self, slot: int, incarnation: int, command: Sequence[str], env: Dict[str, str], log_dir: str,
              id_suffix: str = "", logs: Optional[LogOptions] = None) -> Worker:
        raise NotImplementedError

    def close(self) -> None:
        """After the run: release what the engine still holds for us (nothing for local processes)."""

    def describe(self) -> str:
        return self.name


class LocalLauncher(Launcher):
    """Workers as subprocesses of the master on this machine; with ``gpus`` (slot -> devices), each
    slot's workers see only that slot's GPUs, and a relaunch in the slot gets the same ones back."""

    name = "local"

    def __init__(self, gpus: Optional[Dict[int, str]] = None):
        self.gpus = gpus or {}

    def slot_env(self, slot: int, env: Dict[str, str]) -> Dict[str, str]:
        if slot in self.gpus:
            return dict(env, CUDA_VISIBLE_DEVICES=self.gpus[slot])
        return env

    def start(self, slot, incarnation, command, env, log_dir, id_suffix="", logs=None) -> Worker:
        return WorkerProcess(slot, command, self.slot_env(slot, env), log_dir, incarnation, id_suffix, logs)

    def describe(self) -> str:
        if not self.gpus:
            return self.name
        return "local, GPUs per slot: " + ", ".join(f"{s}={g}" for s, g in sorted(self.gpus.items()))


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
