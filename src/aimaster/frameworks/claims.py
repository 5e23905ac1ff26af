"""Who holds a slice when a framework reads it: the reading process, then the consuming one.

A framework's data pipeline may read in other processes than the one that consumes the data and
writes the outputs (PyTorch ``DataLoader`` workers). The reading process claims a slice with its own
etcd session, because gRPC channels must not cross ``fork`` and a spawned child shares nothing with
its parent. The consuming process, which alone knows when the slice's outputs are written, commits
it. In between, the consumer *adopts* the claim: it re-binds the claim key to its own lease, so that
the claim outlives the reading process (a ``DataLoader`` worker exits at the end of an epoch, or is
killed) and still vanishes with the consumer if the consumer dies.

Every item carries its slice's *token*, ``"<attempt number>:<attempt id>"``, which is all the
consumer needs to rebuild the :class:`~aimaster.data.coordinator.Claim` and to tell two attempts of
one slice apart.
"""

from __future__ import annotations

import logging
import multiprocessing.util
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Tuple

from aimaster.data.coordinator import Claim, Dataset
from aimaster.data.session import WorkerSession

log = logging.getLogger(__name__)


@dataclass
class SliceSpec:
    """What a reading process needs to find a dataset's slices: picklable, no live connections.

    ``owner_pid`` and ``owner_worker`` are the consuming process's; a reading process with another pid
    is a child (a ``DataLoader`` worker) and claims under a session of its own, named after them.
    """

    ds_id: str
    owner_pid: int
    owner_worker: str
    tracked: bool = False
    lent: Optional[Any] = None  # a frameworks.lent.LentClaims once a DataLoader with workers is tracked


def spec_of(client) -> SliceSpec:
    """The spec of an SDK client's dataset, owned by this (the consuming) process."""
    return SliceSpec(client.dataset.ds_id, os.getpid(), client.dataset.session.worker_id)


def token_of(claim: Claim) -> str:
    return f"{claim.attempt_no}:{claim.attempt}"


def parse_token(token: str) -> Tuple[int, str]:
    number, sep, attempt = str(token).partition(":")
    if not sep or not number.isdigit() or not attempt:
        raise ValueError(f"malformed slice claim token {token!r}")
    return int(number), attempt


# ---------------------------------------------------------------------------------- reading side
_lock = threading.Lock()
_child_session: Optional[WorkerSession] = None
# Claims made by readers in this very process, so a consumer here uses them without adopting.
_local: Dict[Tuple[str, str, str], Claim] = {}
ADOPTION_WAIT_S = 30.0  # how long an exiting reader waits for the consumer to adopt its last claims
_ADOPTION_POLL_S = 0.05


def reading_session(spec: SliceSpec) -> WorkerSession:
    """The session this process claims with: the worker's own, or a child's unregistered one.

    A child's session is not registered as a worker (it is part of its parent, and the control plane
    must not count or relaunch it); it is closed when the child exits, which releases whatever the
    parent has not adopted.
    """
    from aimaster.data.runtime import current_session, job_context
    from aimaster.data.store import Store, job_prefix

    global _child_session
    if os.getpid() == spec.owner_pid:
        return current_session()
    with _lock:
        if _child_session is None or _child_session.pid != os.getpid():
            ctx = job_context()
            store = Store(ctx.etcd, job_prefix(ctx.job_id))
            _child_session = WorkerSession(store, f"{spec.owner_worker}.{os.getpid()}", register=False)
            _child_session.standalone = ctx.standalone
            # A forked DataLoader worker leaves through os._exit: atexit never runs there, but
            # multiprocessing's finalizers do.
            multiprocessing.util.Finalize(_child_session, _close_child_session,
                                          args=(_child_session, spec.lent, os.getppid()), exitpriority=10)
        return _child_session


def _close_child_session(session: WorkerSession, lent: Any, parent_pid: int) -> None:
    """Close a reading child's session once the consumer has adopted the claims it handed out.

    Closing revokes the child's lease, and with it every claim still bound to it. A ``DataLoader``
    tells a worker to exit as soon as that worker's stream ends, while the consumer may not have
    taken the worker's last batches yet (they wait in the loader's reorder buffer behind another
    worker's earlier batch): revoking then would take away a claim whose items are on their way, and
    the slice would come back as failed ("its worker died or lost its lease") though nothing did.
    So the child waits until none of its claims is still its own, the consumer's pipeline has ended
    (it adopts nothing more), its parent is gone, or ``ADOPTION_WAIT_S`` has passed.
    """
    try:
        deadline = time.monotonic() + ADOPTION_WAIT_S
        while _unadopted(session) and time.monotonic() < deadline and os.getppid() == parent_pid \
                and not (lent is not None and lent.consumer_ended()):
            time.sleep(_ADOPTION_POLL_S)
    except Exception as e:  # noqa: BLE001 - closing must not fail; the lease returns what is left
        log.debug("aimaster: not waiting for the consumer to adopt this reader's claims (%s)", e)
    finally:
        session.close()


def _unadopted(session: WorkerSession) -> List[Claim]:
    """The claims this reading process made that are still bound to it (handed out, not yet adopted)."""
    with _lock:
        mine = [c for c in _local.values() if c.dataset.session is session]
    held: Dict[str, Set[str]] = {}
    for claim in mine:
        if claim.dataset.ds_id not in held:
            held[claim.dataset.ds_id] = claim.dataset.attempts_held_here()
    return [c for c in mine if c.attempt in held[c.dataset.ds_id]]


def reading_dataset(spec: SliceSpec) -> Dataset:
    """A coordinator view of the dataset for this process's claims (its own instance: not shared
    with the consumer's, whose candidate list is not thread-safe)."""
    dataset = Dataset(reading_session(spec), spec.ds_id)
    if dataset.load_plan() is None:
        from aimaster.errors import JobError

        raise JobError(f"dataset {spec.ds_id} has no plan in this job (was the client created in another job?)")
    return dataset


def session_lock(session: WorkerSession) -> threading.RLock:
    """The one lock of a session (``WorkerSession.lock``), which this package holds across a claim or
    a commit: a reader's prefetch thread may claim while the consumer commits or beats with the same
    session (the main process with ``num_workers=0``, TensorFlow's generator thread), and a
    dataset's candidate list and claimed-ahead slice are not safe to share between threads."""
    return session.lock


def remember(claim: Claim) -> None:
    with _lock:  # readers add from their prefetch thread while the consumer looks up
        _local[(claim.dataset.ds_id, claim.slice_id, claim.attempt)] = claim


def forget(claim: Claim) -> None:
    with _lock:
        _local.pop((claim.dataset.ds_id, claim.slice_id, claim.attempt), None)


def local_claim(ds_id: str, slice_id: str, attempt: Optional[str] = None) -> Optional[Claim]:
    """A claim a reader in this process made (the latest of the slice when ``attempt`` is None)."""
    with _lock:
        if attempt is not None:
            return _local.get((ds_id, slice_id, attempt))
        found = [c for (d, s, _), c in _local.items() if d == ds_id and s == slice_id]
    return found[-1] if found else None


# ------------------------------------------------------------ claims made for readers by commits
# One round trip per slice where the readers run in the consuming process (``num_workers=0``,
# TensorFlow's generator thread): while such a reader runs, the consumer's commit of a slice also
# claims the next free one (``Dataset.commit(claim_next=True)``) and banks it here; the reader's
# feed takes it instead of claiming itself. No more wait here than the feeds would claim ahead
# themselves (``prefetch + 1`` each); whatever is left when the feed stops, when the stream ends, or
# at exit goes back to todo uncounted (it was never started).
_bank: Dict[str, List[Claim]] = {}
_feeding: Dict[str, List[int]] = {}
_bank_exit_hook = False


def start_feeding(ds_id: str, depth: int) -> None:
    """A feed of this process reads the dataset, claiming up to ``depth`` slices ahead."""
    with _lock:
        _feeding.setdefault(ds_id, []).append(depth)


def stop_feeding(ds_id: str, depth: int) -> None:
    with _lock:
        if depth in _feeding.get(ds_id, []):
            _feeding[ds_id].remove(depth)


def wants_claim_ahead(ds_id: str) -> bool:
    """Whether a commit should claim the next slice for a reader of this process: one runs and
    fewer than it claims ahead are banked for it."""
    with _lock:
        return len(_bank.get(ds_id, ())) < sum(_feeding.get(ds_id, ()))


def banked(ds_id: str) -> int:
    with _lock:
        return len(_bank.get(ds_id, ()))


def bank(claim: Claim) -> None:
    global _bank_exit_hook
    with _lock:
        _bank.setdefault(claim.dataset.ds_id, []).append(claim)
        if not _bank_exit_hook:
            _bank_exit_hook = True
            import atexit

            atexit.register(give_back_banked)


def take_banked(ds_id: str) -> Optional[Claim]:
    with _lock:
        waiting = _bank.get(ds_id)
        return waiting.pop(0) if waiting else None


def give_back_banked(ds_id: Optional[str] = None) -> None:
    """Every banked claim (of ``ds_id``, or all) back to todo, uncounted."""
    with _lock:
        taken = [c for d in list(_bank) if ds_id is None or d == ds_id for c in _bank.pop(d)]
    for claim in taken:
        give_back_unstarted_claim(claim.dataset, claim)


def give_back_unstarted_claim(dataset: Dataset, claim: Claim) -> None:
    """A slice claimed ahead and never handed out goes back to todo at once, its attempt uncounted
    (banked here, or queued by a feed); if that fails, the lease returns it."""
    from aimaster.data.handoff import give_back_claim

    forget(claim)
    try:
        with session_lock(dataset.session):
            give_back_claim(dataset, claim)
    except Exception as e:  # noqa: BLE001 - the lease returns it anyway
        log.warning("aimaster: could not give slice %s back (%s); it returns when the lease expires",
                    claim.slice_id, e)


# --------------------------------------------------------------------------------- consuming side
def adopt(dataset: Dataset, slice_id: str, token: str, units: int) -> Tuple[Claim, bool]:
    """The consumer's claim on a slice a reader claimed; True if the claim key is now bound to us.

    A reader in this very process hands its claim over as is; otherwise the claim key is re-bound to
    our lease by :meth:`Dataset.adopt`, only while it still holds the reader's attempt. An attempt that
    already lost its claim cannot commit (its output is discarded); where the adoption itself failed
    (etcd away), the claim stays the reader's and commits only while the reader's claim lives.
    """
    number, attempt = parse_token(token)
    local = local_claim(dataset.ds_id, slice_id, attempt)
    if local is not None:
        forget(local)
        local.items = units
        return local, True
    claim, ok = dataset.adopt(slice_id, attempt, number)
    claim.items = units
    return claim, ok
