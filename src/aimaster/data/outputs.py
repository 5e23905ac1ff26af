"""Outputs published exactly once: staged per attempt, made final only by the winning commit.

Every place a worker writes results to (files in an output directory, a Parquet directory, a
warehouse table, a MaxCompute table) is an :class:`OutputSink`. An attempt *stages* its output
(a temporary file, an upload block) and gets back a JSON reference to it. The commit transaction in
etcd records those references; only then is the staged output *published*. Publishing is idempotent
and can be redone by anyone (the master at the end of the job, a resumed run) from the commit record
alone, so a crash between commit and publish never loses output, and the staged output of a losing
attempt is discarded instead of published, so it never appears.

Sinks are rebuilt in other processes from :meth:`OutputSink.describe`, a JSON dict, through the
registry below: nothing but JSON ever goes into etcd.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Dict, Iterable, Mapping, Tuple, Type

StagedRef = Dict[str, Any]

_REGISTRY: Dict[str, Type[OutputSink]] = {}


def register_sink(cls: Type[OutputSink]) -> Type[OutputSink]:
    """Class decorator: make ``cls`` rebuildable from its description (``{"kind": cls.kind, ...}``)."""
    if not cls.kind:
        raise TypeError(f"{cls.__name__} needs a non-empty 'kind'")
    _REGISTRY[cls.kind] = cls
    return cls


_LOADERS: Dict[str, Callable[[], None]] = {}


def register_sink_loader(kind: str, loader: Callable[[], None]) -> None:
    """Let a sink kind be imported lazily (its module may need optional packages)."""
    _LOADERS[kind] = loader


def sink_from_description(description: Mapping[str, Any]) -> OutputSink:
    kind = description.get("kind") if isinstance(description, Mapping) else None
    if kind not in _REGISTRY and kind in _LOADERS:
        _LOADERS[kind]()
    if kind not in _REGISTRY:
        from aimaster.errors import EtcdDataError

        raise EtcdDataError(f"unknown output sink kind {kind!r} in {dict(description)!r}")
    return _REGISTRY[kind].from_description(description)


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
