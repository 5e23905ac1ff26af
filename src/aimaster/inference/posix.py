"""``PosixFileConfig`` / ``PosixFileClient``: the seed's file API over etcd-coordinated slices."""

from __future__ import annotations

import os
from typing import Dict, List, Optional

from aimaster.data.coordinator import Claim, Dataset, PlanData
from aimaster.data.runtime import current_session
from aimaster.errors import ConfigError, InputNotFoundError
from aimaster.io import files


class PosixFileConfig:
    """Where the files are, where outputs go, and how many files make a slice."""

    def __init__(self, input_dir, output_dir, slice_size, auto_create_output_dir=True,
                 input_file_meta_path=""):
        if not isinstance(slice_size, int) or isinstance(slice_size, bool) or slice_size <= 0:
            raise ConfigError(f"slice_size must be a positive integer, got {slice_size!r}")
        if not input_dir and not input_file_meta_path:
            raise ConfigError("input_dir (or input_file_meta_path) is required")
        self.input_dir = input_dir or ""
        self.output_dir = output_dir
        self.slice_size = slice_size
        self.auto_create_output_dir = auto_create_output_dir
        self.input_file_meta_path = input_file_meta_path or ""

    def __repr__(self) -> str:
        return (f"PosixFileConfig(input_dir={self.input_dir!r}, output_dir={self.output_dir!r}, "
                f"slice_size={self.slice_size}, input_file_meta_path={self.input_file_meta_path!r})")


class PosixFileClient:
    """Hands out slices of files to this worker; see CONTRACT.md section 2 "POSIX files"."""

    def __init__(self, config: PosixFileConfig):
        self.config = config
        self._sink: Optional[files.FileSink] = None
        if config.output_dir:
            fs, root = files.resolve(config.output_dir)
            if not fs.exists(root):
                if not config.auto_create_output_dir:
                    raise InputNotFoundError(
                        f"output_dir {config.output_dir} does not exist (auto_create_output_dir=False)")
                fs.makedirs(root, exist_ok=True)
            self._sink = files.FileSink(config.output_dir)
        self._session = current_session()
        source = self._source_key()
        self._dataset = Dataset(self._session, "f-" + files.dataset_key(*source))
        self._dataset.ensure_plan(self._plan, config.slice_size)
        self._base = self._dataset.plan["source"]["base"]
        self._held: Dict[str, Claim] = {}
        self._current: Optional[str] = None
        self._open: Dict[str, List[files.StagedFile]] = {}

    def _source_key(self):
        c = self.config

        def norm(p):
            return p if not p or files.is_url(p) else os.path.abspath(p)

        return ("files", norm(c.input_dir), norm(c.input_file_meta_path))

    def _plan(self) -> PlanData:
        c = self.config
        if c.input_file_meta_path:
            base, names = files.read_meta_file(c.input_file_meta_path, c.input_dir)
        else:
            base, names = files.list_input_files(c.input_dir)
        return PlanData("files", len(names), {"base": base}, names)

    # ------------------------------------------------------------------ the seed's API
    def get_next_slice(self) -> List[str]:
        """Claim the next slice and return its file paths; raises OutOfRangeException when done."""
        claim = self._dataset.next_claim()
        names = self._dataset.items(claim.index)
        claim.items = len(names)
        self._held[claim.slice_id] = claim
        self._current = claim.slice_id
        return [files.join(self._base, n) for n in names]

    def get_slice_id(self) -> Optional[str]:
        """Id of the slice most recently returned by get_next_slice (None before the first)."""
        return self._current

    def commit_slice(self, slice_id: Optional[str] = None) -> bool:
        """Commit a slice (default: the current one). True if this attempt is its one commit."""
        sid = self._current if slice_id is None else str(slice_id)
        if sid is None:
            raise ConfigError("commit_slice() called before get_next_slice()")
        claim = self._held.pop(sid, None)
        if claim is None:
            raise ConfigError(f"slice {sid!r} is not held by this worker (already committed, or never claimed)")
        for f in self._open.pop(sid, []):
            f.close()
        return self._dataset.commit(claim)

    # ------------------------------------------------------------------ atomic outputs
    def open_slice_output(self, name: Optional[str] = None, mode: str = "w", slice_id: Optional[str] = None,
                          suffix: str = "", **open_kwargs) -> files.StagedFile:
        """Open an output file bound to a slice (default: the current one).

        It is written under a temporary name and appears in ``output_dir`` as ``name`` (default:
        the slice id plus ``suffix``) only when this attempt's ``commit_slice`` wins, so a crashed,
        retried or backed-up attempt never leaves a half-written or duplicate file.
        """
        if self._sink is None:
            raise ConfigError("open_slice_output needs PosixFileConfig(output_dir=...)")
        sid = self._current if slice_id is None else str(slice_id)
        claim = self._held.get(sid) if sid is not None else None
        if claim is None:
            raise ConfigError(f"no slice {sid!r} held by this worker to write output for")
        final = name if name is not None else f"{sid}{suffix}"
        handle, ref = self._sink.open_staged(sid, claim.attempt, final, mode, **open_kwargs)
        claim.add_output(self._sink, ref)
        self._open.setdefault(sid, []).append(handle)
        return handle

    def slice_output_path(self, name: Optional[str] = None, slice_id: Optional[str] = None,
                          suffix: str = "") -> str:
        """A local path to write a slice's output to (for libraries that want a path, e.g. numpy.save).

        The file is published under ``name`` when the slice commits, like :meth:`open_slice_output`.
        """
        if self._sink is None or not self._sink.local:
            raise ConfigError("slice_output_path needs a local output_dir (use open_slice_output for URLs)")
        sid = self._current if slice_id is None else str(slice_id)
        claim = self._held.get(sid) if sid is not None else None
        if claim is None:
            raise ConfigError(f"no slice {sid!r} held by this worker to write output for")
        final = name if name is not None else f"{sid}{suffix}"
        staged = f"{files.STAGING_DIR}/{sid}/{claim.attempt}/{final}"
        path = self._sink._path(staged)
        self._sink.makedirs(os.path.dirname(path))
        claim.add_output(self._sink, {"staged": staged, "final": final})
        return path

    def release_slice(self, slice_id: Optional[str] = None, error: Optional[str] = None) -> None:
        """Give a held slice back uncommitted (e.g. after a caught error), recording the error."""
        sid = self._current if slice_id is None else str(slice_id)
        claim = self._held.pop(sid, None)
        if claim is None:
            return
        for f in self._open.pop(sid, []):
            f.abort()
        self._dataset.release(claim, error)

    @property
    def dataset(self) -> Dataset:
        return self._dataset

    # ------------------------------------------------------------------ framework datasets
    def create_torch_dataset(self, transform=None, prefetch_slices: int = 1):
        """A PyTorch ``IterableDataset`` over this job's slices, claimed lazily by whoever reads it.

        Items are dicts: ``{"slice_id", "claim", "path"}`` plus ``"data": transform(path)`` (or the
        keys of the dict ``transform`` returns). Consume it through ``dataset.track(loader)``, which
        commits each slice once all its items were consumed and its outputs written; see
        docs/frameworks.md.
        """
        from aimaster.frameworks.torch_files import FileSliceDataset

        return FileSliceDataset(self, transform, prefetch_slices)

    def create_tf_dataset(self, prefetch_slices: int = 1):
        """A ``tf.data.Dataset`` of ``{"slice_id", "path"}`` over this job's slices, claimed lazily.

        Consume it through ``aimaster.frameworks.track(client, dataset)``; see docs/frameworks.md.
        """
        from aimaster.frameworks.tf_files import create_tf_dataset

        return create_tf_dataset(self, prefetch_slices)

    def _hold_claim(self, claim: Claim) -> None:
        """Hold a slice a framework reader claimed, so the seed's per-slice API applies to it."""
        if claim.slice_id in self._held:
            raise ConfigError(f"slice {claim.slice_id} is already held through get_next_slice(); do not mix "
                              "get_next_slice() with a framework dataset of the same client")
        self._held[claim.slice_id] = claim
