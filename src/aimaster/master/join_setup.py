"""``aimaster join``'s setup: announce the joiner, then follow the job's own settings.

A joiner supervises workers of a job someone else's ``aimaster run`` owns: hang detection,
speculation, the fault policy (Sync mode restarts every machine's workers), slow-worker replacement
and the slice timeout are the job's, read from its record, not this command's flags. It announces
itself under ``joiners/`` (bound to its lease), so that the master waits for it at the end instead
of stopping the job's etcd under it.
"""

from __future__ import annotations

import os
import secrets
import socket
import time

from aimaster.data import keys
from aimaster.errors import AimasterError, EtcdDataError
from aimaster.master import readback
from aimaster.master.hang import HangDetector
from aimaster.master.policy import FaultPolicy
from aimaster.master.slice_timeout import SliceTimeout
from aimaster.master.slowness import SlowWorkerPolicy

# An `aimaster join` supervisor, bound to its lease: the master waits for these to leave at the end,
# so that it does not stop the job's etcd under a joiner still writing its own report.
JOINERS = "joiners/"


def join_setup(m) -> None:
    """Announce ``m`` (a :class:`~aimaster.master.master.Master` with ``join_only``) and adopt the job's settings."""
    me = f"{JOINERS}{socket.gethostname()}-{os.getpid()}"

    def announce() -> None:
        m.session.leased(lambda lease: m.store.put(me, {"pid": os.getpid(), "t": time.time()}, lease=lease))

    announce()
    # Cut off from etcd past the TTL, our key went with the old lease: the master would no longer
    # wait for us at the end and could stop the job's etcd under our workers. Announce again.
    m.session.on_new_lease(announce)
    try:
        record = m.store.get_value(keys.JOB)
        options = (readback.check_job(record, m.store.key(keys.JOB)) or {}).get("options") or {}
    except EtcdDataError as e:
        m._log(f"warning: ignoring {e}; following this command's own settings")
        options = {}
    o = m.opts
    if isinstance(options.get("hang_detection"), bool) and not o.hang_detection:
        o.hang_detection = options["hang_detection"]
        if isinstance(options.get("hang_interval"), (int, float)):
            o.hang_interval = float(options["hang_interval"])
        m.hang = HangDetector(o.hang_interval) if o.hang_detection else None
    for name in ("speculation", "speculation_multiplier", "max_slice_copies", "max_slice_attempts"):
        if name in options and isinstance(options[name], type(getattr(o, name))):
            setattr(o, name, options[name])
    if isinstance(options.get("slice_timeout"), (int, float)) and options["slice_timeout"] > 0:
        m.slice_timeout = SliceTimeout(options["slice_timeout"])  # each supervisor times its own workers
    try:  # Sync mode restarts every machine's workers: a joiner must know the job runs in it
        o.policy = FaultPolicy(options.get("execution_mode", o.policy.execution_mode),
                               options.get("fault_tolerant_policy", o.policy.policy),
                               options.get("max_num_of_same_error", o.policy.max_same_error))
    except (AimasterError, TypeError):
        m._log("warning: ignoring the job's malformed fault policy options")
    if isinstance(options.get("fail_fast"), bool):
        o.policy.fail_fast = options["fail_fast"]
    for name, attr in (("slow_worker_multiplier", "slow_multiplier"),
                       ("slow_worker_min_samples", "slow_min_samples"), ("completion_grace", "completion_grace")):
        value = options.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            setattr(o, attr, type(getattr(o, attr))(value))
    m.slow = SlowWorkerPolicy(o.slow_multiplier, max(1, int(o.slow_min_samples)))
    # Our workers' ids end in g<this>: random, so that joiners started in the same second (all the
    # pods of a Kubernetes Job) never share worker ids, which key their stats, beats and stop requests.
    m.generation = 2 + secrets.randbelow(10**9)
