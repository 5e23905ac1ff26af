"""The one table of plug-ins: kind -> ``"module:attribute"``, imported on first use.

Modelled on fsspec's ``known_implementations``: a kind is a name in a plain table, its code a
dotted path that is imported only when the kind is first asked for, so ``import aimaster`` never
pays for pyodps, and a process (the master finalizing a dataset) can rebuild any kind it reads
from etcd without importing every backend first. Two groups:

* ``"output_sink"``: the :class:`~aimaster.data.outputs.OutputSink` classes, by the ``"kind"`` of
  their etcd description;
* ``"table_backend"``: the table backend modules (``open_source``, ``open_sink``,
  ``source_from_description``), by the name :func:`aimaster.io.tables.urls.backend_name` gives a URL.

A target without ``:attribute`` is the module itself. An unknown kind is a one-line
:class:`UnknownPluginError` listing the known ones; a kind whose optional dependency is missing says
which extra to install.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from aimaster.errors import AimasterError, ConfigError


@dataclass(frozen=True)
class Plugin:
    """Where a kind's code lives, and the ``pip install 'aimaster[extra]'`` its imports need."""

    target: str
    extra: Optional[str] = None


_TABLE: Dict[str, Dict[str, Plugin]] = {
    "output_sink": {
        "files": Plugin("aimaster.io.files:FileSink"),
        "parquet": Plugin("aimaster.io.tables.parquet:ParquetSink"),
        "warehouse": Plugin("aimaster.io.tables.warehouse:WarehouseSink"),
        "odps": Plugin("aimaster.io.tables.odps_sink:MaxComputeSink", "odps"),
    },
    "table_backend": {
        "parquet": Plugin("aimaster.io.tables.parquet"),
        "warehouse": Plugin("aimaster.io.tables.warehouse"),
        "odps": Plugin("aimaster.io.tables.odps", "odps"),
    },
}

_LOADED: Dict[tuple, Any] = {}


class UnknownPluginError(AimasterError, LookupError):
    """No plug-in of that kind in the group (the message lists the known ones)."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else ""


def groups() -> List[str]:
    return sorted(_TABLE)


def known(group: str) -> List[str]:
    """The kinds of ``group``, sorted."""
    return sorted(_group(group))


def _group(group: str) -> Dict[str, Plugin]:
    try:
        return _TABLE[group]
    except KeyError:
        raise UnknownPluginError(f"no plug-in group {group!r} (groups: {', '.join(groups())})") from None


def register(group: str, kind: str, target: Any, extra: Optional[str] = None) -> None:
    """Add (or replace) ``kind`` in ``group``: ``target`` is ``"module[:attribute]"``, imported
    lazily, or the object itself (a class already imported, as fsspec's ``register_implementation``)."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"a plug-in kind must be a non-empty string, got {kind!r}")
    table = _group(group)
    if isinstance(target, str):
        if not target.split(":", 1)[0]:
            raise ValueError(f"a plug-in target must be 'module[:attribute]', got {target!r}")
        table[kind] = Plugin(target, extra)
        _LOADED.pop((group, kind), None)
        return
    path = f"{target.__module__}:{target.__qualname__}"
    old = table.get(kind)
    table[kind] = Plugin(path, extra if extra is not None else (old.extra if old and old.target == path else None))
    _LOADED[(group, kind)] = target


def load(group: str, kind: Any) -> Any:
    """The object ``kind`` of ``group`` names, imported on first use and kept."""
    table = _group(group)
    plugin = table.get(kind) if isinstance(kind, str) else None
    if plugin is None:
        raise UnknownPluginError(f"unknown {group.replace('_', ' ')} kind {kind!r:.60} "
                                 f"(known: {', '.join(sorted(table))})")
    cached = _LOADED.get((group, kind))
    if cached is not None:
        return cached
    module_name, _, attribute = plugin.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        missing = getattr(e, "name", None) or ""
        if plugin.extra and not missing.startswith("aimaster"):
            raise ConfigError(f"the {group.replace('_', ' ')} {kind!r} needs {missing or 'a package'} that is not "
                              f"installed: pip install 'aimaster[{plugin.extra}]'") from e
        raise
    loaded = getattr(module, attribute) if attribute else module
    _LOADED[(group, kind)] = loaded
    return loaded
