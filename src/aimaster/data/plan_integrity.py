"""Whether a dataset plan read back from etcd is the one its planner wrote.

A plan is judged by itself first (:func:`aimaster.master.readback.plan_problem`: fields and numbers
that agree with each other). That cannot tell a plan rewritten by hand, or by a stray process, from
the real one when the forgery is consistent in itself: a plan of 30 slices put over one of 150 would
let a master count 30 commits as "every input". Two facts of etcd can:

- **Written once.** The planner creates the plan key in a transaction that requires it absent, and
  nothing ever writes it again, so its etcd ``version`` (writes since creation) is 1. Any put over
  it makes that 2 or more, whoever reads it and however early.
- **Nothing of the job is older than it.** The planner writes one ``todo`` key per slice, then
  the plan; no slice is claimed, committed or failed before a plan exists. So a plan deleted and
  created anew (version 1 again) is younger than the planner's ``todo`` keys past its last slice,
  if it has fewer slices, and than every ``claim``, ``attempts``, ``done`` and ``failed`` key
  written before it: etcd keeps each key's create revision, and one filtered keys-only read per
  prefix finds such a key. A key written after the plan proves nothing (a stray ``todo/999999``
  or a forged ``done/`` record past the plan is garbage the claim and completion paths ignore).
- **Its last slice exists.** Every move of a slice is one transaction between those prefixes,
  so the plan's last slice id is under one of them (read in one transaction): a plan of more
  slices than were planned is refused with a clear error, not waited on for ever.

What is left: a plan deleted and made anew with fewer slices before any work began, whose every
slice past its last was then claimed before the master's first read of it. The master still
waits for its live workers (the planner among them keeps the true plan).
"""

from __future__ import annotations

from typing import Any, Dict

from aimaster.data.keys import DatasetKeys
from aimaster.data.store import Op, Store
from aimaster.errors import EtcdDataError


def check_written_once(store: Store, k: DatasetKeys, meta: Any) -> None:
    """EtcdDataError unless the plan read with metadata ``meta`` was written once (judge its shape
    first: a malformed plan is better reported as such)."""
    version = getattr(meta, "version", None)
    if version != 1:
        raise EtcdDataError(f"value at {store.key(k.plan)} changed after the dataset was planned: it was "
                            f"written {version} times (a plan is written once)")


def check_against_slices(store: Store, k: DatasetKeys, plan: Dict[str, Any], meta: Any) -> None:
    """EtcdDataError unless ``plan`` (read with etcd metadata ``meta``) is no younger than the slice
    keys the planner and the workers wrote, and its last slice exists (see the module docstring).
    ``plan`` must already have passed ``plan_problem``."""
    n, width = plan["num_slices"], plan["width"]
    created = meta.create_revision
    where = store.key(k.plan)
    prefixes = (k.todo, k.claim, k.attempts, k.done, k.failed)  # every state a slice can be in
    for prefix in prefixes:
        # todo/: the planner's keys of this plan's own slices are older than it by design.
        start = f"{k.todo}{n:0{width}d}" if prefix == k.todo else None
        older = store.first_created_before(prefix, created, start)
        if older is not None:
            raise EtcdDataError(f"value at {where} changed after the dataset was planned: it was created after "
                                f"{store.key(older)}, which a plan of {n} slices never made")
    if n:
        last = f"{n - 1:0{width}d}"
        _, found = store.txn("find the plan's last slice", [], [Op.get(p + last) for p in prefixes])
        if not any(found):
            raise EtcdDataError(f"value at {where} names {n} slices, but etcd holds no slice {last}")
