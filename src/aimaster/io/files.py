"""File inputs and outputs: local paths and fsspec URLs resolved in one place.

Inputs are listed once per dataset (by the one process that plans it) either by walking
``input_dir`` or from a PAI-style meta file. Outputs go through :class:`FileSink`: an attempt writes
into a staging directory inside the output directory (same file system, so the final rename is
atomic) and the file is renamed to its final name, derived from the slice id, only after the
attempt's commit won. On an object store (``s3://``, ``oss://``, ...), which has no rename, the
staged object is copied server-side to its final key instead (:mod:`aimaster.io.object_store`).

Credentials and endpoints of remote file systems never go through etcd (the sink's description
holds only the URL): each process gets them from its environment, the way the file system's own
library reads them (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...) or from fsspec's configuration
(``FSSPEC_S3_ENDPOINT_URL``, ``FSSPEC_S3='{"key": ...}'``, or ``~/.config/fsspec/*.json``); see
docs/object-stores.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import fsspec
from fsspec.implementations.local import LocalFileSystem

from aimaster.data.outputs import OutputSink, StagedRef
from aimaster.errors import ConfigError, EmptyInputError, EtcdDataError, InputNotFoundError, MetaFileError
from aimaster.io import durable, listing, object_store
from aimaster.io.staging import STAGING_DIR, StagedOutputMissingError, Staging, component_ok


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def resolve(path: str) -> Tuple[fsspec.AbstractFileSystem, str]:
    """(file system, path within it) for a local path, ``file://`` path, or fsspec URL."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"expected a directory path or URL, got {path!r}")
    if path.startswith("file://"):
        path = path[len("file://"):]
    if not is_url(path):
        return LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    try:
        fs, root = fsspec.core.url_to_fs(path)
    except (ValueError, ImportError) as e:
        raise ConfigError(f"cannot open {path}: {e}")
    return fs, root.rstrip("/")


def display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """What users see and what ``get_next_slice`` returns: a plain path locally, else a URL."""
    if isinstance(fs, LocalFileSystem):
        return path
    return fs.unstrip_protocol(path)


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def list_input_files(input_dir: str, skip_unreadable: bool = False) -> Tuple[str, List[str]]:
    """Every regular, non-hidden file under ``input_dir``, recursively, sorted; paths relative."""
    base, found = list_inputs(input_dir, skip_unreadable)
    return base, found.names


def list_inputs(input_dir: str, skip_unreadable: bool = False) -> Tuple[str, listing.Listing]:
    """Like :func:`list_input_files`, with what was left out (see :mod:`aimaster.io.listing`)."""
    fs, root = resolve(input_dir)
    if isinstance(fs, LocalFileSystem):
        return _list_inputs(input_dir, fs, root, skip_unreadable)
    object_store.refresh(fs, root)  # a listing cached by this process may predate new objects
    with object_store.remote_errors(input_dir, "listing input directory"):
        return _list_inputs(input_dir, fs, root, skip_unreadable)


def _list_inputs(input_dir: str, fs: fsspec.AbstractFileSystem, root: str,
                 skip_unreadable: bool) -> Tuple[str, listing.Listing]:
    if not fs.exists(root):
        raise InputNotFoundError(f"input directory {input_dir} does not exist")
    if not fs.isdir(root):
        raise ConfigError(f"input_dir {input_dir} is not a directory")
    if isinstance(fs, LocalFileSystem):
        found = listing.walk(root, skip_unreadable)
    else:
        found = listing.Listing()
        for full, info in fs.find(root, detail=True).items():
            if info.get("type") != "file":
                continue
            rel = full[len(root):].lstrip("/")
            # A key ending in "/" is a "directory marker" (consoles and some tools make them), not a file.
            if rel and not rel.endswith("/") and not _hidden(rel):
                found.names.append(rel)
        found.names.sort()
    if not found.names:
        raise EmptyInputError(f"input directory {input_dir} contains no files")
    # URLs keep the user's spelling (memory://data, not fsspec's canonical memory:///data).
    return (input_dir.rstrip("/") if is_url(input_dir) else display(fs, root)), found


def _field(meta: Mapping[str, Any], name: str) -> Any:
    # PAI ElasticBatch's own example spells it "FIleDir": accept any capitalisation of the documented keys.
    for key, value in meta.items():
        if isinstance(key, str) and key.lower() == name.lower():
            return value
    return None


def read_meta_file(meta_path: str, input_dir: str) -> Tuple[str, List[str]]:
    """Files from a ``{"FileCount": N, "FileDir": "/dir", "FileList": [...]}`` meta file."""
    fs, path = resolve(meta_path)
    local = isinstance(fs, LocalFileSystem)
    try:
        with contextlib.nullcontext() if local else object_store.remote_errors(meta_path, "reading meta file"):
            with fs.open(path, "rb") as f:
                raw = f.read()
    except FileNotFoundError:
        raise InputNotFoundError(f"input_file_meta_path {meta_path} does not exist")
    except OSError as e:
        raise MetaFileError(f"cannot read meta file {meta_path}: {e}")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MetaFileError(f"meta file {meta_path} is not valid JSON: {e}")
    if not isinstance(meta, dict):
        raise MetaFileError(f"meta file {meta_path} must hold a JSON object")
    files = _field(meta, "FileList")
    count = _field(meta, "FileCount")
    if not isinstance(files, list) or not all(isinstance(x, str) and x for x in files):
        raise MetaFileError(f"meta file {meta_path}: FileList must be a list of file names")
    if not isinstance(count, int) or isinstance(count, bool):
        raise MetaFileError(f"meta file {meta_path}: FileCount must be an integer")
    if count != len(files):
        raise MetaFileError(f"meta file {meta_path}: FileCount is {count} but FileList has {len(files)} entries")
    if not files:
        raise EmptyInputError(f"meta file {meta_path} lists no files")
    file_dir = _field(meta, "FileDir") or input_dir
    if not isinstance(file_dir, str) or not file_dir:
        raise MetaFileError(f"meta file {meta_path}: FileDir must be a directory path")
    dfs, root = resolve(file_dir)
    return (file_dir.rstrip("/") if is_url(file_dir) else display(dfs, root)), list(files)


def ensure_output_dir(output_dir: str, create: bool) -> None:
    """Check that ``output_dir`` exists, creating it if ``create`` (a bucket, on an object store)."""
    fs, root = resolve(output_dir)
    local = isinstance(fs, LocalFileSystem)
    with contextlib.nullcontext() if local else object_store.remote_errors(output_dir, "opening output_dir"):
        if fs.exists(root):
            return
        if not create:
            raise InputNotFoundError(f"output_dir {output_dir} does not exist (auto_create_output_dir=False)")
        fs.makedirs(root, exist_ok=True)


def join(base: str, rel: str) -> str:
    if rel.startswith("/") or "://" in rel:
        return rel
    return base.rstrip("/") + "/" + rel


def name_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot be an output's final name (None when it can): relative, inside the output
    directory, and not in its staging area (which is deleted when the job's outputs are final)."""
    if not isinstance(name, str) or not name:
        return "is empty"
    if name.startswith("/") or "\0" in name:
        return "is not a relative path"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "has an empty, '.' or '..' component"
    if parts[0] == STAGING_DIR:
        return f"is inside the staging area {STAGING_DIR}"
    return None


class FileSink(OutputSink):
    """Per-slice output files in ``output_dir``, published by rename when their slice commits.

    Staged files live at ``.aimaster-staging/<slice>/<attempt>/<final name>``; the rules (refs read
    from etcd are checked, publishing is idempotent and never silent about a lost file, renames are
    durable, cleanup removes the job's staging) are :mod:`aimaster.io.staging`'s, the same as the
    table sinks'. The refs it gets back from etcd (commit records) are checked against the one shape
    it writes, ``{"staged": ".aimaster-staging/<slice>/<attempt>/<final>", "final": "<final>"}``.
    On an object store, publishing is a server-side copy (:mod:`aimaster.io.object_store`).
    """

    kind = "files"

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.fs, self.root = resolve(output_dir)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.flat = not self.local and object_store.is_object_store(self.fs)  # keys, no dirs, no rename
        self.staging = Staging(self.root, STAGING_DIR, owner=f"the file output in {output_dir}")

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "dir": self.output_dir}

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> FileSink:
        directory = description.get("dir")
        if not isinstance(directory, str) or not directory:
            raise EtcdDataError(f"file output sink description {dict(description)!r:.200} names no directory")
        return cls(directory)

    def _path(self, rel: str) -> str:
        problem = name_problem(rel)
        if problem is not None:
            raise ConfigError(f"output name {rel!r} {problem}: use a relative path inside {self.output_dir}")
        return self.root + "/" + rel

    def stage_path(self, slice_id: str, attempt: str, name: str) -> Tuple[str, StagedRef, List[str]]:
        """(staged path, ref, directories created for it) of output ``name`` of an attempt."""
        self._path(name)  # validates the final name
        if not (component_ok(slice_id) and component_ok(attempt)):
            raise ConfigError(f"cannot stage output for slice {slice_id!r}, attempt {attempt!r}")
        staged = f"{STAGING_DIR}/{slice_id}/{attempt}/{name}"
        path = self.root + "/" + staged
        created = self.makedirs(posixpath.dirname(path))
        return path, {"staged": staged, "final": name}, created

    def open_staged(self, slice_id: str, attempt: str, name: str, mode: str = "w",
                    **kwargs) -> Tuple[StagedFile, StagedRef]:
        path, ref, created = self.stage_path(slice_id, attempt, name)
        return StagedFile(self, path, mode, kwargs, name, created), ref

    def _ref(self, ref: Any, slice_id: Optional[str]) -> Tuple[str, str, str]:
        """(staged path, final path, attempt directory) of a ref, which may come from etcd."""
        if not isinstance(ref, Mapping):
            raise self.staging.refuse(ref, slice_id, "it is not an object")
        staged, final = ref.get("staged"), ref.get("final")
        if not isinstance(staged, str) or not isinstance(final, str):
            raise self.staging.refuse(ref, slice_id, "'staged' and 'final' must be strings")
        problem = name_problem(final)
        if problem is not None:
            raise self.staging.refuse(ref, slice_id, f"its final name {problem}")
        parts = self.staging.entry_parts(ref, staged, slice_id,
                                         lambda parts: len(parts) >= 3 and "/".join(parts[2:]) == final)
        area = self.staging.path
        return area + "/" + "/".join(parts), self.root + "/" + final, area + "/" + "/".join(parts[:2])

    def makedirs(self, directory: str) -> List[str]:
        """Create a staging directory, racing other workers that prune empty ones.

        Returns the directories that did not exist (locally), whose entries the caller makes durable.
        """
        if self.flat:
            return []  # an object store has no directories: a key is made with its object
        if self.local:
            return self.staging.makedirs(directory)
        for attempt in range(10):
            try:
                self.fs.makedirs(directory, exist_ok=True)
                return []
            except FileNotFoundError:  # a parent was pruned between two mkdir calls: try again
                if attempt == 9:
                    raise
            except OSError as e:
                raise durable.named(e, directory, "creating the output directory")
        return []

    def sync_staged(self, path: str, created: List[str]) -> bool:
        """Make a staged file that a library wrote at ``path`` durable (see slice_output_path).

        False when the library wrote nothing there: that output is then not part of the commit (a
        slice may have nothing to say), so publishing never meets a staged file that never was.
        """
        if not self.local:
            return True
        if not durable.fsync_file(path):
            return False
        durable.fsync_dir(posixpath.dirname(path))
        durable.sync_created(created)
        return True

    def publish(self, slice_id: str, staged: StagedRef) -> None:
        """Publish a committed output; done already is fine, a staged file gone unpublished is an error."""
        src, dst, _ = self._ref(staged, slice_id)
        if self.flat:
            object_store.publish(self.fs, src, dst, display(self.fs, dst))
            return
        if self.local:
            self.staging.publish(slice_id, src, dst)  # the directory is fsynced before the prune below
            self.staging.prune(posixpath.dirname(src))
            return
        try:
            if not self.fs.exists(src):
                if self.fs.exists(dst):
                    return  # published already: this is a repeat after a crash
                raise StagedOutputMissingError(
                    f"cannot publish slice {slice_id}: the committed output {display(self.fs, dst)} was never "
                    f"published and its staged file {display(self.fs, src)} is gone: the slice's output is lost")
            self.fs.makedirs(posixpath.dirname(dst), exist_ok=True)
            self.fs.mv(src, dst)
        except StagedOutputMissingError:
            raise
        except OSError as e:
            raise durable.named(e, dst, f"publishing {src}")
        self._prune_remote(posixpath.dirname(src))

    def _prune_remote(self, directory: str) -> None:
        """Remove now-empty staging directories of a file system with directories (not local)."""
        while directory == self.staging.path or directory.startswith(self.staging.path + "/"):
            try:
                if self.fs.exists(directory) and not self.fs.ls(directory, detail=False):
                    self.fs.rmdir(directory)
                else:
                    return
            except (OSError, NotImplementedError):
                return
            directory = posixpath.dirname(directory)

    def discard(self, staged: StagedRef) -> None:
        _, _, attempt_dir = self._ref(staged, None)
        try:
            if self.flat:
                object_store.remove_prefix(self.fs, attempt_dir)
            elif self.local:
                self.staging.remove(attempt_dir)
            else:
                if self.fs.exists(attempt_dir):
                    self.fs.rm(attempt_dir, recursive=True)
                self._prune_remote(posixpath.dirname(attempt_dir))
        except OSError:
            pass  # what is left is removed with the slice's staging when the job's outputs are final

    def finalize(self, committed: Iterable[Tuple[str, StagedRef]]) -> None:
        """Everything still staged once the committed files are published belongs to losers, crashed
        or failed attempts: the staging area is this job's alone (see :meth:`Staging.cleanup`)."""
        try:
            if self.flat:
                object_store.remove_prefix(self.fs, self.staging.path)
            elif self.local:
                self.staging.cleanup()
            elif self.fs.exists(self.staging.path):
                self.fs.rm(self.staging.path, recursive=True)
        except OSError:
            pass


class StagedFile:
    """A file being written for one attempt; durable (fsync'ed, with its directories) once closed.

    Errors name the file: a full disk says which output, not just "No space left on device".
    """

    def __init__(self, sink: FileSink, path: str, mode: str, kwargs: Dict[str, Any], final: str = "",
                 created: Optional[List[str]] = None):
        if not any(c in mode for c in "wax"):
            raise ConfigError(f"output files are opened for writing; mode {mode!r} is not a write mode")
        self.sink = sink
        self.path = path
        self.final = final or posixpath.basename(path)
        self.closed = False
        self._created = list(created or [])
        if sink.local:
            self._tmp = f"{path}.{uuid.uuid4().hex[:6]}.part"
            try:
                try:
                    self._f = open(self._tmp, mode, **kwargs)
                except FileNotFoundError:  # another attempt pruned the empty staging dir meanwhile
                    self._created += sink.makedirs(os.path.dirname(path))
                    self._f = open(self._tmp, mode, **kwargs)
            except OSError as e:
                raise self._named(e, "opening") from e
        else:
            self._tmp = None
            self._f = sink.fs.open(path, mode, **kwargs)

    def _named(self, error: OSError, doing: str) -> OSError:
        return durable.named(error, self._tmp or self.path, f"{doing} output {self.final}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            raise self._named(e, "writing") from e

    def writelines(self, lines) -> None:
        try:
            self._f.writelines(lines)
        except OSError as e:
            raise self._named(e, "writing") from e

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            raise self._named(e, "writing") from e

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._tmp is None:
            self._f.close()
            return
        try:
            try:
                self._f.flush()
                os.fsync(self._f.fileno())
            except OSError:
                self._close_quietly()
                raise
            self._f.close()
            try:
                os.replace(self._tmp, self.path)
            except FileNotFoundError:
                self._created += self.sink.makedirs(os.path.dirname(self.path))
                os.replace(self._tmp, self.path)
            durable.fsync_dir(os.path.dirname(self.path))
            durable.sync_created(self._created)
        except OSError as e:
            self._remove_tmp()
            raise self._named(e, "closing") from e

    def _close_quietly(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass  # the error being handled (a full disk, say) is the one to report

    def abort(self) -> None:
        self.closed = True
        self._close_quietly()
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


def dataset_key(*parts: Optional[str]) -> str:
    import hashlib

    h = hashlib.sha1("\0".join(p or "" for p in parts).encode()).hexdigest()
    return h[:12]
