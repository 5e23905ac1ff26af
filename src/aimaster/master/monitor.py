"""A read-only view of a job in etcd: datasets, slice counts, workers, throughput.

Used by the master's loop and by ``aimaster status`` from any machine that reaches etcd, so both
show the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from aimaster.data import keys
from aimaster.data.keys import DatasetKeys
from aimaster.data.store import Store
from aimaster.errors import EtcdDataError


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
        }


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _num(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class JobMonitor:
    def __init__(self, store: Store, job_id: str):
        self.store = store
        self.job_id = job_id

    def job_record(self) -> Dict[str, Any]:
        return self.store.get_value(keys.JOB) or {}

    def dataset_ids(self) -> List[str]:
        ids = []
        for rel in self.store.keys(keys.DATASETS):
            parts = rel.split("/")
            if len(parts) == 2 and parts[1] == "plan":
                ids.append(parts[0])
        return ids

    def datasets(self) -> List[DatasetView]:
        out = []
        for ds_id in self.dataset_ids():
            k = DatasetKeys(ds_id)
            plan = self.store.get_value(k.plan)
            if not plan:
                continue
            if not isinstance(plan.get("num_slices"), int):
                raise EtcdDataError(f"value at {self.store.key(k.plan)} has no valid num_slices")
            st = self.store
            out.append(DatasetView(
                ds_id=ds_id, kind=str(plan.get("kind")), total=plan["num_slices"],
                items=_int(plan.get("num_items")),
                done=st.count(k.done), failed=st.count(k.failed), running=st.count(k.claim),
                todo=st.count(k.todo), finalized=st.get_value(k.finalized) is not None,
            ))
        return out

    def workers(self) -> List[WorkerView]:
        alive = {}
        for rel, value, _ in self.store.range(keys.WORKERS):
            alive[rel[len(keys.WORKERS):]] = value
        views: Dict[str, WorkerView] = {}
        for rel, value, _ in self.store.range(keys.STATS):
            wid = rel[len(keys.STATS):]
            views[wid] = WorkerView(
                worker_id=wid, alive=wid in alive, host=str(value.get("host", "")), pid=_int(value.get("pid")),
                slices=_int(value.get("slices")), items=_int(value.get("items")), first=_num(value.get("first")),
                last=_num(value.get("last")), started=_num(value.get("started")),
            )
        for wid, value in alive.items():
            if wid not in views:
                views[wid] = WorkerView(worker_id=wid, alive=True, host=str(value.get("host", "")),
                                        pid=_int(value.get("pid")), started=_num(value.get("started")))
        return sorted(views.values(), key=lambda w: w.worker_id)

    def view(self) -> JobView:
        return JobView(self.job_id, self.job_record(), self.datasets(), self.workers())
