"""``--job-execution-mode=Sync``: the job's workers run as one group; a failure restarts all of them.

All of them means every machine's: the master's own workers, those it adopted, and those that
``aimaster join`` supervises elsewhere. There is no RPC between supervisors, so the restart goes
through etcd like everything else: the supervisor that sees a worker fail bumps the job's *restart
epoch* (the ``restart`` key: epoch, who, why), restarts its own workers, and every other supervisor,
polling the key about once a second, restarts its own when it sees a newer epoch. A supervisor
starts from the epoch current when it starts, so a late joiner does not replay old restarts.

Each restarted worker backs off by its own history (its own uptime), not by the failing one's: a
healthy worker stopped for the group's sake is not in a crash loop.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional

from aimaster.data.store import Compare, Op, Store, loads
from aimaster.errors import EtcdDataError

RESTART = "restart"


class SyncRestarts:
    def __init__(self, store: Store, me: str, warn: Callable[[str], None]):
        self.store = store
        self.me = me
        self.warn = warn
        self._warned_rev = 0
        self.seen = self._read()[0]

    def _read(self):
        """(epoch, record, mod revision); a malformed record reads as epoch 0, with a warning."""
        key = self.store.key(RESTART)  # named in warnings
        raw, meta = self.store.get_raw(RESTART)
        if raw is None:
            return 0, None, 0
        try:
            value = loads(raw, key)
        except EtcdDataError as e:
            value, problem = None, str(e)
        else:
            problem = None if isinstance(value.get("epoch"), int) and not isinstance(value.get("epoch"), bool) \
                else f"value at {key} names no restart epoch"
        if problem is not None:
            if meta.mod_revision != self._warned_rev:
                self._warned_rev = meta.mod_revision
                self.warn(f"warning: ignoring {problem}")
            return 0, None, meta.mod_revision
        return value["epoch"], value, meta.mod_revision

    def bump(self, cause: str) -> int:
        """Start a new epoch (every supervisor restarts its workers); returns it."""
        while True:
            epoch, _, rev = self._read()
            new = max(epoch, self.seen) + 1
            value = {"epoch": new, "by": self.me, "cause": cause, "t": time.time()}
            compare = [Compare.mod(RESTART) == rev] if rev else [Compare.version(RESTART) == 0]
            ok, _ = self.store.txn("bump the restart epoch", compare, [Op.put(RESTART, value)])
            if ok:
                self.seen = new
                return new

    def newer(self) -> Optional[Dict[str, Any]]:
        """The restart record if another supervisor started a newer epoch since we last looked."""
        epoch, value, _ = self._read()
        if epoch <= self.seen:
            return None
        self.seen = epoch
        return value if value.get("by") != self.me else None
