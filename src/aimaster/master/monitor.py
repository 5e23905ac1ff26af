"""A read-only view of a job in etcd: datasets, slice counts, workers, throughput.

Used by the master's loop and by ``aimaster status`` from any machine that reaches etcd, so both
show the same numbers. Every value is validated as it is read (:mod:`aimaster.master.readback`):
a malformed per-worker record is left out (and listed in :attr:`JobView.ignored`); a malformed job
record or plan raises :class:`~aimaster.errors.EtcdDataError` naming its key, unless the view is
read with ``strict=False`` (the master's last look, to write the report of a job failing for it).

The master passes its own :class:`~aimaster.data.coordinator.Dataset` objects (``dataset``): the
slice counts are then the dataset's own (validated) completion, and a plan that differs from the
one the master first attached to is refused.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

from aimaster.data import keys, plan_integrity
from aimaster.data.keys import DatasetKeys
from aimaster.data.store import Store, dumps
from aimaster.errors import EtcdDataError
from aimaster.master import readback


@dataclass
class DatasetView:
    ds_id: str
    kind: str
    total: int
    items: int
    done: int = 0
    failed: int = 0
    running: int = 0
    todo: int = 0
    finalized: bool = False

    @property
    def complete(self) -> bool:
        return self.done + self.failed >= self.total


@dataclass
class WorkerView:
    worker_id: str
    alive: bool
    host: str = ""
    pid: int = 0
    slices: int = 0
    items: int = 0
    first: Optional[float] = None
    last: Optional[float] = None
    started: Optional[float] = None

    @property
    def rate(self) -> float:
        """Slices per second since this worker's first commit."""
        if not self.first or not self.last or self.last <= self.first or self.slices < 2:
            return 0.0
        return (self.slices - 1) / (self.last - self.first)


@dataclass
class JobView:
    job_id: str
    job: Dict[str, Any]
    datasets: List[DatasetView] = field(default_factory=list)
    workers: List[WorkerView] = field(default_factory=list)
    time: float = field(default_factory=time.time)
    ignored: List[str] = field(default_factory=list)  # values left out, each with why

    @property
    def state(self) -> str:
        return str(self.job.get("state", "Unknown"))

    @property
    def total(self) -> int:
        return sum(d.total for d in self.datasets)

    @property
    def done(self) -> int:
        return sum(d.done for d in self.datasets)

    @property
    def failed(self) -> int:
        return sum(d.failed for d in self.datasets)

    @property
    def running(self) -> int:
        return sum(d.running for d in self.datasets)

    @property
    def all_complete(self) -> bool:
        return bool(self.datasets) and all(d.complete for d in self.datasets)

    @property
    def alive_workers(self) -> int:
        return sum(1 for w in self.workers if w.alive)

    def to_json(self) -> Dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "job": self.job,
            "slices": {"total": self.total, "done": self.done, "failed": self.failed, "running": self.running},
            "datasets": [dict(asdict(d), complete=d.complete) for d in self.datasets],
            "workers": [dict(asdict(w), rate=round(w.rate, 3)) for w in self.workers],
            "time": self.time,
            "ignored": list(self.ignored),
        }


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _num(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class JobMonitor:
    def __init__(self, store: Store, job_id: str, dataset: Optional[Callable[[str], Any]] = None,
                 warnings: Optional[readback.Warnings] = None):
        self.store = store
        self.job_id = job_id
        self.dataset = dataset  # ds id -> the caller's attached Dataset (None: not planned yet)
        self.warnings = warnings or readback.Warnings()

    def job_record(self) -> Dict[str, Any]:
        key = self.store.key(keys.JOB)
        return readback.check_job(self.store.get_value(keys.JOB), key) or {}

    def dataset_ids(self) -> List[str]:
        ids = []
        for rel in self.store.keys(keys.DATASETS):
            parts = rel.split("/")
            if len(parts) == 2 and parts[1] == "plan":
                ids.append(parts[0])
        return ids

    def datasets(self, strict: bool = True) -> List[DatasetView]:
        out = []
        for ds_id in self.dataset_ids():
            try:
                view = self._dataset_view(ds_id)
            except EtcdDataError as e:
                if strict:
                    raise
                self.warnings.current.append(str(e))
                continue
            if view is not None:
                out.append(view)
        return out

    def _dataset_view(self, ds_id: str) -> Optional[DatasetView]:
        k = DatasetKeys(ds_id)
        st = self.store
        plan, meta = st.get(k.plan)
        if not plan:
            return None
        readback.check_plan(plan, st.key(k.plan))
        plan_integrity.check_written_once(st, k, meta)
        ds = self.dataset(ds_id) if self.dataset is not None else None
        if ds is not None:
            if dumps(ds.plan) != dumps(plan):
                raise EtcdDataError(f"value at {st.key(k.plan)} changed after the dataset was planned "
                                    f"(a plan never changes)")
            counts = ds.counts()
        else:
            counts = {"done": st.count(k.done), "failed": st.count(k.failed), "running": st.count(k.claim),
                      "todo": st.count(k.todo)}
        return DatasetView(
            ds_id=ds_id, kind=plan["kind"], total=plan["num_slices"], items=plan["num_items"],
            done=counts["done"], failed=counts["failed"], running=counts["running"], todo=counts["todo"],
            finalized=st.count(k.finalized) > 0,
        )

    def workers(self) -> List[WorkerView]:
        regs, refused = readback.read_prefix(self.store, keys.WORKERS, readback.registration_problem)
        stats, refused_stats = readback.read_prefix(self.store, keys.STATS, readback.stats_problem)
        self.warnings.note(refused + refused_stats)
        views: Dict[str, WorkerView] = {}
        for wid, (value, _) in stats.items():
            views[wid] = WorkerView(
                worker_id=wid, alive=wid in regs, host=str(value.get("host", "")), pid=_int(value.get("pid")),
                slices=_int(value.get("slices")), items=_int(value.get("items")), first=_num(value.get("first")),
                last=_num(value.get("last")), started=_num(value.get("started")),
            )
        for wid, (value, _) in regs.items():
            if wid not in views:
                views[wid] = WorkerView(worker_id=wid, alive=True, host=value["host"], pid=value["pid"],
                                        started=_num(value.get("started")))
        return sorted(views.values(), key=lambda w: w.worker_id)

    def view(self, strict: bool = True) -> JobView:
        """The job now. ``strict=False``: a malformed job record or plan is left out, not raised."""
        self.warnings.current = []
        try:
            job = self.job_record()
        except EtcdDataError as e:
            if strict:
                raise
            self.warnings.current.append(str(e))
            job = {}
        datasets = self.datasets(strict)
        workers = self.workers()
        return JobView(self.job_id, job, datasets, workers, ignored=list(self.warnings.current))
