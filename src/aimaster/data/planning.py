"""Planning a dataset: exactly one process writes the plan, every other adopts it; slice geometry."""

from __future__ import annotations

import bisect
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from aimaster.data import plan_integrity
from aimaster.data.claim import PlanData, slice_id_width
from aimaster.data.records import PLANNED_TODO
from aimaster.data.store import Compare, Op, dumps
from aimaster.errors import ConfigError, EtcdDataError

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024  # file-list chunk size: well under etcd's 1.5 MiB request limit
TXN_OPS = 100  # etcd's default --max-txn-ops is 128


class Planning:
    """Planning and slice geometry.

    A part of :class:`~aimaster.data.coordinator.Dataset` (see that module for the state machine): it
    works on the dataset's state, set up in ``Dataset.__init__``.
    """

    # ------------------------------------------------------------------ planning
    def ensure_plan(self, planner: Callable[[], PlanData], slice_size: int,
                    poll: float = 0.1) -> Dict[str, Any]:
        """Return the dataset's plan, making it if nobody has (exactly one process plans)."""
        if slice_size <= 0 or int(slice_size) != slice_size:
            raise ConfigError(f"slice_size must be a positive integer, got {slice_size!r}")
        st = self.store
        while True:
            plan, meta = st.get(self.k.plan)
            if plan is not None:
                return self._adopt(plan, slice_size, meta)
            # "No plan yet" is part of the comparison: a process that read no plan just before the
            # previous planner finished must not take the freed planner key and plan again (its
            # clean-up would delete the file list and re-create todo keys under running workers).
            ok, _ = self.session.leased(lambda lease: st.txn(
                "take planner",
                [Compare.version(self.k.planner) == 0, Compare.version(self.k.plan) == 0],
                [Op.put(self.k.planner, {"w": self.session.worker_id}, lease=lease)],
            ))
            if not ok:
                self.session.beat("waiting")  # waiting for the planner is not hanging
                time.sleep(poll)  # somebody else is planning; their lease ends it if they die
                continue
            try:
                data = planner()
                plan = self._write_plan(data, int(slice_size))
            finally:
                st.delete(self.k.planner)
            if plan is not None:
                return self._adopt(plan, slice_size)

    def load_plan(self) -> Optional[Dict[str, Any]]:
        """Attach to an existing plan (the master and status never plan); None if not planned yet."""
        plan, meta = self.store.get(self.k.plan)
        if plan is None:
            return None
        return self.adopt_read_plan(plan, meta)

    def adopt_read_plan(self, plan: Dict[str, Any], meta: Any) -> Dict[str, Any]:
        """Attach to ``plan``, read back with etcd metadata ``meta`` by the caller."""
        return self._adopt(plan, plan.get("slice_size"), meta)

    def _write_plan(self, data: PlanData, slice_size: int) -> Optional[Dict[str, Any]]:
        st = self.store
        num_slices = (data.num_items + slice_size - 1) // slice_size
        # Leftovers of a planner that crashed half-way must not survive into this plan.
        for prefix in (self.k.items, self.k.todo):
            st.delete_prefix(prefix)
        chunk_counts: List[int] = []
        if data.items is not None:
            chunk: List[str] = []
            size = 0
            for name in data.items:
                # Budget in the bytes etcd will hold (a CJK character is 3 bytes of UTF-8, 6 when
                # escaped), not in characters: 2,500 long CJK names once overflowed one chunk.
                cost = len(dumps(name).encode("utf-8")) + 1
                if chunk and size + cost > CHUNK_BYTES:
                    st.put(self.k.item_chunk(len(chunk_counts)), chunk)
                    chunk_counts.append(len(chunk))
                    chunk, size = [], 0
                chunk.append(name)
                size += cost
            if chunk:
                st.put(self.k.item_chunk(len(chunk_counts)), chunk)
                chunk_counts.append(len(chunk))
        width = slice_id_width(num_slices)
        for start in range(0, num_slices, TXN_OPS):
            ops = [Op.put(self.k.todo + f"{i:0{width}d}", PLANNED_TODO)
                   for i in range(start, min(start + TXN_OPS, num_slices))]
            st.txn("write todo", [], ops)
        plan = {
            "kind": data.kind,
            "num_items": data.num_items,
            "slice_size": slice_size,
            "num_slices": num_slices,
            "width": width,
            "chunks": chunk_counts,
            "source": data.source,
            "created": time.time(),
        }
        ok, _ = st.txn("write plan", [Compare.version(self.k.plan) == 0], [Op.put(self.k.plan, plan)])
        return plan if ok else None

    def _adopt(self, plan: Dict[str, Any], slice_size: int, meta: Any = None) -> Dict[str, Any]:
        """Take ``plan`` as this dataset's; ``meta``: its etcd metadata when it was read back (None:
        this process just wrote it)."""
        for name, typ in (("num_items", int), ("slice_size", int), ("num_slices", int), ("width", int),
                          ("chunks", list), ("kind", str), ("source", dict)):
            if not isinstance(plan.get(name), typ) or isinstance(plan.get(name), bool):
                raise EtcdDataError(
                    f"value at {self.store.key(self.k.plan)} has a bad {name!r}: {plan.get(name)!r:.80}")
        if meta is not None:
            plan_integrity.check_written_once(self.store, self.k, meta)
        if plan["slice_size"] != int(slice_size):
            raise ConfigError(
                f"dataset {self.ds_id} was planned with slice_size={plan['slice_size']} in this job; "
                f"got slice_size={slice_size} (use a new --job-id to change it)"
            )
        self.plan = plan
        self._chunk_starts = []
        pos = 0
        for n in plan["chunks"]:
            self._chunk_starts.append(pos)
            pos += n
        return plan

    # ------------------------------------------------------------------ slice geometry
    @property
    def num_slices(self) -> int:
        return self.plan["num_slices"]

    def slice_id(self, index: int) -> str:
        return f"{index:0{self.plan['width']}d}"

    def slice_index(self, slice_id: str) -> int:
        return int(slice_id)

    def item_range(self, index: int) -> Tuple[int, int]:
        size = self.plan["slice_size"]
        return index * size, min((index + 1) * size, self.plan["num_items"])

    def items(self, index: int) -> List[str]:
        """The file names of a slice (file datasets), loading only the chunks it spans."""
        start, end = self.item_range(index)
        out: List[str] = []
        c = max(0, bisect.bisect_right(self._chunk_starts, start) - 1)
        while start < end and c < len(self._chunk_starts):
            chunk = self._chunk(c)
            base = self._chunk_starts[c]
            out.extend(chunk[start - base:end - base])
            start = base + len(chunk)
            c += 1
        return out

    def _chunk(self, n: int) -> List[str]:
        if n not in self._chunks:
            value = self.store.get_value(self.k.item_chunk(n), expect=list)
            if value is None or not all(isinstance(x, str) for x in value):
                raise EtcdDataError(f"file list chunk {n} of dataset {self.ds_id} is missing or malformed")
            if n < len(self.plan["chunks"]) and len(value) != self.plan["chunks"][n]:
                raise EtcdDataError(f"file list chunk {n} of dataset {self.ds_id} holds {len(value)} names, "
                                    f"its plan says {self.plan['chunks'][n]}")
            if len(self._chunks) > 8:
                self._chunks.pop(next(iter(self._chunks)))
            self._chunks[n] = value
        return self._chunks[n]
