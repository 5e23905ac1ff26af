"""The reading side: claim slices lazily, load the next one while the current one is consumed.

:class:`SliceFeed` yields ``(claim, content)`` pairs in the process that reads (a ``DataLoader``
worker, the main process, TensorFlow's generator thread). A background thread claims the next slice
and loads its content (the file list, the table rows) so that neither the etcd round trip nor the
read sits between two slices; at most ``prefetch`` slices are claimed beyond the one being consumed.

The feed never waits for slices that other workers hold: when nothing is free it ends. Waiting
there would deadlock, because the reader may still hold items of its last slice in a half-built batch
that only reaches the consumer, and so gets committed, once the reader's stream ends. The consumer
(:mod:`aimaster.frameworks.stream`) waits instead, and starts the pipeline again if slices come back.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Iterator, List, Optional, Tuple

import aimaster.frameworks.claims as claims_module
from aimaster.data.coordinator import Claim, Dataset
from aimaster.errors import ConfigError
from aimaster.frameworks.claims import SliceSpec

log = logging.getLogger(__name__)

Loader = Callable[[Dataset, Claim], Any]
_END = object()
_JOIN_S = 10.0


class UnusableSlice(Exception):
    """Raised by a loader: this slice cannot be read here (its message says why); give it back with
    that error, so that it fails for good after its attempts, and go on with the next one."""


def load_file_slice(dataset: Dataset, claim: Claim) -> List[str]:
    """The loader of file datasets: the slice's input paths, checked as ``get_next_slice()`` does."""
    from aimaster.io.file_plan import slice_inputs

    paths, problem = slice_inputs(dataset, claim.index)
    if problem is not None:
        raise UnusableSlice(problem)
    claim.items = len(paths)
    return paths


def check_tracked(spec: SliceSpec) -> None:
    """Refuse to claim for a pipeline nobody commits: its slices would come back forever."""
    from aimaster.frameworks.stream import is_tracked

    if not (spec.tracked or is_tracked(spec.ds_id)):
        raise ConfigError(
            f"slices of dataset {spec.ds_id} are read but nothing commits them: iterate the data through "
            "dataset.track(loader) (PyTorch) or aimaster.frameworks.track(client, dataset) (TensorFlow)")


def check_prefetch(prefetch: int) -> int:
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0:
        raise ConfigError(f"prefetch_slices must be a non-negative integer, got {prefetch!r}")
    return prefetch


class SliceFeed:
    """Iterate ``(claim, content)`` over free slices; ``load(dataset, claim)`` makes the content."""

    def __init__(self, spec: SliceSpec, load: Loader, prefetch: int = 1):
        self.spec = spec
        self.load = load
        self.prefetch = check_prefetch(prefetch)

    def __iter__(self) -> Iterator[Tuple[Claim, Any]]:
        check_tracked(self.spec)
        dataset = claims_module.reading_dataset(self.spec)
        slots = threading.Semaphore(self.prefetch + 1)
        ready: queue.Queue = queue.Queue()
        stop = threading.Event()
        thread = threading.Thread(target=self._fill, args=(dataset, slots, ready, stop),
                                  name="aimaster-slice-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                entry = ready.get()
                if entry is _END:
                    return
                if isinstance(entry, BaseException):
                    raise entry
                yield entry
                slots.release()  # the consumer came back for more: that slice is fully read
        finally:
            stop.set()
            thread.join(_JOIN_S)
            self._give_back(dataset, ready)

    def _fill(self, dataset: Dataset, slots: threading.Semaphore, ready: queue.Queue,
              stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                if not slots.acquire(timeout=0.1):
                    continue
                if stop.is_set():
                    return
                with claims_module.session_lock(dataset.session):
                    claim = dataset.try_claim()
                if claim is None:
                    ready.put(_END)
                    return
                claims_module.remember(claim)
                try:
                    content = self.load(dataset, claim)
                except UnusableSlice as e:
                    log.warning("aimaster: slice %s: %s; giving it back", claim.slice_id, e)
                    _release(dataset, claim, str(e))
                    slots.release()
                    continue
                except BaseException as e:
                    _release(dataset, claim, f"{type(e).__name__}: {e}")
                    ready.put(e)
                    return
                if stop.is_set():
                    _release(dataset, claim)
                    return
                ready.put((claim, content))
        except BaseException as e:  # noqa: BLE001 - surfaced in the reading thread
            ready.put(e)

    @staticmethod
    def _give_back(dataset: Dataset, ready: queue.Queue) -> None:
        """Slices claimed ahead but never handed out go back at once (not after the lease TTL)."""
        while True:
            try:
                entry = ready.get_nowait()
            except queue.Empty:
                return
            if isinstance(entry, tuple):
                _release(dataset, entry[0])


def _release(dataset: Dataset, claim: Claim, error: Optional[str] = None) -> None:
    claims_module.forget(claim)
    try:
        with claims_module.session_lock(dataset.session):
            dataset.release(claim, error)
    except Exception as e:  # noqa: BLE001 - the lease returns it anyway
        log.warning("aimaster: could not give slice %s back (%s); it returns when the lease expires",
                    claim.slice_id, e)
