"""Where a worker finds its job: from the launcher's environment, or standalone.

Under ``aimaster run`` (or ``aimaster join``) the launcher sets ``AIMASTER_ETCD_ENDPOINTS``,
``AIMASTER_JOB_ID`` and ``AIMASTER_WORKER_ID``. A program started without them (``python infer.py``)
is a job of its own: it starts a private embedded etcd in a temporary directory, is the only worker,
and processes the whole dataset with the same claim/commit semantics.

What standalone mode does *not* have, said once on stderr when it starts: the temporary etcd goes
away with the process, so a second ``python infer.py`` plans and processes everything again (its
outputs land under the same final names, one per slice, so nothing is duplicated, only redone);
and with no master there is no relaunch, progress display, ``aimaster status`` or report. It is not
made resumable by keeping that etcd somewhere: a program run from a shared directory by two users,
or by one user on two inputs, would then find and adopt a stranger's job state. ``aimaster run -n 1
-- python infer.py`` is the same single worker with all of that.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Optional

from aimaster.data import keys, spare
from aimaster.data.etcd_server import EmbeddedEtcd
from aimaster.data.preemption import Preempted, preempt, quiet_child_handler
from aimaster.data.session import WorkerSession
from aimaster.data.store import EtcdConfig, Store, job_prefix


@dataclass
class JobContext:
    etcd: EtcdConfig
    job_id: str
    worker_id: str
    standalone: bool


# How a worker that dies of an aimaster error tells the master whose fault it was (see
# aimaster.errors): the input or configuration (no relaunch can help: the job fails at once), or the
# environment (a relaunch may work: the fault policy decides). 75 is sysexits' EX_TEMPFAIL.
USER_ERROR_EXIT = 3
ENVIRONMENT_ERROR_EXIT = 75

STANDALONE_NOTE = ("aimaster: standalone (no 'aimaster run'): one worker on a private, temporary etcd; nothing is "
                   "kept for a resume and no report is written (aimaster run -n 1 -- COMMAND has both)")

_lock = threading.Lock()
_standalone_etcd: Optional[EmbeddedEtcd] = None
_session: Optional[WorkerSession] = None


def _start_standalone_etcd() -> EmbeddedEtcd:
    global _standalone_etcd
    if _standalone_etcd is None:
        _standalone_etcd = EmbeddedEtcd().start()
        atexit.register(_standalone_etcd.stop)
        print(STANDALONE_NOTE, file=sys.stderr, flush=True)
        # Spawned children (a DataLoader with the 'spawn' start method) must join this job, not
        # start a private etcd of their own.
        os.environ["AIMASTER_ETCD_ENDPOINTS"] = _standalone_etcd.endpoint
        os.environ["AIMASTER_JOB_ID"] = "standalone"
        os.environ["AIMASTER_STANDALONE"] = "1"
    return _standalone_etcd


def job_context() -> JobContext:
    cfg = EtcdConfig.from_env()
    worker_id = os.environ.get("AIMASTER_WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}"
    if cfg is None:
        _start_standalone_etcd()
        cfg = EtcdConfig.from_env()
    job_id = keys.check_name("job id", os.environ.get("AIMASTER_JOB_ID", "default"))
    return JobContext(cfg, job_id, worker_id, standalone=os.environ.get("AIMASTER_STANDALONE") == "1")


def current_session() -> WorkerSession:
    """This process's worker session; a forked child (DataLoader worker) gets its own."""
    global _session
    with _lock:
        if _session is None or _session.pid != os.getpid():
            ctx = job_context()
            worker_id = ctx.worker_id
            # A child of a worker (a forked or spawned DataLoader process) gets a lease of its own but
            # is not a worker of the job: registering under the parent's id would hijack the parent's
            # registration, and the master must not count, watch or relaunch it.
            import multiprocessing

            child = _session is not None or multiprocessing.parent_process() is not None
            if child:
                worker_id = f"{worker_id}.{os.getpid()}"
            store = Store(ctx.etcd, job_prefix(ctx.job_id))
            spare_id = os.environ.get(spare.SPARE_ENV)
            if spare_id and not child:
                # A warm spare (aimaster run --warm-spares): the program got here with its imports
                # done and its model built; it waits until the master needs a worker.
                ident = spare.wait_until_needed(store, spare_id)
                spare.take_on(spare_id, ident)
                worker_id = ident.worker_id
            _session = WorkerSession(store, worker_id, register=not child)
            _session.standalone = ctx.standalone
            install_sigterm_handler()
        return _session


def _excepthook(exc_type, exc, tb, _previous=sys.excepthook):
    """A worker dying of an uncaught exception hands its slices back with the error, at once.

    The error then reaches the slice's attempt record, so a slice that fails every attempt (a poison
    input) is reported failed *with its error* after the bounded number of attempts, and the slices
    go back to the pool now instead of after the lease TTL.

    The exit code tells the master what to do (see :mod:`aimaster.errors`):

    * an aimaster error caused by the input or configuration (missing input dir, bad meta file...)
      is one line, not a traceback, and exits with USER_ERROR_EXIT: relaunching would only fail the
      same way;
    * an environment error (storage, etcd out of reach, a crashed writer child, an I/O error) exits
      with ENVIRONMENT_ERROR_EXIT: the master relaunches under its fault policy. An aimaster one is
      one line; a plain ``OSError`` from the program's own code keeps its traceback;
    * any other exception is the program's own: traceback, exit status 1, as Python does.
    """
    from aimaster.errors import AimasterError, EtcdUnavailableError, is_environment_error

    if not isinstance(exc, EtcdUnavailableError):  # else etcd is what failed: the lease frees the slices
        _release_held(f"{exc_type.__name__}: {exc}".strip())
    environment = is_environment_error(exc)
    if isinstance(exc, AimasterError):
        print(f"aimaster: error: {exc}", file=sys.stderr, flush=True)
    else:
        _previous(exc_type, exc, tb)
        if not environment:
            return
    sys.stdout.flush()
    sys.stderr.flush()
    if _session is not None and _session.pid == os.getpid():
        _session.close()
    os._exit(ENVIRONMENT_ERROR_EXIT if environment else USER_ERROR_EXIT)


def _release_held(error: str) -> None:
    session = _session
    if session is None or session.pid != os.getpid() or not session.claims:
        return
    for claim in list(session.claims.values()):
        try:
            claim.dataset.release(claim, error)
        except Exception:  # noqa: BLE001 - dying anyway; the lease expiry gives the slice back
            pass


def install_excepthook() -> None:
    if sys.excepthook is not _excepthook:
        sys.excepthook = _excepthook


def _terminate(signum, frame):
    # SIGTERM (a preemption, or the launcher stopping us): our slices go back to the pool now, not
    # after the TTL, and we exit 0, marked preempted (see aimaster.data.preemption).
    # First of all (nothing imported or waited on before it): a SIGTERM to the process group kills
    # the DataLoader readers too, and PyTorch's SIGCHLD handler would raise inside this handler.
    quiet_child_handler()
    session = _session
    if session is not None and session.pid == os.getpid():
        if session.preempted is not None:
            return  # a second SIGTERM while the first unwinds the program
        preempt(session)
    raise Preempted()


def install_sigterm_handler() -> None:
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _terminate)
