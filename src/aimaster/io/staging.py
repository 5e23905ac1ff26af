"""Stage, publish by rename, clean up: the one mechanism behind every local output directory.

An attempt writes its output into a staging area inside the output directory ``D`` (the same file
system, so publishing is one atomic ``rename``); only the attempt whose commit won in etcd is
published, and the refs it committed are all that publishing needs, so anyone may redo it. The file
sink (:class:`aimaster.io.files.FileSink`) and the local table sinks (Parquet, the warehouse; see
:class:`TableStaging`) lay their staged files out differently, but follow the same rules, kept here:

* **Refs are hostile until checked.** A ref comes back from etcd: it must name an entry of this
  staging area that belongs to the slice being published. Anything else is a
  :class:`RefusedRefError` naming the ref, and nothing is touched -- whoever can write the job's
  keys must not make publish rename, or discard delete, anything but this sink's own staged files.
* **Publish is idempotent, never silent.** A staged file that is gone while the final file is there
  (of the staged size, when the ref records it) was published before: nothing to do. Gone while the
  final file is not there means the output is lost: :class:`StagedOutputMissingError`.
* **Durable.** Directories created for a final file are fsynced, and so is the final file's
  directory after the rename -- at once (``sync=True``), or once per job by :meth:`Staging.finalize`
  for sinks that publish many files into one directory, since the commit records let the job's
  finalize redo a rename a power cut undid.
* **Cleanup is per job.** At the end the job's staging entries are removed, and the staging directory
  once empty. A table sink's directory may be shared with other writers (a ``common_io`` TableWriter
  of another job), so there only the entries of the job's slices go; the file sink's staging area is
  the job's alone, so all of it goes, failed slices' leftovers included.
* **A vanishing directory is not an error.** The job's finalize may remove the staging area while a
  losing attempt starts a stage: creating a staged file recreates its directories and retries.
"""

from __future__ import annotations

import os
import secrets
import shutil
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from aimaster.errors import EtcdDataError, TableIOError
from aimaster.io import durable

#: The staging area of the file sink and of the warehouse tables (Parquet uses ``_staging``, which
#: pyarrow's datasets skip).
STAGING_DIR = ".aimaster-staging"

_CREATE_TRIES = 10


class RefusedRefError(EtcdDataError, TableIOError):
    """A ref read back from etcd that does not name one of this sink's own staged files."""

    environment = False


class StagedOutputMissingError(TableIOError, FileNotFoundError):
    """A committed slice's staged output is gone and its final file was never made: output lost."""

    environment = False  # a relaunch cannot bring the output back


class StageLost(TableIOError):
    """A stage that can never be committed, found out while staging: the attempt has lost.

    Raised by a table stage's ``commit`` when what the stage needs is gone for a reason that only
    an attempt that already lost can meet -- the job's finalize cleaned the staging area up (every
    slice was committed, so this one was too, by another attempt), or the MaxCompute upload session
    was committed or expired under it. The SDK's table client then gives the attempt up quietly, as
    a lost commit (``commit_slice`` returns False); it is not the user's error and not a crash.
    Anyone else sees a TableIOError, so nothing is ever committed from a lost stage.
    """


def component_ok(part: str) -> bool:
    """A path component that cannot climb out of, or hide in, the directory it is joined to."""
    return bool(part) and part not in (".", "..") and "/" not in part and "\0" not in part


def belongs(entry: str, slice_ids: Iterable[str]) -> bool:
    """Whether a top-level staging entry is one of ``slice_ids``': ``<slice>`` (a directory of the
    file sink) or ``<slice>~<attempt>...`` (a table sink's file; table slice ids never hold ``~``)."""
    wanted = slice_ids if isinstance(slice_ids, (set, frozenset)) else set(slice_ids)
    return entry in wanted or entry.split("~", 1)[0] in wanted


class Staging:
    """The staging area ``<directory>/<dirname>`` of one local output directory.

    ``owner`` names the output in errors. Paths are absolute, joined with ``/``.
    """

    def __init__(self, directory: str, dirname: str = STAGING_DIR, owner: Optional[str] = None):
        self.directory = directory.rstrip("/") or "/"
        self.dirname = dirname
        self.path = self.directory + "/" + dirname
        self.owner = owner or f"the output in {self.directory}"

    # ------------------------------------------------------------------ refs from etcd
    def refuse(self, ref: Any, slice_id: Optional[str], why: str) -> RefusedRefError:
        return RefusedRefError(f"refusing output ref {ref!r:.200} (slice {slice_id}) of {self.owner}: {why}")

    def entry_parts(self, ref: Any, staged: Any, slice_id: Optional[str],
                    shape_ok: Callable[[List[str]], bool]) -> List[str]:
        """The components, below the staging area, of the ``staged`` path of ``ref``; refused unless
        it lies in this staging area, has the caller's shape and (given ``slice_id``) is that slice's."""
        if not isinstance(staged, str):
            raise self.refuse(ref, slice_id, "its staged path is not a string")
        head, _, rest = staged.partition("/")
        parts = rest.split("/")
        if head != self.dirname or not rest or not all(component_ok(p) for p in parts) or not shape_ok(parts):
            raise self.refuse(ref, slice_id, f"its staged path does not name a file of {self.path}")
        if slice_id is not None and not belongs(parts[0], {slice_id}):
            raise self.refuse(ref, slice_id, f"its staged path is not one of slice {slice_id} in {self.path}")
        return parts

    # ------------------------------------------------------------------ staging
    def makedirs(self, directory: str) -> List[str]:
        """Create ``directory`` (inside the output directory), racing cleanups that remove empty
        staging directories; returns those that did not exist, whose entries the caller syncs."""
        created = durable.missing_dirs(directory, self.directory)
        for attempt in range(_CREATE_TRIES):
            try:
                os.makedirs(directory, exist_ok=True)
                return created
            except FileNotFoundError:  # a parent was removed between two mkdir calls: again
                if attempt == _CREATE_TRIES - 1:
                    raise TableIOError(f"cannot create {directory}: its parent keeps vanishing")
            except OSError as e:
                raise durable.named(e, directory, "creating the output directory")
        return created

    def open_exclusive(self, path: str) -> BinaryIO:
        """Create ``path`` (exclusively) and its directories, and open it for writing; both are made
        again if a cleanup removes the directory in between."""
        for attempt in range(_CREATE_TRIES):
            try:
                created = self.makedirs(os.path.dirname(path))
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    durable.sync_created(created)  # a new staging directory survives a power cut
                except OSError:
                    os.close(fd)
                    raise
                return os.fdopen(fd, "wb")
            except FileNotFoundError:
                if attempt == _CREATE_TRIES - 1:
                    raise TableIOError(f"cannot create {path}: its directory keeps vanishing")
            except OSError as e:
                raise TableIOError(f"cannot create {path}: {e.strerror or e}")
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ publishing
    def publish(self, slice_id: str, src: str, dst: str, size: Optional[int] = None, sync: bool = True) -> str:
        """Rename the staged file ``src`` to the final ``dst`` (idempotent, see the module docstring)."""
        parent = os.path.dirname(dst)
        try:
            created = durable.missing_dirs(parent, self.directory)
            if created:
                os.makedirs(parent, exist_ok=True)
            os.replace(src, dst)
        except FileNotFoundError:
            if os.path.exists(src):
                raise TableIOError(f"cannot publish {src} as {dst}: the directory of {dst} vanished")
            if os.path.isfile(dst) and (size is None or os.path.getsize(dst) == size):
                return dst  # published before (by us, or by whoever redid the publish)
            raise StagedOutputMissingError(
                f"cannot publish slice {slice_id}: the committed output {dst} was never published and its "
                f"staged file {src} is gone: the slice's output is lost") from None
        except OSError as e:
            raise durable.named(e, dst, f"publishing {src}")
        if sync:
            durable.fsync_dir(parent)  # before the staging entry goes: a rename undone then is lost
        durable.sync_created(created)
        return dst

    # ------------------------------------------------------------------ removing
    def remove(self, path: str) -> None:
        """Remove a staged file or an attempt's directory (gone already is fine), then the now-empty
        directories above it up to and including the staging area."""
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise durable.named(e, path, "discarding a staged output")
        self.prune(os.path.dirname(path))

    def prune(self, directory: str) -> None:
        """Remove empty directories from ``directory`` up to the staging area (included)."""
        while directory == self.path or directory.startswith(self.path + "/"):
            try:
                os.rmdir(directory)
            except OSError:
                return  # not empty (others are staging) or gone
            directory = os.path.dirname(directory)

    def cleanup(self, slice_ids: Optional[Iterable[str]] = None) -> None:
        """At the job's end: remove the staging entries of ``slice_ids`` (losers, crashed attempts'
        files) and the staging area if that empties it; entries of other slices are someone else's.

        ``None``: the whole staging area is the job's (the file sink's ``.aimaster-staging``, which
        only the job writing the output directory stages into, failed slices' leftovers included).
        """
        wanted = None if slice_ids is None else set(slice_ids)
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return
        for entry in entries:
            if wanted is None or belongs(entry, wanted):
                path = self.path + "/" + entry
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else _unlink(path)
        self.prune(self.path)

    def finalize(self, slice_ids: Iterable[str]) -> None:
        """Make the job's renames into the output directory durable (see ``sync``), then clean up."""
        if os.path.isdir(self.directory):
            durable.fsync_dir(self.directory)
        self.cleanup(slice_ids)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class TableStaging(Staging):
    """The layout of a table sink's one file per slice attempt, in a local directory ``D``::

        D/<staging>/<slice>~<attempt>.<pid>-<random>.tmp   being written (never visible to readers)
        D/<staging>/<slice>~<attempt><suffix>              staged: complete and fsynced, not yet final
        D/part-<slice><suffix>                             published: the committed attempt's output

    Readers ignore the staging directory (a ``_`` or ``.`` prefix, the convention of pyarrow datasets
    and of MaxCompute's local runner), so a half-written or losing attempt is never visible. A
    temporary file that is gone when the stage is committed was removed by the job's finalize after
    another attempt committed the slice: :class:`StageLost`, which the SDK
    treats as a lost commit, not as an I/O error.
    """

    def __init__(self, directory: str, dirname: str, suffix: str):
        super().__init__(directory, dirname)
        self.suffix = suffix

    @property
    def staging(self) -> str:
        """The staging directory's path (what the table sinks' ``LocalStaging`` called it)."""
        return self.path

    def final_name(self, slice_id: str) -> str:
        return f"part-{slice_id}{self.suffix}"

    def temp_path(self, slice_id: str, attempt: str) -> str:
        """A fresh temporary path; unique per writer so two processes never share one."""
        return f"{self.path}/{slice_id}~{attempt}.{os.getpid()}-{secrets.token_hex(4)}.tmp"

    def open_temp(self, temp_path: str) -> BinaryIO:
        return self.open_exclusive(temp_path)

    def commit(self, temp_path: str, slice_id: str, attempt: str, rows: int) -> Dict[str, Any]:
        """Turn a closed temporary file into the staged file of (slice, attempt), durably."""
        staged_rel = f"{self.dirname}/{slice_id}~{attempt}{self.suffix}"
        staged = self.directory + "/" + staged_rel
        try:
            size = os.path.getsize(temp_path)
            if not durable.fsync_file(temp_path):
                raise FileNotFoundError(temp_path)
            os.replace(temp_path, staged)
            durable.fsync_dir(self.path)
        except OSError as e:
            if isinstance(e, FileNotFoundError):
                raise StageLost(f"slice {slice_id} attempt {attempt} cannot be staged: its temporary file "
                                f"{temp_path} was removed (the job finalized {self.directory} after another "
                                "attempt committed the slice)") from None
            raise TableIOError(f"cannot stage {staged}: {e.strerror or e}")
        return {"staged": staged_rel, "rows": rows, "bytes": size}

    def staged_path(self, ref: Any, slice_id: Optional[str]) -> Optional[str]:
        """The staged file a ref names (None: nothing was staged, an empty slice whose schema was
        never known); refused unless it is one file of this staging area (of ``slice_id``'s)."""
        if not isinstance(ref, Mapping):
            raise self.refuse(ref, slice_id, f"it does not name a file of {self.path}")
        staged = ref.get("staged")
        if not staged:
            return None
        parts = self.entry_parts(ref, staged, slice_id, _one_staged_file)
        return self.path + "/" + parts[0]

    def publish_ref(self, slice_id: str, ref: Any) -> Optional[str]:
        """Publish a committed ref; the directory is fsynced once by :meth:`finalize`, not per slice
        (an fsync per slice would also wait for every write in flight, the next slice's staging)."""
        staged = self.staged_path(ref, slice_id)
        if staged is None:
            return None
        size = ref.get("bytes")
        return self.publish(slice_id, staged, self.directory + "/" + self.final_name(slice_id),
                            size if isinstance(size, int) else None, sync=False)

    def discard_ref(self, ref: Any) -> None:
        """Remove a losing attempt's staged file (and the staging directory if that empties it)."""
        staged = self.staged_path(ref, None)
        if staged is not None:
            self.remove(staged)

    @staticmethod
    def remove_temp(temp_path: str) -> None:
        _unlink(temp_path)


def _one_staged_file(parts: Sequence[str]) -> bool:
    return len(parts) == 1 and "~" in parts[0] and not parts[0].startswith(".")
