"""Feed the progress display and the metrics endpoint from one round's view of the job."""

from __future__ import annotations

from typing import Any, Dict, List

from aimaster.data import keys
from aimaster.data.store import loads
from aimaster.errors import AimasterError
from aimaster.master.monitor import JobView


class Feed:
    """What the display and the metrics need beyond the view: in-flight copies, new commit records."""

    def __init__(self, store) -> None:
        self.store = store
        self._commit_revs: Dict[str, int] = {}  # dataset -> highest done/ mod revision fed to the metrics

    def show(self, m, view: JobView) -> None:
        """One round's update of ``m``'s (the master's) progress line and metrics."""
        live = m.fleet.live()
        starting = sum(1 for w in live if not m.watch.registered(w.worker_id))
        backups = self.backups_in_flight(view)
        if m.display:
            m.display.update(view, len(live), sum(m.relaunches.values()), starting=starting,
                             failed_workers=sum(1 for h in m.history if h.get("error")), backups=backups)
        if m.metrics is not None:
            meter = m.display.meter if m.display else None
            rate = meter.rate if meter else 0.0
            items_per_slice = (sum(d.items for d in view.datasets) / view.total) if view.total else 0.0
            stats = [info.stats for info in m.watch.workers.values()]
            m.metrics.update(view, rates={"slices_per_second": rate, "items_per_second": rate * items_per_slice},
                             relaunches=m.relaunches,
                             backups={"in_flight": backups,
                                      "started": sum(int(s.get("copies") or 0) for s in stats),
                                      "won": sum(int(s.get("copies_won") or 0) for s in stats),
                                      "lost": sum(int(s.get("copies_lost") or 0) for s in stats)})
            m.metrics.observe_commits(self.new_commits(view))

    def backups_in_flight(self, view: JobView) -> int:
        try:
            return sum(self.store.count(keys.DatasetKeys(d.ds_id).backup) for d in view.datasets
                       if not d.complete)
        except Exception:  # noqa: BLE001 - a display detail; never worth failing a round for
            return 0

    def new_commits(self, view: JobView) -> List[Dict[str, Any]]:
        """Commit records written since the last call: a range from the last seen mod revision on."""
        out: List[Dict[str, Any]] = []
        for d in view.datasets:
            since = self._commit_revs.get(d.ds_id, 0)
            for rel, raw, meta in self.store.changed_since(keys.DatasetKeys(d.ds_id).done, since):
                self._commit_revs[d.ds_id] = max(self._commit_revs.get(d.ds_id, 0), meta.mod_revision)
                try:
                    out.append(loads(raw, self.store.key(rel)))
                except AimasterError:
                    continue
        return out
