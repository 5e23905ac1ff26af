"""Exactly-once file output in a local directory: stage under a hidden name, publish by rename.

Layout inside the output directory ``D`` (the Parquet directory, or a warehouse table/partition)::

    D/<staging>/<slice>~<attempt>.<pid>-<random>.tmp   being written (never visible to readers)
    D/<staging>/<slice>~<attempt><suffix>              staged: complete and fsynced, not yet final
    D/part-<slice><suffix>                             published: the committed attempt's output

Readers ignore the staging directory (a ``_`` or ``.`` prefix, the convention of pyarrow datasets
and of MaxCompute's local runner), so a half-written or losing attempt is never visible. Publishing
is one ``rename`` -- atomic on a POSIX filesystem, and idempotent: if the staged file is already
gone and the final file is there with the staged size, an earlier publish already did it.

The job's finalize removes the staging area once every slice is committed, possibly while a
speculative copy (or an attempt whose claim was lost) of an already committed slice is still
writing there. Such an attempt has lost; staging must not turn that into an error. So the
temporary file is (re)created with its directory, retried if the directory vanishes in between,
and a temporary file that is gone when the stage is committed raises :class:`StageLost` (the SDK
gives the attempt up quietly, like a lost commit) instead of a plain I/O error.
"""

from __future__ import annotations

import errno
import os
import secrets
from typing import BinaryIO, Iterable, Optional, Set, Tuple

from aimaster.data.outputs import StagedRef
from aimaster.errors import TableIOError
from aimaster.io.tables.base import StageLost, TableSink

_CREATE_TRIES = 5


def fsync_dir(path: str) -> None:
    """Persist a directory entry (a rename or create) -- without it a crash can undo the rename."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStaging:
    """Stage / publish / discard / clean up files of one output directory."""

    def __init__(self, directory: str, staging_dirname: str, suffix: str):
        self.directory = directory
        self.staging_dirname = staging_dirname
        self.staging = os.path.join(directory, staging_dirname)
        self.suffix = suffix

    def final_name(self, slice_id: str) -> str:
        return f"part-{slice_id}{self.suffix}"

    def temp_path(self, slice_id: str, attempt: str) -> str:
        """A fresh temporary path; unique per writer so two processes never share one."""
        return os.path.join(self.staging, f"{slice_id}~{attempt}.{os.getpid()}-{secrets.token_hex(4)}.tmp")

    def open_temp(self, temp_path: str) -> BinaryIO:
        """Create ``temp_path`` (exclusively) and its staging directory, and open it for writing.

        The directory may be removed between creating it and creating the file (the job's finalize
        cleaning up while a losing copy starts a stage): then both are created again.
        """
        for attempt in range(_CREATE_TRIES):
            try:
                os.makedirs(self.staging, exist_ok=True)
                fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                return os.fdopen(fd, "wb")
            except FileNotFoundError:
                if attempt == _CREATE_TRIES - 1:
                    raise TableIOError(f"cannot create {temp_path}: its directory keeps vanishing")
            except OSError as e:
                raise TableIOError(f"cannot create {temp_path}: {e.strerror or e}")
        raise AssertionError("unreachable")

    def commit(self, temp_path: str, slice_id: str, attempt: str, rows: int) -> StagedRef:
        """Turn a closed temporary file into the staged file of (slice, attempt), durably.

        A temporary file that is gone was removed by the job's finalize (or the staging area was
        removed under us): :class:`StageLost`, for the caller to give the attempt up quietly.
        """
        staged_rel = f"{self.staging_dirname}/{slice_id}~{attempt}{self.suffix}"
        staged = os.path.join(self.directory, staged_rel)
        try:
            fsync_file(temp_path)
            size = os.path.getsize(temp_path)
            os.replace(temp_path, staged)
            fsync_dir(self.staging)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise StageLost(f"slice {slice_id} attempt {attempt} cannot be staged: its temporary file "
                                f"{temp_path} was removed (the job finalized {self.directory} after another "
                                "attempt committed the slice)") from None
            raise TableIOError(f"cannot stage {staged}: {e.strerror or e}")
        return {"staged": staged_rel, "rows": rows, "bytes": size}

    def _staged_path(self, ref: StagedRef) -> Optional[str]:
        """The staged file a ref names -- only ever a file of our staging directory: refs come back
        from etcd, and a tampered one must not make publish rename an arbitrary file."""
        staged_rel = ref.get("staged")
        if not staged_rel:
            return None  # nothing was staged (an empty slice whose schema was never known)
        head, _, name = str(staged_rel).partition("/")
        if head != self.staging_dirname or not name or "/" in name or name.startswith("."):
            raise TableIOError(f"staged ref {dict(ref)!r} does not name a file of {self.staging}")
        return os.path.join(self.staging, name)

    def publish(self, slice_id: str, ref: StagedRef) -> Optional[str]:
        """Rename the staged file to the slice's final name (idempotent); returns the final path.

        The directory is not fsynced here: the staged file is durable already and the commit record
        in etcd lists it, so a rename lost to a power cut is redone by the job's finalize, which
        fsyncs the directory once (see :meth:`LocalFileSink.finalize`). An fsync per slice would
        also wait for every other write in flight on the file system (the next slice's staging).
        """
        staged = self._staged_path(ref)
        if staged is None:
            return None
        final = os.path.join(self.directory, self.final_name(slice_id))
        try:
            os.replace(staged, final)
        except FileNotFoundError:
            if os.path.isfile(final) and os.path.getsize(final) == ref.get("bytes"):
                return final  # published before (by us or by whoever redid the publish)
            raise TableIOError(f"cannot publish slice {slice_id}: staged file {staged} is gone and "
                               f"{final} does not hold it")
        except OSError as e:
            raise TableIOError(f"cannot publish {staged} as {final}: {e.strerror or e}")
        return final

    def discard(self, ref: StagedRef) -> None:
        """Remove a losing attempt's staged file, and the staging directory if that left it empty
        (a loser after the job's finalize would otherwise leave an empty one behind)."""
        staged = self._staged_path(ref)
        if staged is None:
            return
        try:
            os.unlink(staged)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise TableIOError(f"cannot discard staged file {staged}: {e.strerror}")
        try:
            os.rmdir(self.staging)
        except OSError:
            pass  # not empty: other attempts are staging (open_temp recreates it when needed)

    @staticmethod
    def remove_temp(temp_path: str) -> None:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass

    def cleanup(self, committed: Iterable[Tuple[str, StagedRef]]) -> None:
        """At job end: delete leftovers (losers, crashed attempts' temp files) of the job's slices.

        Only files of the given slices are touched, so another writer staging into the same
        directory (a ``common_io`` TableWriter, say) keeps its files.
        """
        slice_ids: Set[str] = {sid for sid, _ in committed}
        try:
            names = os.listdir(self.staging)
        except FileNotFoundError:
            return
        for name in names:
            if name.split("~", 1)[0] in slice_ids:
                self.remove_temp(os.path.join(self.staging, name))
        try:
            os.rmdir(self.staging)
        except OSError:
            pass  # not empty: someone else's files


class LocalFileSink(TableSink):
    """A table sink whose slice outputs are files of one directory, staged in ``self.staging``."""

    staging: LocalStaging

    def publish(self, slice_id: str, staged: StagedRef) -> None:
        self.staging.publish(slice_id, staged)

    def discard(self, staged: StagedRef) -> None:
        self.staging.discard(staged)

    def finalize(self, committed: Iterable[Tuple[str, StagedRef]]) -> None:
        # The job's finalize has (re)published every committed slice: make those renames durable.
        fsync_dir(self.staging.directory)
        self.staging.cleanup(committed)
