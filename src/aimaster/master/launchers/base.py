"""The launcher interface: what the master asks of wherever its workers run (see the package docstring).

Its own module so that the engines' launchers (``ray_actors``, ``slurm_steps``) import the interface
without importing the package that picks among them.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from aimaster.master.launcher import LogOptions, Worker


class Launcher:
    """Starts workers for slots; the master's policies never depend on which one."""

    name = "local"

    def start(self, slot: int, incarnation: int, command: Sequence[str], env: Dict[str, str], log_dir: str,
              id_suffix: str = "", logs: Optional[LogOptions] = None) -> Worker:
        raise NotImplementedError

    # Whether start_spare works: a warm spare (aimaster.data.spare) is started before anyone knows
    # which slot it will take, so a launcher that places workers by slot (a Ray actor's resources,
    # a Slurm step's node, a slot's GPUs) cannot start one.
    spares = False

    def start_spare(self, number: int, command: Sequence[str], env: Dict[str, str], log_dir: str,
                    id_suffix: str = "", logs: Optional[LogOptions] = None) -> Worker:
        raise NotImplementedError(f"the {self.name} launcher cannot start warm spares")

    def close(self) -> None:
        """After the run: release what the engine still holds for us (nothing for local processes)."""

    def describe(self) -> str:
        return self.name
