"""Table sinks whose slice outputs are files of one local directory (Parquet, the warehouse).

Staging, publishing by rename and cleaning up are :mod:`aimaster.io.staging`'s, the same rules as the
file sink's; the layout is :class:`~aimaster.io.staging.TableStaging`'s.
"""

from __future__ import annotations

from typing import Iterable, Tuple

from aimaster.data.outputs import StagedRef
from aimaster.io.staging import TableStaging
from aimaster.io.tables.base import TableSink


class LocalFileSink(TableSink):
    """A table sink whose slice outputs are files of one directory, staged in ``self.staging``."""

    staging: TableStaging

    def publish(self, slice_id: str, staged: StagedRef) -> None:
        self.staging.publish_ref(slice_id, staged)

    def discard(self, staged: StagedRef) -> None:
        self.staging.discard_ref(staged)

    def finalize(self, committed: Iterable[Tuple[str, StagedRef]]) -> None:
        # The job's finalize has (re)published every committed slice: make those renames durable once.
        self.staging.finalize(sid for sid, _ in committed)
