"""File inputs and outputs: local paths and fsspec URLs resolved in one place.

Inputs are listed once per dataset (by the one process that plans it) either by walking
``input_dir`` or from a PAI-style meta file. Outputs go through :class:`FileSink`: an attempt writes
into a staging directory inside the output directory (same file system, so the final rename is
atomic) and the file is renamed to its final name, derived from the slice id, only after the
attempt's commit won.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import uuid
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import fsspec
from fsspec.implementations.local import LocalFileSystem

from aimaster.data.outputs import OutputSink, StagedRef, register_sink
from aimaster.errors import ConfigError, EmptyInputError, InputNotFoundError, MetaFileError

STAGING_DIR = ".aimaster-staging"


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


def list_input_files(input_dir: str) -> Tuple[str, List[str]]:
    """Every regular, non-hidden file under ``input_dir``, recursively, sorted; paths relative."""
    fs, root = resolve(input_dir)
    if not fs.exists(root):
        raise InputNotFoundError(f"input directory {input_dir} does not exist")
    if not fs.isdir(root):
        raise ConfigError(f"input_dir {input_dir} is not a directory")
    names: List[str] = []
    if isinstance(fs, LocalFileSystem):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = os.path.relpath(dirpath, root)
            for f in filenames:
                if f.startswith("."):
                    continue
                full = os.path.join(dirpath, f)
                if os.path.isfile(full):
                    names.append(f if rel_dir == "." else posixpath.join(rel_dir.replace(os.sep, "/"), f))
    else:
        for full, info in fs.find(root, detail=True).items():
            if info.get("type") != "file":
                continue
            rel = full[len(root):].lstrip("/")
            if rel and not _hidden(rel):
                names.append(rel)
    names.sort()
    if not names:
        raise EmptyInputError(f"input directory {input_dir} contains no files")
    # URLs keep the user's spelling (memory://data, not fsspec's canonical memory:///data).
    return (input_dir.rstrip("/") if is_url(input_dir) else display(fs, root)), names


def _field(meta: Mapping[str, Any], name: str) -> Any:
    # The seed's own example spells it "FIleDir": accept any capitalisation of the documented keys.
    for key, value in meta.items():
        if isinstance(key, str) and key.lower() == name.lower():
            return value
    return None


def read_meta_file(meta_path: str, input_dir: str) -> Tuple[str, List[str]]:
    """Files from a ``{"FileCount": N, "FileDir": "/dir", "FileList": [...]}`` meta file."""
    fs, path = resolve(meta_path)
    try:
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


def join(base: str, rel: str) -> str:
    if rel.startswith("/") or "://" in rel:
        return rel
    return base.rstrip("/") + "/" + rel


@register_sink
class FileSink(OutputSink):
    """Per-slice output files in ``output_dir``, published by rename when their slice commits."""

    kind = "files"

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.fs, self.root = resolve(output_dir)
        self.local = isinstance(self.fs, LocalFileSystem)

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "dir": self.output_dir}

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> FileSink:
        return cls(str(description["dir"]))

    def _path(self, rel: str) -> str:
        if rel.startswith("/") or ".." in rel.split("/"):
            raise ConfigError(f"output name {rel!r} must be a relative path inside {self.output_dir}")
        return self.root + "/" + rel

    def open_staged(self, slice_id: str, attempt: str, name: str, mode: str = "w",
                    **kwargs) -> Tuple[StagedFile, StagedRef]:
        staged = f"{STAGING_DIR}/{slice_id}/{attempt}/{name}"
        self._path(name)  # validates the final name
        path = self._path(staged)
        self.makedirs(posixpath.dirname(path))
        return StagedFile(self, path, mode, kwargs), {"staged": staged, "final": name}

    def makedirs(self, directory: str) -> None:
        """Create a staging directory, racing other workers that prune empty ones (see _prune)."""
        for attempt in range(10):
            try:
                self.fs.makedirs(directory, exist_ok=True)
                return
            except FileNotFoundError:  # a parent was pruned between two mkdir calls: try again
                if attempt == 9:
                    raise

    def publish(self, slice_id: str, staged: StagedRef) -> None:
        src, dst = self._path(staged["staged"]), self._path(staged["final"])
        if not self.fs.exists(src):
            return  # already published (this is a repeat after a crash) or never written
        parent = posixpath.dirname(dst)
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        if self.local:
            os.replace(src, dst)
        else:
            self.fs.mv(src, dst)
        self._prune(posixpath.dirname(src))

    def _prune(self, directory: str) -> None:
        """Remove now-empty staging directories up to the output directory."""
        stop = self.root
        while directory.startswith(stop + "/") and directory != stop:
            try:
                if self.local:
                    os.rmdir(directory)
                elif self.fs.exists(directory) and not self.fs.ls(directory, detail=False):
                    self.fs.rmdir(directory)
                else:
                    return
            except (OSError, NotImplementedError):
                return
            directory = posixpath.dirname(directory)

    def discard(self, staged: StagedRef) -> None:
        path = self._path(staged["staged"])
        attempt_dir = posixpath.dirname(path)
        try:
            if self.local:
                shutil.rmtree(attempt_dir, ignore_errors=True)
            elif self.fs.exists(attempt_dir):
                self.fs.rm(attempt_dir, recursive=True)
            self._prune(posixpath.dirname(attempt_dir))
        except OSError:
            pass

    def finalize(self, committed: Iterable[Tuple[str, StagedRef]]) -> None:
        """Everything still staged after all committed files are published belongs to losers."""
        staging = self._path(STAGING_DIR)
        try:
            if self.local:
                shutil.rmtree(staging, ignore_errors=True)
            elif self.fs.exists(staging):
                self.fs.rm(staging, recursive=True)
        except OSError:
            pass


class StagedFile:
    """A file being written for one attempt; durable (flushed and fsync'ed) once closed."""

    def __init__(self, sink: FileSink, path: str, mode: str, kwargs: Dict[str, Any]):
        if not any(c in mode for c in "wax"):
            raise ConfigError(f"output files are opened for writing; mode {mode!r} is not a write mode")
        self.sink = sink
        self.path = path
        self.closed = False
        if sink.local:
            self._tmp = f"{path}.{uuid.uuid4().hex[:6]}.part"
            try:
                self._f = open(self._tmp, mode, **kwargs)
            except FileNotFoundError:  # another attempt pruned the empty staging dir meanwhile
                sink.makedirs(os.path.dirname(path))
                self._f = open(self._tmp, mode, **kwargs)
        else:
            self._tmp = None
            self._f = sink.fs.open(path, mode, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def write(self, data) -> int:
        return self._f.write(data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._tmp is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            try:
                os.replace(self._tmp, self.path)
            except FileNotFoundError:
                self.sink.makedirs(os.path.dirname(self.path))
                os.replace(self._tmp, self.path)
        else:
            self._f.close()

    def abort(self) -> None:
        self.closed = True
        try:
            self._f.close()
        finally:
            if self._tmp is not None and os.path.exists(self._tmp):
                os.unlink(self._tmp)

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
