"""The ``local`` launcher: workers as subprocesses of the master on this machine."""

from __future__ import annotations

from typing import Dict, Optional

from aimaster.master.launcher import Worker, WorkerProcess
from aimaster.master.launchers.base import Launcher


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

    @property
    def spares(self) -> bool:  # a spare cannot know its slot's GPUs before it takes the slot
        return not self.gpus

    def start_spare(self, number, command, env, log_dir, id_suffix="", logs=None) -> Worker:
        return WorkerProcess(-1, command, env, log_dir, 0, id_suffix, logs, spare=number)

    def describe(self) -> str:
        if not self.gpus:
            return self.name
        return "local, GPUs per slot: " + ", ".join(f"{s}={g}" for s, g in sorted(self.gpus.items()))
