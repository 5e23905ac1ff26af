"""A restarted master takes over the workers its predecessor launched and that still run.

They are not its children (it cannot ``wait()`` on them), so it knows them by their etcd registration
(:class:`~aimaster.master.launcher.AdoptedWorker`), puts each back into its slot, and only tops the
count up to ``-n``. A registration is checked before it is believed: one naming a pid on this host
that is no worker of this job (a forged record) is not adopted, so its process group is never signalled.
"""

from __future__ import annotations

from aimaster.master import apply
from aimaster.master.launcher import AdoptedWorker, runs_worker


def adopt(m) -> None:
    """Adopt into ``m``'s (a :class:`~aimaster.master.master.Master`) fleet the workers a previous master launched."""
    for wid, info in sorted(m.watch.workers.items()):
        rec = info.record  # validated (readback.registration_problem): slot and pid are integers
        if not info.registered or rec.get("launcher") != "master" or not isinstance(rec.get("slot"), int):
            continue
        w = AdoptedWorker(wid, rec, m.state.logs, m.watch.registered)
        if w.poll() is not None:  # died with the old master; its lease just has not expired yet
            apply.give_back(m, w, None)
            continue
        if w.local and runs_worker(w.pid, wid, m.opts.job_id) is False:
            m._warn_once(f"not adopting {wid}: its registration names pid {w.pid}, which is no worker of "
                         f"job {m.opts.job_id}")
            continue
        if w.slot in m.fleet.slots:
            m.fleet.extra.append(w)
        else:
            m.fleet.adopt(w)
        m.adopted.append(wid)
    if m.adopted:
        m._log(f"adopted {len(m.adopted)} worker(s) still running from the previous master: "
               f"{', '.join(m.adopted)}")
