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

    def close(self) -> None:
        """After the run: release what the engine still holds for us (nothing for local processes)."""

    def describe(self) -> str:
        return self.name
