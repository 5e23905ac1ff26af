"""The slice state machine, written once over the :class:`~aimaster.data.store.Store`.

A slice moves through these states (each a key under ``ds/<ds>/``, see :mod:`aimaster.data.keys`)::

    todo ──claim──▶ claim ──commit──▶ done
      ▲               │ ╲
      │               │  ╲──copy──▶ backup/<w> ──commit──▶ done   (first commit wins)
      └───requeue─────┘──(attempts exhausted)──▶ failed
                 (lease lost: worker died / hung)

Every transition is one etcd transaction whose comparisons make it exclusive:

* *plan*: the plan key is written last, after the file list and the todo keys, by the one process
  holding the ``planner`` key; a crash mid-planning leaves no plan, and the next planner starts over.
* *claim*: ``todo/<s>`` unchanged since we read it → delete it, create ``claim/<s>`` bound to our
  lease. Two workers can never claim the same todo entry.
* *copy* (speculative backup, see :mod:`aimaster.data.speculation`): an idle worker, when no slice is
  free, copies the longest-running held slice: ``claim/<s>`` and ``attempts/<s>`` unchanged since read,
  ``done/<s>`` absent, fewer than ``max_copies`` copies of this attempt so far → create
  ``backup/<s>/<worker>`` bound to its lease. The copy keeps the slice id and the attempt number.
* *commit*: ``done/<s>`` does not exist, and the attempt still holds its claim (or copy) key → create
  ``done/<s>`` with the attempt's staged outputs. First committer wins (primary or copy); every other
  attempt of the slice gets ``False`` and discards its staged output, and so does an attempt whose
  claim was lost (its lease expired while the worker was cut off, or it was given back on SIGTERM),
  even when nobody else has committed the slice yet.
* *requeue*: the slice is in no state at all (its claim and every copy vanished with their leases) →
  back to todo, or to failed once it has been attempted ``max_attempts`` times.

A claim or copy transaction whose reply was lost (etcd restarting under it) is retried by the store;
the retry's comparison fails, so the failure branch reads the key back and recognises our own attempt:
a slice is never left held by a worker that does not know it holds it.

No process needs to be alive for the slice to come back (the lease does it), and any process can
requeue (the master does it promptly; waiting workers do it too, so a job survives its master).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from aimaster.data.claim import Claim, PlanData, slice_id_width
from aimaster.data.claiming import CANDIDATES, CLAIM_WINDOW, Claiming
from aimaster.data.committing import Committing
from aimaster.data.completion import Completion
from aimaster.data.handovers import Handovers
from aimaster.data.inflight import InFlight
from aimaster.data.keys import DatasetKeys
from aimaster.data.planning import CHUNK_BYTES, TXN_OPS, Planning
from aimaster.data.session import WorkerSession

__all__ = ["CANDIDATES", "CHUNK_BYTES", "CLAIM_WINDOW", "TXN_OPS", "Claim", "Dataset", "PlanData",
           "slice_id_width"]


class Dataset(Planning, Claiming, Committing, InFlight, Completion, Handovers):
    """Coordination of one dataset's slices, as seen by one process.

    Composed of its parts, one module and one job each (every transition is written once, in one
    of them):

    * :class:`~aimaster.data.planning.Planning`: the plan (one planner) and the slice geometry;
    * :class:`~aimaster.data.claiming.Claiming`: claims, speculative copies, waiting for a slice;
    * :class:`~aimaster.data.committing.Committing`: commit (first committer wins), release, errors;
    * :class:`~aimaster.data.inflight.InFlight`: who holds what; lost slices requeued or failed;
    * :class:`~aimaster.data.completion.Completion`: counts, believed records, output sink, finalize;
    * :class:`~aimaster.data.handovers.Handovers`: give back uncounted, adopt, copy slots.

    The state they share is set up here, and only here.
    """

    def __init__(self, session: WorkerSession, ds_id: str, max_attempts: Optional[int] = None):
        settings = session.settings
        self.session = session
        self.store = session.store
        self.ds_id = ds_id
        self.k = DatasetKeys(ds_id)
        self.max_attempts = max_attempts if max_attempts is not None else settings.max_slice_attempts
        self.plan: Optional[Dict[str, Any]] = None
        self._candidates: List[Tuple[str, bytes, int]] = []  # (slice id, raw todo value, mod revision)
        self._window = CLAIM_WINDOW  # slice ids spanned by the next candidate read (see _size_window)
        self._none_free = False  # the last candidate read found no free slice (see _refill_candidates)
        self._next: Optional[Claim] = None  # claimed inside the previous commit's transaction
        self._chunks: Dict[int, List[str]] = {}
        self._chunk_starts: List[int] = []
        self._last_reconcile = 0.0
        self.speculation = settings.speculation
        self.speculation_multiplier = settings.speculation_multiplier
        self.max_copies = settings.max_slice_copies
        self._durations: Tuple[float, List[float]] = (0.0, [])
        # Validated completion, read incrementally: planned slice id -> mod revision of its record.
        self._done: Dict[str, int] = {}
        self._failed: Dict[str, int] = {}
        self._scanned_rev = {"done": 0, "failed": 0}
        self._retaken_rev = 0  # mod revision of ds/<ds>/retaken when completion was last read
        self._ignored: set = set()  # keys of records outside the plan, warned about once
        self._sink: Optional[Dict[str, Any]] = None  # the dataset's agreed output sink, once known
        self._agreed: set = set()  # ids of the sink objects checked against it
        self._ended_early = False  # OutOfRange was raised while this worker still held slices
        self._drained_seen = False  # see Claiming.drained
        session.datasets.setdefault(ds_id, self)  # its claims are given back on SIGTERM
