"""``aimaster retry``: run a finished job's failed slices again, with a new attempt budget.

A user whose job ended Failed on bad data fixes the data (or the program) and wants the failed
slices redone, not the job: ``aimaster retry --job-id J`` is ``aimaster run --job-id J`` (a resume:
committed slices are never redone) whose master first puts every failed slice back to ``todo``.

Why this keeps exactly-once: a slice in ``failed/`` has no commit (``done/`` is absent; a commit
deletes ``failed/`` in its own transaction). Each slice is put back by one etcd transaction guarded
on its state -- its ``failed/`` record unchanged since it was read, and no ``done/``, ``todo/`` or
``claim/`` key -- that deletes ``failed/`` and ``attempts/`` and writes ``todo/`` with no attempts
(the last error kept for the report). The same transaction deletes the dataset's ``finalized``
marker, so a dataset is never "finalized" while one of its slices can still commit: the job's end
publishes the new commits (and redoes the old ones' publish, which is idempotent).

A MaxCompute output whose upload sessions were committed at the job's end cannot take new blocks:
such a retry is refused, in one line, before anything changes.

The command line is ``run``'s (the options are the same objects, so the two never drift apart);
COMMAND and options not given default to what the job record holds: the job's command, its worker
count and its recorded settings (attempts, lease TTL, speculation, fault policy, hang detection).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Tuple

import click

from aimaster.data import keys
from aimaster.data.coordinator import Dataset
from aimaster.errors import JobError
from aimaster.etcd_flags import etcd_config
from aimaster.master.job_state import JobState
from aimaster.master.state_dir import default_root

META_KEY = "aimaster.retry"  # in click's ctx.meta: the run being invoked is a retry

# run's parameter name -> the job record's ``options`` name, for settings a retry inherits.
INHERITED = {
    "enable_job_hang_detection": "hang_detection", "job_hang_interval": "hang_interval",
    "lease_ttl": "lease_ttl", "max_slice_attempts": "max_slice_attempts", "speculation": "speculation",
    "speculation_multiplier": "speculation_multiplier", "max_slice_copies": "max_slice_copies",
    "slow_worker_multiplier": "slow_worker_multiplier", "job_execution_mode": "execution_mode",
    "fault_tolerant_policy": "fault_tolerant_policy",
    "slice_timeout": "slice_timeout",
}


def requested() -> bool:
    """Whether the ``aimaster run`` being executed was invoked by ``aimaster retry``."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(META_KEY))


# ---------------------------------------------------------------------------------- the reset
def reset_failed(session: Any, log=lambda message: None) -> Dict[str, int]:
    """Put every failed slice of the job back to ``todo`` (see the module docstring).

    Called by the master holding the job's master key, before any worker starts. Returns
    ``{dataset id: slices put back}``. A slice whose record changed meanwhile (committed, or
    failed again) is left as it is: its transaction's comparisons fail.
    """
    store = session.store
    datasets = []
    for rel in store.keys(keys.DATASETS):
        if rel.endswith("/plan"):
            ds = Dataset(session, rel.split("/", 1)[0])  # names relative to ds/
            if ds.load_plan() is not None:
                datasets.append(ds)
    todo: List[Tuple[Dataset, List[Tuple[str, int, Dict[str, Any]]]]] = []
    for ds in datasets:
        done, failed_revs = ds.completion()
        records = {sid: rec for sid, rec in ds.failed()}
        slices = [(sid, rev, records[sid]) for sid, rev in sorted(failed_revs.items())
                  if sid not in done and sid in records]
        if not slices:
            continue
        sink = ds.agreed_sink() or {}
        if sink.get("kind") == "odps" and store.get_value(ds.k.finalized) is not None:
            raise JobError(f"dataset {ds.ds_id} of job {store.prefix.rstrip('/').rsplit('/', 1)[-1]} writes to "
                           f"MaxCompute table {sink.get('url')}, whose upload sessions were committed when the job "
                           f"ended: its {len(slices)} failed slice(s) cannot be added to them; run them as a new "
                           f"job (aimaster status --failed --json lists their row ranges)")
        todo.append((ds, slices))
    out: Dict[str, int] = {}
    for ds, slices in todo:
        n = sum(1 for sid, rev, record in slices if _put_back(ds, sid, rev, record))
        out[ds.ds_id] = n
        log(f"retry: {n} failed slice(s) of dataset {ds.ds_id} put back, each with a new budget of "
            f"{ds.max_attempts} attempt(s)")
    return out


def _put_back(ds: Dataset, sid: str, rev: int, record: Dict[str, Any]) -> bool:
    """One guarded transaction (:meth:`Dataset.give_back_uncounted`): failed -> todo (no attempts
    yet), and the dataset no longer finalized."""
    from aimaster.data.records import FailureRecord

    rel = ds.k.failed + sid
    return ds.give_back_uncounted(sid, rel, rev, FailureRecord.from_json(record, ds.store.key(rel)))


# ---------------------------------------------------------------------------------- the command
def make_retry_command(run: click.Command) -> click.Command:
    """``aimaster retry``: ``run``'s own parameters, COMMAND optional, defaults from the job record."""
    params: List[click.Parameter] = []
    for p in run.params:
        if p.name == "command":
            continue
        if p.name == "job_id":
            p = click.Option(["--job-id"], required=True, help="The finished job whose failed slices to run again.")
        else:
            p = copy.copy(p)
            if p.name in INHERITED or p.name == "workers":
                p.show_default = False
                p.help = (p.help or "").rstrip() + " Default: as the job ran."
        params.append(p)
    params.append(click.Argument(["command"], nargs=-1, required=False, type=click.UNPROCESSED))

    @click.pass_context
    def callback(ctx: click.Context, **kw: Any) -> None:
        from aimaster.master.status import job_status

        cfg = etcd_config(kw["etcd"], kw["etcd_user"], kw["etcd_password"], kw["etcd_ca"],
                                   kw["etcd_cert"], kw["etcd_key"])
        job_id = keys.check_name("job id", kw["job_id"])
        view = job_status(job_id, cfg, kw["state_dir"] or default_root())
        record = view.get("job") or {}
        if cfg is None and not kw["state_dir"] and view.get("state_dir"):
            kw["state_dir"] = view["state_dir"]  # found through the job index, from another directory
        if view["state"] == JobState.SUCCEEDED:
            click.echo(f"aimaster: job {job_id} already succeeded; nothing to retry", err=True)
            return
        kw = apply_job_defaults(ctx, kw, record)
        if not kw["command"]:
            raise click.UsageError(f"job {job_id} records no command; give it: aimaster retry --job-id {job_id} "
                                   f"-- COMMAND")
        failed = len(view.get("failed_slices") or [])
        click.echo(f"aimaster: retrying job {job_id} ({view['state']}): {failed} failed slice(s) run again, "
                   f"committed ones are kept", err=True)
        ctx.meta[META_KEY] = True
        ctx.invoke(run.callback, **kw)

    return click.Command(
        "retry", params=params, callback=callback, context_settings=dict(run.context_settings),
        short_help="Run a finished job's failed slices again.",
        help="""Run the failed slices of a finished job again, with a new attempt budget.

        aimaster retry --job-id J            (after fixing the data or the program)

        Resumes the job (committed slices are never redone) after putting each failed slice back,
        one guarded etcd transaction per slice. COMMAND and the options not given are the job's
        own: its command, worker count and recorded settings. Exits as run does.""")


def apply_job_defaults(ctx: click.Context, kw: Dict[str, Any], record: Dict[str, Any]) -> Dict[str, Any]:
    """Options left at their defaults take the job record's values; COMMAND defaults to its command."""
    from click.core import ParameterSource

    kw = dict(kw)
    options = record.get("options") if isinstance(record.get("options"), dict) else {}

    def defaulted(name: str) -> bool:
        return ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)

    for name, recorded in INHERITED.items():
        if name in kw and defaulted(name) and recorded in options:
            value = options[recorded]
            if value is None or isinstance(value, type(kw[name])) or (
                    isinstance(kw[name], float) and isinstance(value, int) and not isinstance(value, bool)) \
                    or kw[name] is None:
                kw[name] = value
    workers = record.get("workers")
    if defaulted("workers") and isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0:
        kw["workers"] = workers
    command = record.get("command")
    if not kw.get("command") and isinstance(command, list) and all(isinstance(x, str) for x in command):
        kw["command"] = tuple(command)
    return kw
