"""``PosixFileConfig`` / ``PosixFileClient``: PAI ElasticBatch's file API over etcd-coordinated slices."""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

from aimaster.data.coordinator import Claim, Dataset, PlanData
from aimaster.data.handoff import give_back_unstarted
from aimaster.data.outputs import StagedRef
from aimaster.data.runtime import current_session
from aimaster.errors import ConfigError, EtcdDataError
from aimaster.frameworks.bindings import Binding
from aimaster.io import file_plan, files, input_check

log = logging.getLogger(__name__)


class PosixFileConfig:
    """Where the files are, where outputs go, and how many files make a slice.

    :param input_dir: directory whose files (recursively, sorted by name) are the inputs; a local
        path or an fsspec URL. May be empty when ``input_file_meta_path`` lists the inputs.
    :param output_dir: directory for the slices' outputs (:meth:`PosixFileClient.open_slice_output`);
        empty when the program writes no output through aimaster.
    :param slice_size: files per slice (a positive integer): the unit that is claimed, retried and
        committed exactly once.
    :param auto_create_output_dir: create ``output_dir`` when it does not exist (else that is an error).
    :param input_file_meta_path: a meta file listing the inputs instead of ``input_dir`` (its format:
        see the Concepts page, "The meta file").
    :param skip_unreadable: entries under ``input_dir`` that cannot be read (an unreadable directory,
        a dangling symlink, a name that is not UTF-8) are left out with a warning, and recorded in
        the plan, instead of failing the job (the default: never lose inputs silently).
    """

    def __init__(self, input_dir, output_dir, slice_size, auto_create_output_dir=True,
                 input_file_meta_path="", skip_unreadable=False):
        if not isinstance(slice_size, int) or isinstance(slice_size, bool) or slice_size <= 0:
            raise ConfigError(f"slice_size must be a positive integer, got {slice_size!r}")
        if not input_dir and not input_file_meta_path:
            raise ConfigError("input_dir (or input_file_meta_path) is required")
        self.input_dir = input_dir or ""
        self.output_dir = output_dir
        self.slice_size = slice_size
        self.auto_create_output_dir = auto_create_output_dir
        self.input_file_meta_path = input_file_meta_path or ""
        self.skip_unreadable = bool(skip_unreadable)

    def __repr__(self) -> str:
        return (f"PosixFileConfig(input_dir={self.input_dir!r}, output_dir={self.output_dir!r}, "
                f"slice_size={self.slice_size}, input_file_meta_path={self.input_file_meta_path!r})")


class PosixFileClient:
    """Hands out slices of files to this worker; see docs/api.md, "POSIX files".

    :param config: the dataset (:class:`PosixFileConfig`). Every worker of a job constructing a
        client with the same input agrees on the same plan without talking; the first to arrive
        lists the input and writes the plan.
    """

    def __init__(self, config: PosixFileConfig):
        self.config = config
        self._sink: Optional[files.FileSink] = None
        if config.output_dir:
            files.ensure_output_dir(config.output_dir, config.auto_create_output_dir)
            self._sink = files.FileSink(config.output_dir)
        self._session = current_session()
        source = self._source_key()
        self._dataset = Dataset(self._session, "f-" + files.dataset_key(*source))
        self._listed: Optional[dict] = None  # fingerprint of our own listing, if we planned
        plan = self._dataset.ensure_plan(self._plan, config.slice_size)
        self._base = plan["source"].get("base")
        if not isinstance(self._base, str) or not self._base:
            raise EtcdDataError(f"the plan of dataset {self._dataset.ds_id} names no input base: {self._base!r:.100}")
        if self._listed is None or plan["source"].get("input") != self._listed:
            self._check_input(plan)  # not the plan of our own listing: maybe one of an earlier run
        self._held: Dict[str, Claim] = {}
        self._current: Optional[str] = None
        self._open: Dict[str, List[files.StagedFile]] = {}
        self._paths: Dict[str, List[Tuple[str, StagedRef, List[str]]]] = {}  # slice_output_path files, to fsync
        self._framework: set = set()  # held slices a framework reader claimed (see _hold_claim)
        self._exit_hook = False

    def _source_key(self):
        c = self.config

        def norm(p):
            return p if not p or files.is_url(p) else os.path.abspath(p)

        return ("files", norm(c.input_dir), norm(c.input_file_meta_path))

    def _plan(self) -> PlanData:
        _, input_dir, meta = self._source_key()
        names, source = file_plan.plan_files(input_dir, meta, self.config.skip_unreadable)
        # This run's verdict on its input, before the plan exists: a peer adopting the plan moments
        # from now must not list the input again (see aimaster.io.input_check).
        input_check.vouch(self._session, self._dataset.k.base)
        self._listed = source["input"]
        return PlanData("files", len(names), source, names)

    def _check_input(self, plan) -> None:
        """A plan we did not just make may be from an earlier run: is the input still the planned one?"""
        ds = self._dataset

        def planned_names() -> List[str]:
            return [name for index in range(ds.num_slices) for name in ds.items(index)]

        def list_now() -> List[str]:
            _, input_dir, meta = self._source_key()
            return file_plan.plan_files(input_dir, meta, self.config.skip_unreadable)[0]

        job_id = self._session.store.prefix.rstrip("/").rsplit("/", 1)[-1]
        input_check.ensure_unchanged(self._session, ds.k.base, plan, job_id, list_now, planned_names)

    # ------------------------------------------------------------------ PAI ElasticBatch's API
    def get_next_slice(self) -> List[str]:
        """Claim the next slice and return its file paths; raises OutOfRangeException when done.

        A slice with a local input that is no longer a regular file (deleted, or replaced by a FIFO
        that would block the program's ``open()`` forever) is given back with an error naming it,
        and fails for good after its attempts, reported; the next slice is returned instead.
        """
        while True:
            claim = self._dataset.next_claim()
            paths, problem = file_plan.slice_inputs(self._dataset, claim.index)
            if problem is None:
                break
            log.warning("aimaster: slice %s: %s; giving it back", claim.slice_id, problem)
            self._dataset.release(claim, problem)
        claim.items = len(paths)
        self._held[claim.slice_id] = claim
        self._current = claim.slice_id
        return paths

    def get_slice_id(self) -> Optional[str]:
        """Id of the slice most recently returned by get_next_slice (None before the first)."""
        return self._current

    def commit_slice(self, slice_id: Optional[str] = None) -> bool:
        """Commit a slice (default: the current one). True if this attempt is its one commit.

        The same etcd transaction claims the next free slice for the next :meth:`get_next_slice`
        (one round trip per slice); a program that ends without asking for it gives it back at exit.
        """
        sid = self._current if slice_id is None else str(slice_id)
        if sid is None:
            raise ConfigError("commit_slice() called before get_next_slice()")
        return self._commit(sid)

    def _commit(self, sid: str, claim_next: Optional[bool] = None) -> bool:
        """Commit held slice ``sid``; ``claim_next`` None: claim the next slice in the same
        transaction as the SDK loop wants it (see below), else as told (framework consumers)."""
        claim = self._held.pop(sid, None)
        if claim is None:
            raise ConfigError(f"slice {sid!r} is not held by this worker (already committed, or never claimed)")
        for f in self._open.pop(sid, []):
            f.close()
        for path, ref, created in self._paths.pop(sid, []):
            if not self._sink.sync_staged(path, created):  # written by a library: durable first
                claim.outputs = [(sink, r) for sink, r in claim.outputs if r is not ref]  # never written
        # One transaction per slice: the commit of a slice from get_next_slice() also claims the
        # next free one, which the next get_next_slice() returns (one left unasked for is given back
        # at exit, see _give_back_unasked). Only when this worker holds no other slice: a program
        # that already works on the next one (PAI's DataWriter commits a slice once the next has
        # begun) would hold the claimed one idle meanwhile, and at the end of the data keep it from
        # an idle peer. A framework consumer says itself whether its readers want the next slice
        # (aimaster.frameworks.stream: readers in this process take it from its commit).
        framework = sid in self._framework
        self._framework.discard(sid)
        if claim_next is not None:
            return self._dataset.commit(claim, claim_next=claim_next)
        claim_next = not framework and all(other in self._framework for other in self._held)
        if claim_next and not self._exit_hook:
            self._exit_hook = True
            atexit.register(_give_back_unasked, self._dataset)
        return self._dataset.commit(claim, claim_next=claim_next)

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
        path, ref, created = self._sink.stage_path(sid, claim.attempt, final)
        claim.add_output(self._sink, ref)
        self._paths.setdefault(sid, []).append((path, ref, created))
        return path

    def release_slice(self, slice_id: Optional[str] = None, error: Optional[str] = None) -> None:
        """Give a held slice back uncommitted (e.g. after a caught error), recording the error."""
        sid = self._current if slice_id is None else str(slice_id)
        claim = self._held.pop(sid, None)
        self._framework.discard(sid)
        if claim is None:
            return
        for f in self._open.pop(sid, []):
            f.abort()
        self._paths.pop(sid, None)
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

    def framework_binding(self, filter_value: Any = None) -> Binding:
        """How :func:`aimaster.frameworks.track` holds, writes and commits this client's slices."""
        if filter_value is not None:
            raise ConfigError("filter_value applies to table outputs only")
        return FileBinding(self)

    def _hold_claim(self, claim: Claim) -> None:
        """Hold a slice a framework reader claimed, so the per-slice API (``open_slice_output``,
        ``commit_slice``, ``release_slice``) applies to it."""
        if claim.slice_id in self._held:
            raise ConfigError(f"slice {claim.slice_id} is already held through get_next_slice(); do not mix "
                              "get_next_slice() with a framework dataset of the same client")
        self._held[claim.slice_id] = claim
        self._framework.add(claim.slice_id)


class FileBinding(Binding):
    """The frameworks' consumer side of a file client (:mod:`aimaster.frameworks.stream`).

    Adopted claims are held by the client itself, so its own atomic output helper
    (``open_slice_output(slice_id=...)``) and ``commit_slice(slice_id)`` work for them exactly as
    for slices from ``get_next_slice()``.
    """

    def __init__(self, client: PosixFileClient):
        self.client = client
        self.dataset = client.dataset
        self._files: Dict[tuple, Any] = {}

    def hold(self, claim: Claim) -> None:
        self.client._hold_claim(claim)

    def output(self, claim: Claim, name: Optional[str], suffix: str, mode: str, **kwargs: Any):
        key = (claim.slice_id, claim.attempt, name, suffix)
        handle = self._files.get(key)
        if handle is None or handle.closed:
            handle = self.client.open_slice_output(name, mode=mode, slice_id=claim.slice_id, suffix=suffix,
                                                   **kwargs)
            self._files[key] = handle
        return handle

    def _drop(self, claim: Claim) -> None:
        for key in [k for k in self._files if k[:2] == (claim.slice_id, claim.attempt)]:
            del self._files[key]

    def seal(self, claim: Claim) -> None:
        self._drop(claim)

    def commit(self, claim: Claim, sealed: Any = None, claim_next: bool = False) -> bool:
        return self.client._commit(claim.slice_id, claim_next)  # closes (fsyncs) the slice's files first

    def release(self, claim: Claim, error: Optional[str]) -> None:
        self._drop(claim)
        self.client.release_slice(claim.slice_id, error)


def _give_back_unasked(dataset: Dataset) -> None:
    """At exit: the slice the last commit claimed for a get_next_slice() that never came goes back
    to todo at once, its attempt not counted (it was never started)."""
    try:
        give_back_unstarted(dataset)
    except Exception as e:  # noqa: BLE001 - exiting anyway; the lease frees the claim
        log.warning("aimaster: could not give back the slice claimed ahead (%s); it returns with the lease", e)
