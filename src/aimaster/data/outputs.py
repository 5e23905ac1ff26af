"""Outputs published exactly once: staged per attempt, made final only by the winning commit.

Every place a worker writes results to (files in an output directory, a Parquet directory, a
warehouse table, a MaxCompute table) is an :class:`OutputSink`. An attempt *stages* its output
(a temporary file, an upload block) and gets back a JSON reference to it. The commit transaction in
etcd records those references; only then is the staged output *published*. Publishing is idempotent
and can be redone by anyone (the master at the end of the job, a resumed run) from the commit record
alone, so a crash between commit and publish never loses output, and the staged output of a losing
attempt is discarded instead of published, so it never appears.

Sinks are rebuilt in other processes from :meth:`OutputSink.describe`, a JSON dict, through the
one table of :mod:`aimaster.plugins`: nothing but JSON ever goes into etcd.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Dict, Iterable, Mapping, Tuple, Type

from aimaster import plugins
from aimaster.errors import EtcdDataError

StagedRef = Dict[str, Any]


def register_sink(cls: Type[OutputSink]) -> Type[OutputSink]:
    """Class decorator for sinks defined outside :mod:`aimaster.plugins`' table: make ``cls``
    rebuildable from its description (``{"kind": cls.kind, ...}``). aimaster's own sinks are in the
    table and need no import to be found."""
    if not cls.kind:
        raise TypeError(f"{cls.__name__} needs a non-empty 'kind'")
    plugins.register("output_sink", cls.kind, cls)
    return cls


def sink_from_description(description: Mapping[str, Any]) -> OutputSink:
    """Rebuild a sink in this process from the description another one wrote to etcd."""
    kind = description.get("kind") if isinstance(description, Mapping) else None
    try:
        cls = plugins.load("output_sink", kind)
    except plugins.UnknownPluginError as e:
        shown = dict(description) if isinstance(description, Mapping) else description
        raise EtcdDataError(f"{e} in sink description {shown!r:.200}")
    return cls.from_description(description)


class OutputSink(abc.ABC):
    """A destination for slice outputs with stage / publish / discard / finalize semantics."""

    kind: ClassVar[str] = ""

    @abc.abstractmethod
    def describe(self) -> Dict[str, Any]:
        """JSON-able dict with ``"kind"`` and whatever rebuilds this sink in another process."""

    @classmethod
    @abc.abstractmethod
    def from_description(cls, description: Mapping[str, Any]) -> OutputSink:
        """Inverse of :meth:`describe`."""

    @abc.abstractmethod
    def publish(self, slice_id: str, staged: StagedRef) -> None:
        """Make a committed attempt's staged output final. Idempotent: may run again after a crash."""

    @abc.abstractmethod
    def discard(self, staged: StagedRef) -> None:
        """Remove a losing or abandoned attempt's staged output. Idempotent; missing data is fine."""

    def finalize(self, committed: Iterable[Tuple[str, StagedRef]]) -> None:
        """Called once when the job's data is all committed, with every committed (slice id, ref).

        Sinks whose publication is per job rather than per slice (a MaxCompute upload session) do
        their work here; the default does nothing.
        """
