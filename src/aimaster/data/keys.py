"""The etcd key layout of a job, in one place (see docs/design.md).

Everything lives under ``/aimaster/v1/jobs/<job-id>/``::

    job                         job record: state, created, options (master writes)
    master                      the elected master's record, bound to its lease
    standby/<id>                a standby master waiting for the master key (bound to its lease)
    spares/<spare>              a warm spare worker: "ready" (it writes), or "go" with the identity the
                                master hands it to replace a slow worker (aimaster.data.spare)
    workers/<worker>            a live worker (bound to its lease): host, pid, started, slot, launcher
    beat/<worker>               a worker's progress heartbeat (bound to its lease): time, state, slices held
    stats/<worker>              a worker's counters: slices, items, first/last commit time, recent slice
                                durations, speculative copies started/won/lost; when it was preempted
    stop/<worker>               the master's request to stop a worker (signal, reason): the worker's
                                supervisor acts on it (aimaster.master.stop_requests)
    ds/<ds>/plan                the dataset's plan; written last, so it exists only when complete
    ds/<ds>/planner             the process planning the dataset (bound to its lease)
    ds/<ds>/items/<chunk>       file datasets: the file list, in chunks of JSON arrays
    ds/<ds>/todo/<slice>        a free slice ({"a": attempts so far})
    ds/<ds>/claim/<slice>       the primary attempt of a slice in flight (bound to its worker's lease)
    ds/<ds>/backup/<slice>/<w>  a speculative copy of a slice in flight (bound to its worker's lease)
    ds/<ds>/attempts/<slice>    primary attempts started so far ("a"), the worker of the latest ("w"),
                                backups started for it ("b"), the last error ("e"); no lease: survives
    ds/<ds>/done/<slice>        the one commit of a slice: attempt, worker, staged outputs, whether
                                a speculative copy won ("spec")
    ds/<ds>/failed/<slice>      a slice given up on, with its error
    ds/<ds>/inputcheck          file datasets: this run's verdict on whether the input is still the
                                planned one ({run, plan, ok | error}; see aimaster.io.input_check)
    ds/<ds>/inputchecker        the one process of a run listing the input again (bound to its lease)
    ds/<ds>/sink                the dataset's output sink (its description), agreed by the first
                                writer; commit records naming any other location are refused
    ds/<ds>/drained             a worker of this run found no free slice: readers give back the slices
                                they claimed ahead and claim only on demand (deleted when a run starts)
    ds/<ds>/finalized           outputs of the whole dataset published (and sessions committed)
    ds/<ds>/complete            a worker validated every record and found the dataset complete, as of
                                store revision "rev" (with the key counts it saw): peers that see
                                the same counts and no record written since exit without
                                validating them all again (deleted when a run starts)
    ds/<ds>/completing          the one worker validating every record at the end (bound to its lease)
    ds/<ds>/retaken             changed whenever a commit is taken back (its output died with an
                                expired MaxCompute upload session): cached completion is re-read
    ds/<ds>/finalizing          the one process finalizing the dataset (bound to its lease)
    ds/<ds>/slots/<s>/<a>.<k>   table outputs: the block slot k a speculative copy of attempt a took
    ds/<ds>/uploads/<g>         MaxCompute: upload session generation g shared by the job's writers
    ds/<ds>/uploads-new         MaxCompute: the process creating the next generation (leased)
    ds/<ds>/uploads-seal/<g>    MaxCompute: generation g sealed (no upload or commit into it)
    control                     the job's control record: stop, or fail with a reason (aimaster.master.control)
    restart                     the Sync restart epoch: bumped to restart every worker together (master.sync)
    joiners/<host>-<pid>        an `aimaster join` supervisor, bound to its lease: the master waits for it

and, outside every job, ``/aimaster/v1/index/<job-id>``: one small key per job, so listing jobs
never reads their slices (:data:`INDEX`, an absolute key).

The slice records (``todo``, ``claim``, ``backup``, ``attempts``, ``done``, ``failed``, ``slots``) are
the dataclasses of :mod:`aimaster.data.records`, which validate them as they are read.
"""

from __future__ import annotations

import re

from aimaster.data.store import ROOT

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(kind: str, value: str) -> str:
    from aimaster.errors import ConfigError

    if not isinstance(value, str) or not _SAFE.match(value):
        raise ConfigError(
            f"bad {kind} {value!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def is_name(value: object) -> bool:
    """Whether ``value`` is a name :func:`check_name` accepts (for names read back from etcd)."""
    return isinstance(value, str) and bool(_SAFE.match(value))


JOB = "job"
MASTER = "master"
STANDBY = "standby/"
SPARES = "spares/"
WORKERS = "workers/"
BEATS = "beat/"
STATS = "stats/"
STOP_REQUESTS = "stop/"
DATASETS = "ds/"
CONTROL = "control"
RESTART = "restart"
JOINERS = "joiners/"
INDEX = f"{ROOT}index/"  # absolute: outside every job's prefix


def job_index(job_id: str) -> str:
    """The job's entry in the index of jobs (an absolute key)."""
    return f"{INDEX}{job_id}"


def worker(worker_id: str) -> str:
    return f"{WORKERS}{worker_id}"


def stats(worker_id: str) -> str:
    return f"{STATS}{worker_id}"


def stop_request(worker_id: str) -> str:
    return f"{STOP_REQUESTS}{worker_id}"


def beat(worker_id: str) -> str:
    return f"{BEATS}{worker_id}"


def standby(standby_id: str) -> str:
    return f"{STANDBY}{standby_id}"


def spare(spare_id: str) -> str:
    return f"{SPARES}{spare_id}"


def joiner(name: str) -> str:
    return f"{JOINERS}{name}"


class DatasetKeys:
    """Keys of one dataset within a job."""

    def __init__(self, ds_id: str):
        self.ds_id = ds_id
        self.base = f"{DATASETS}{ds_id}/"
        self.plan = self.base + "plan"
        self.planner = self.base + "planner"
        self.items = self.base + "items/"
        self.todo = self.base + "todo/"
        self.claim = self.base + "claim/"
        self.backup = self.base + "backup/"
        self.attempts = self.base + "attempts/"
        self.done = self.base + "done/"
        self.failed = self.base + "failed/"
        self.finalized = self.base + "finalized"
        self.complete = self.base + "complete"
        self.completing = self.base + "completing"
        self.drained = self.base + "drained"
        self.finalizing = self.base + "finalizing"
        self.sink = self.base + "sink"
        self.retaken = self.base + "retaken"
        self.slots = self.base + "slots/"
        self.uploads = self.base + "uploads/"
        self.uploads_new = self.base + "uploads-new"
        self.uploads_seal = self.base + "uploads-seal/"
        self.inputcheck = self.base + "inputcheck"
        self.inputchecker = self.base + "inputchecker"

    def item_chunk(self, n: int) -> str:
        return f"{self.items}{n:06d}"

    def backup_of(self, slice_id: str, worker_id: str) -> str:
        return f"{self.backup}{slice_id}/{worker_id}"

    def backups_of(self, slice_id: str) -> str:
        """The prefix of every speculative copy of a slice."""
        return f"{self.backup}{slice_id}/"

    def slot(self, slice_id: str, attempt_no: int, ordinal: int) -> str:
        return f"{self.slots}{slice_id}/{attempt_no}.{ordinal}"

    def upload_generation(self, generation: int) -> str:
        return f"{self.uploads}{generation:06d}"

    def upload_seal(self, generation: int) -> str:
        return f"{self.uploads_seal}{generation:06d}"
