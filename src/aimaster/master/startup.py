"""How a master comes to run a job: find or start the job's etcd, take the master key (or stand by
for it), write the job record, and build the environment its workers start with.

A run of ``aimaster run`` (or ``retry``) takes these steps before its control loop; ``aimaster join``
takes only the first (:mod:`aimaster.master.join_setup` follows the job's settings instead). Each
function takes the :class:`~aimaster.master.master.Master` whose fields it fills in.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Dict, Optional

from aimaster.data import keys
from aimaster.data.store import EtcdConfig, retry_seconds_from_env
from aimaster.errors import EtcdDataError, JobError
from aimaster.master import control, readback, retry
from aimaster.master.election import MasterKey
from aimaster.master.etcd_guard import EtcdGuard
from aimaster.master.job_state import EXIT_CODES, TERMINAL, JobState


def etcd_config(m) -> Optional[EtcdConfig]:
    """The job's etcd: ``--etcd``, or the job's embedded one (started here if none runs); None: stopped
    while standing by for it."""
    if m.opts.etcd is not None:
        return m.opts.etcd
    endpoint = m.state.running_etcd()
    if endpoint is None and m.opts.standby:
        m._log(f"standby: waiting for job {m.opts.job_id}'s embedded etcd to start")
        while endpoint is None:
            if m.stop_requested.wait(0.5):
                return None
            endpoint = m.state.running_etcd()
    if endpoint is None:
        # Under the lock, so that two runs of one job started at once share one etcd: the
        # second finds the first's running instead of starting another on the same data.
        with m.state.etcd_lock():
            endpoint = m.state.running_etcd()
            if endpoint is None:
                m.state.security().set_listen(m.opts.listen)  # TLS material made here, kept
                m.etcd = m.state.start_etcd()
                endpoint = m.etcd.endpoint
    if m.etcd is None:
        m._notes.append(f"reusing the job's embedded etcd still running at {endpoint}")
    if not m.opts.join_only:
        from aimaster.security.publish import publish_bundle

        m._notes += publish_bundle(m.state, endpoint, m.opts.workers, m.opts.command,
                                   ignored_listen=m.opts.listen if m.etcd is None else None)
    return m.state.client_config(endpoint, retry_seconds=retry_seconds_from_env())


def become_master(m) -> Optional[int]:
    """Take the master key (or stand by for it), then write the job record. An exit code ends the run."""
    m.key = MasterKey(m.session)
    if m.opts.standby:
        code = stand_by(m)
        if code is not None:
            return code
    elif not m.key.take(patience=m.opts.lease_ttl * 2 + 2, give_up=m.key.running_here):
        other = m.key.holder() or {}
        # The embedded etcd, if we started it, serves that master now: it stops it at the end.
        m.etcd = None
        raise JobError(f"job {m.opts.job_id} is already running: its master is pid {other.get('pid')} "
                       f"on {other.get('host')}; add workers with 'aimaster join --job-id {m.opts.job_id}', "
                       f"or wait with 'aimaster run --standby'")
    if m.opts.etcd is None:
        # The job's embedded etcd is ours now, whether we started it or inherited it from a
        # master that died: keep it alive, and stop it when the job ends.
        m.guard = EtcdGuard(m.state, m.etcd, m._log).start()
    try:
        previous = readback.check_job(m.store.get_value(keys.JOB), m.store.key(keys.JOB)) or {}
    except EtcdDataError as e:
        previous, bad_record = {}, e
    else:
        bad_record = None
    if previous.get("state") == JobState.SUCCEEDED:
        m._check_inputs_unchanged()  # new files in its input would otherwise go unprocessed, silently
        m._log(f"job {m.opts.job_id} already succeeded; nothing to do")
        return 0
    m.generation = previous.get("generation", 0) + 1
    # A stop request was for the run it stopped; this run starts afresh.
    control.clear_stop(m.store)
    if previous:
        clear_drained(m.store)
    # With --min-workers above 1 the job is Pending until that many workers are registered.
    m.job_state = JobState.PENDING if m.opts.min_workers > 1 else JobState.RUNNING
    m.job_record = dict(previous)
    m.is_master = True
    m._write_job(m.job_state, command=m.opts.command, workers=m.opts.workers,
                 generation=m.generation, resumed=bool(previous),
                 created=previous.get("created", m.started), ended=None, reason=None,
                 min_workers=m.opts.min_workers, options=job_options(m.opts))
    if bad_record is not None:
        return m._fail_on_bad_record(bad_record)
    if m.opts.retry_failed:
        retry.reset_failed(m.session, m._notes.append)
    if previous:
        m._log(f"resuming job {m.opts.job_id} (run {m.generation})")
    return None


def clear_drained(store) -> None:
    """Delete the last run's ``drained`` markers (:meth:`Dataset.drained`): slices its workers held
    come back to todo now, and this run's readers should claim ahead again until they run out.
    Its completion notes go too (:meth:`Dataset.finished`): this run's workers validate afresh."""
    for rel in store.keys(keys.DATASETS):
        if rel.endswith("/drained") or rel.endswith("/complete"):
            store.delete(keys.DATASETS + rel)


def stand_by(m) -> Optional[int]:
    """``--standby``: wait for the master key; an exit code when the job ended under the active master."""
    st = m.store
    me = f"{socket.gethostname()}-{os.getpid()}"
    m.session.leased(lambda lease: st.put(keys.standby(me), {"pid": os.getpid(), "t": time.time()}, lease=lease))
    m._log(f"standby: waiting to take over as master of job {m.opts.job_id}")
    try:
        while True:
            if m.stop_requested.is_set():
                return EXIT_CODES[JobState.STOPPED]
            if m.key.try_take():
                break
            if m.key.clear_dead_local_holder():
                continue
            try:
                job = readback.check_job(st.get_value(keys.JOB), st.key(keys.JOB)) or {}
            except EtcdDataError as e:
                m.warnings.note([(st.key(keys.JOB), 0, str(e))])
                job = {}
            ended = job.get("ended")
            if job.get("state") in TERMINAL and isinstance(ended, (int, float)) and ended > m.started:
                m._log(f"standby: job {m.opts.job_id} ended ({job['state']}) under the active master")
                return EXIT_CODES[job["state"]]
            time.sleep(0.5)
    finally:
        st.delete(keys.standby(me))
    m._log(f"standby: the master of job {m.opts.job_id} is gone; taking over")
    return None


def job_options(o) -> Dict[str, Any]:
    """The run's settings as the job record keeps them (``aimaster join`` follows them)."""
    return o.settings.to_job_record()


def worker_environment(m) -> Dict[str, str]:
    """The environment every worker of this supervisor starts with: ours, less inherited job
    coordinates, plus the job's etcd credentials and settings."""
    env = dict(os.environ)
    # Drop the job coordinates this process may itself have inherited (a job started from inside
    # a worker); user settings such as AIMASTER_ODPS_WAREHOUSE pass through.
    for k in [k for k in env if k.startswith(("AIMASTER_ETCD_", "AIMASTER_JOB_", "AIMASTER_WORKER_"))
              or k == "AIMASTER_STANDALONE"]:
        env.pop(k)
    o = m.opts
    if o.etcd is None:  # the job's embedded etcd: workers get the worker's credentials, not root's
        from aimaster.security.publish import worker_config

        env.update(worker_config(m.state, m.store.cfg).to_env())
    else:
        env.update(m.store.cfg.to_env())
    env["AIMASTER_JOB_ID"] = o.job_id
    env.update(o.settings.to_env())  # the slice protocol's settings (aimaster.settings.JobSettings)
    env["AIMASTER_LAUNCHER"] = f"join:{socket.gethostname()}:{os.getpid()}" if o.join_only else "master"
    return env
