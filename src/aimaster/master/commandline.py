"""The worker COMMAND of ``aimaster run`` / ``aimaster join``, checked before any job exists.

A COMMAND whose program does not exist would otherwise be found out only when the first worker is
spawned: a traceback from ``subprocess``, and a job registered in etcd and the state directory that
never runs. Checking it first costs one ``PATH`` lookup and leaves nothing behind on a typo.
"""

from __future__ import annotations

import os
import shutil
from typing import Dict, List, Optional, Sequence

import click

from aimaster.errors import ConfigError


def command_args(command: Sequence[str], example: str) -> List[str]:
    """The workers' COMMAND from a command line's trailing arguments (a leading ``--`` dropped);
    a usage error naming ``example`` when there is none."""
    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise click.UsageError(f"missing COMMAND{example}")
    return command


def check_command(command: Sequence[str], env: Optional[Dict[str, str]] = None) -> None:
    """Raise :class:`ConfigError` (one line, naming it) unless ``command[0]`` can be executed.

    A name with a slash is a file (relative to the current directory, as ``subprocess`` runs it);
    a bare name is looked up on ``PATH``, as the launcher's ``execvp`` will.
    """
    program = command[0]
    if not program:
        raise ConfigError("COMMAND is empty")
    if os.sep in program or (os.altsep and os.altsep in program):
        if not os.path.exists(program):
            raise ConfigError(f"COMMAND {program!r} does not exist")
        if os.path.isdir(program) or not os.access(program, os.X_OK):
            raise ConfigError(f"COMMAND {program!r} is not an executable file")
        return
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    if shutil.which(program, path=path) is None:
        hint = f" (for the file in this directory, write ./{program})" if os.path.isfile(program) else ""
        raise ConfigError(f"COMMAND {program!r} not found: not on PATH and not a file{hint}")
