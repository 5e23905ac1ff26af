"""The ``aimaster`` command as the CLI reference page documents it (``docs/cli.md``, mkdocs-click).

Since click 8.3 an option declared without a default holds click's internal ``UNSET`` sentinel,
which mkdocs-click prints as it is (``Sentinel.UNSET``) in the defaults column. ``--help`` hides it;
the reference must too. :data:`cli` is the real command group with every such default read as
what click itself uses when the option is absent: ``False`` for a flag, none for the rest.

Only the documented copy changes: commands and parameters are shallow copies (the callbacks are
the real ones), so the page always lists exactly the options ``aimaster`` has.
"""

from __future__ import annotations

import copy

import click

from aimaster.cli import cli as _real_cli


def _unset(value) -> bool:
    return type(value).__name__ == "Sentinel" or repr(value) == "Sentinel.UNSET"


def _documented_param(param: click.Parameter) -> click.Parameter:
    if not _unset(getattr(param, "default", None)):
        return param
    p = copy.copy(param)
    p.default = False if getattr(p, "is_flag", False) and not getattr(p, "multiple", False) else None
    return p


def documented(command: click.Command) -> click.Command:
    """A copy of ``command`` (and, for a group, of each subcommand) with no ``UNSET`` default."""
    c = copy.copy(command)
    c.params = [_documented_param(p) for p in command.params]
    # --help is made on the fly (Command.get_help_option), with an UNSET default of its own.
    c.get_params = lambda ctx: [_documented_param(p) for p in type(command).get_params(c, ctx)]
    if isinstance(command, click.Group):
        c.commands = {name: documented(sub) for name, sub in command.commands.items()}
    return c


cli = documented(_real_cli)
