"""``aimaster``: run, join, inspect and demo jobs. ``aimaster COMMAND --help`` is the reference."""

from __future__ import annotations

import datetime
import json
import os
import sys
from typing import List, Optional

import click
from click.core import ParameterSource

from aimaster.data import keys
from aimaster.engines import commands as engine_commands
from aimaster.errors import AimasterError, JobError
from aimaster.etcd_flags import etcd_config
from aimaster.job_ids import new_job_id
from aimaster.master import retry
from aimaster.master.commandline import check_command, command_args
from aimaster.master.job_state import TERMINAL, JobState
from aimaster.master.launchers.options import launcher_from_options, launcher_options
from aimaster.master.master import Master, connect
from aimaster.master.policy import EXECUTION_MODES, POLICIES, FaultPolicy
from aimaster.master.run_options import RunOptions
from aimaster.master.state_dir import JobStateDir, default_root
from aimaster.security.options import bundle_config, listen_option
from aimaster.settings import DEFAULTS

# Options before COMMAND are aimaster's: a typo is click's "no such option" (with its suggestion),
# never the start of the worker command. Everything from COMMAND on (or after ``--``) is the worker's.
_COMMAND = {"allow_interspersed_args": False}


def etcd_options(f):
    """Options shared by every command that talks to etcd."""
    opts = [
        click.option("--etcd", metavar="HOST:PORT[,HOST:PORT...]",
                     help="An existing etcd cluster. Default: the job's embedded etcd in the state directory."),
        click.option("--etcd-user", envvar="AIMASTER_ETCD_USER", help="etcd user (auth enabled)."),
        click.option("--etcd-password", envvar="AIMASTER_ETCD_PASSWORD",
                     help="etcd password; prefer the AIMASTER_ETCD_PASSWORD variable."),
        click.option("--etcd-ca", type=click.Path(exists=True, dir_okay=False), help="CA certificate (TLS)."),
        click.option("--etcd-cert", type=click.Path(exists=True, dir_okay=False), help="Client certificate (TLS)."),
        click.option("--etcd-key", type=click.Path(exists=True, dir_okay=False), help="Client key (TLS)."),
        click.option("--state-dir", type=click.Path(file_okay=False),
                     help="Root of job state directories (default: ./.aimaster or $AIMASTER_STATE_DIR)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aimaster")
def cli() -> None:
    """Elastic, distributed, offline batch inference.

    Workers take data slices from a shared plan in etcd, process them, and commit each exactly once.
    """


@cli.command(context_settings=_COMMAND)
@click.option("-n", "--workers", type=click.IntRange(0), default=1, show_default=True,
              help="Worker processes to run on this machine (0: only workers that join from elsewhere).")
@click.option("--job-id", help="Job id; re-running an id resumes it (committed slices are never redone).")
@etcd_options
@click.option("--min-workers", type=click.IntRange(1), default=DEFAULTS.min_workers, show_default=True,
              help="The job counts as running (not pending) once this many workers are registered; "
                   "more may join, and any may leave, at any time.")
@click.option("--launch-interval", type=click.FloatRange(0), default=DEFAULTS.launch_interval, show_default=True,
              help="Seconds between worker starts. Once every slice is committed nothing more starts, "
                   "so a ramp never runs more workers than the data needs.")
@click.option("--standby", is_flag=True,
              help="Stand by for the job's master: take over (adopting its workers) if it dies.")
@click.option("--job-execution-mode", type=click.Choice(EXECUTION_MODES), default=DEFAULTS.execution_mode,
              show_default=True,
              help="Async: restart only a failed worker. Sync: restart all workers when one fails.")
@click.option("--fault-tolerant-policy", type=click.Choice(POLICIES), default=DEFAULTS.fault_tolerant_policy,
              show_default=True,
              help="When to relaunch a failed worker.")
@click.option("--max-num-of-same-error", type=click.IntRange(1), default=None,
              help=f"The same failure this many times fails the job [default: {DEFAULTS.max_num_of_same_error}]. "
                   "Unless given, a hopeless "
                   "crash (every worker dies the same way before anything is committed) fails it at once.")
@click.option("--enable-job-hang-detection", is_flag=True, help="Kill and relaunch workers that stop progressing.")
@click.option("--job-hang-interval", type=click.FloatRange(1), default=DEFAULTS.hang_interval, show_default=True,
              help="Seconds without progress after which a worker counts as hung.")
@click.option("--lease-ttl", type=click.IntRange(2), default=DEFAULTS.lease_ttl, show_default=True,
              help="Seconds after which a dead worker's slices are handed out again.")
@click.option("--max-slice-attempts", type=click.IntRange(1), default=DEFAULTS.max_slice_attempts, show_default=True,
              help="Attempts after which a slice is reported failed instead of retried (a poison slice "
                   "does not block the job).")
@click.option("--slice-timeout", type=click.FloatRange(0, min_open=True), metavar="SECONDS",
              help="Abandon an attempt running longer than this (its worker is killed and relaunched) and hand "
                   "the slice out again, as a failed attempt. Off by default.")
@click.option("--speculation/--no-speculation", default=DEFAULTS.speculation, show_default=True,
              help="When no slice is free, idle workers copy the longest-running held slice; the first "
                   "commit wins.")
@click.option("--speculation-multiplier", type=click.FloatRange(0), default=DEFAULTS.speculation_multiplier,
              show_default=True,
              help="Copy a slice only once it has run this many times the median slice duration.")
@click.option("--max-slice-copies", type=click.IntRange(0), default=DEFAULTS.max_slice_copies, show_default=True,
              help="Speculative copies per slice attempt.")
@click.option("--slow-worker-multiplier", type=click.FloatRange(0), default=DEFAULTS.slow_worker_multiplier,
              show_default=True,
              help="Replace a worker whose slices take this many times its peers' median (0: never).")
@click.option("--slow-worker-min-samples", type=click.IntRange(1), default=DEFAULTS.slow_worker_min_samples,
              show_default=True,
              help="Slice durations the peers must have reported before a worker can be called slow.")
@click.option("--warm-spares", type=click.IntRange(0), default=0, show_default=True,
              help="Start this many extra worker processes that run COMMAND up to its first aimaster call "
                   "and wait there: a slow worker's replacement then takes over in a fraction of a second "
                   "instead of a fresh process's start-up (local launcher, no --gpus-per-worker).")
@click.option("--metrics-port", type=click.IntRange(1, 65535),
              help="Serve Prometheus metrics on this port (http://HOST:PORT/metrics). Off by default.")
@click.option("--metrics-grace", type=click.FloatRange(0), default=30.0, show_default=True,
              help="With --metrics-port: seconds the endpoint keeps serving the final values after the job "
                   "ended, so that a scrape sees the end (Ctrl-C skips it).")
@click.option("--log-max-bytes", type=click.IntRange(1024), default=DEFAULTS.log_max_bytes, show_default=True,
              help="Size at which a worker's stdout/stderr file in the state directory is rotated.")
@click.option("--log-backups", type=click.IntRange(1), default=DEFAULTS.log_backups, show_default=True,
              help="Rotated files kept per worker log (worker-N.out.1, .2, ...).")
@click.option("--tee", is_flag=True, help="Also print workers' output on the console, prefixed with the worker id.")
@click.option("--quiet", is_flag=True, help="No progress display.")
@click.option("--listen", metavar="HOST[:PORT]",
              help="Also serve the job's embedded etcd to other hosts on this address (0.0.0.0: all), with TLS, "
                   "client certificates and authentication; writes the join bundle <state dir>/jobs/<id>/join.json. "
                   "PORT: a free one (the previous run's on resume).")
@click.option("--advertise", metavar="HOST",
              help="The address other hosts reach this one at [default: the --listen HOST, or this host's "
                   "primary address for 0.0.0.0].")
@click.option("--insecure", is_flag=True, help="With --listen: plain text, no authentication (warns).")
@launcher_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(workers, job_id, etcd, etcd_user, etcd_password, etcd_ca, etcd_cert, etcd_key, state_dir, min_workers,
        launch_interval, standby, job_execution_mode, fault_tolerant_policy, max_num_of_same_error,
        enable_job_hang_detection, job_hang_interval, lease_ttl, max_slice_attempts, speculation,
        speculation_multiplier, max_slice_copies, slow_worker_multiplier, slow_worker_min_samples, warm_spares,
        metrics_port, metrics_grace, log_max_bytes, log_backups, tee, quiet, command, slice_timeout=None, listen=None,
        advertise=None, insecure=False, **launcher_kw) -> None:
    """Run COMMAND as a job on WORKERS worker processes: aimaster run -n 4 -- python infer.py

    Exits 0 when the job Succeeded, 1 when it Failed, 130 when stopped with Ctrl-C or
    ``aimaster stop`` (resumable). On a terminal the progress is a live display; otherwise a plain
    line every $AIMASTER_PROGRESS_INTERVAL seconds (default 5).
    """
    job_id_given = bool(job_id)
    job_id = keys.check_name("job id", job_id or new_job_id())
    opts = RunOptions(
        command=_command(command), job_id=job_id, workers=workers,
        etcd=etcd_config(etcd, etcd_user, etcd_password, etcd_ca, etcd_cert, etcd_key),
        state_root=state_dir or default_root(), min_workers=min_workers,
        policy=FaultPolicy(job_execution_mode, fault_tolerant_policy,
                           max_num_of_same_error or DEFAULTS.max_num_of_same_error,
                           fail_fast=max_num_of_same_error is None),
        hang_detection=enable_job_hang_detection, hang_interval=job_hang_interval, lease_ttl=lease_ttl,
        max_slice_attempts=max_slice_attempts, progress=not quiet, launch_interval=launch_interval,
        standby=standby, speculation=speculation, speculation_multiplier=speculation_multiplier,
        max_slice_copies=max_slice_copies, slow_multiplier=slow_worker_multiplier,
        slow_min_samples=slow_worker_min_samples, metrics_port=metrics_port, metrics_grace=metrics_grace,
        log_max_bytes=log_max_bytes,
        log_backups=log_backups, tee=tee,
    )
    opts.slice_timeout = slice_timeout
    opts.retry_failed = retry.requested()  # `aimaster retry` runs this command after its own checks
    opts.listen = listen_option(listen, advertise, insecure, etcd, JobStateDir(opts.state_root, job_id))
    if standby and not job_id_given:
        raise click.UsageError("--standby needs the --job-id of the job to stand by for")
    workers_given = click.get_current_context().get_parameter_source("workers") != ParameterSource.DEFAULT
    workers, opts.launcher = launcher_from_options(workers, workers_given, **launcher_kw)
    opts.workers = workers
    opts.warm_spares = _warm_spares(warm_spares, slow_worker_multiplier, opts.launcher)
    click.echo(f"aimaster: job {job_id} ({workers} worker(s){', standby' if standby else ''}); state in "
               f"{JobStateDir(opts.state_root, job_id).path}", err=True)
    sys.exit(Master(opts).run())


@cli.command(context_settings=_COMMAND)
@click.option("-n", "--workers", type=click.IntRange(1), default=1, show_default=True)
@click.option("--job-id", help="The running job to join (with --bundle: the bundle's).")
@click.option("--bundle", type=click.Path(dir_okay=False),
              help="The job's join bundle (join.json, written by aimaster run --listen): etcd address and credentials.")
@etcd_options
@click.option("--lease-ttl", type=click.IntRange(2), default=DEFAULTS.lease_ttl, show_default=True)
@click.option("--log-max-bytes", type=click.IntRange(1024), default=DEFAULTS.log_max_bytes, show_default=True,
              help="Size at which a worker's stdout/stderr file is rotated.")
@click.option("--tee", is_flag=True, help="Also print workers' output on the console, prefixed with the worker id.")
@click.option("--quiet", is_flag=True)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def join(workers, job_id, etcd, etcd_user, etcd_password, etcd_ca, etcd_cert, etcd_key, state_dir, lease_ttl,
         log_max_bytes, tee, quiet, command, bundle=None) -> None:
    """Add workers on this machine to a running job (same etcd, same job id).

    aimaster join --bundle /nas/.aimaster/jobs/J/join.json -n 8 -- python infer.py

    aimaster join --etcd etcd-host:2379 --job-id J -n 8 -- python infer.py

    The workers follow the job's settings (hang detection, speculation, slice attempts); they are
    relaunched here if they fail, and may leave at any time (Ctrl-C): their slices go back to the pool.
    """
    command = _command(command)  # a COMMAND that does not exist is refused before etcd is asked anything
    cfg = etcd_config(etcd, etcd_user, etcd_password, etcd_ca, etcd_cert, etcd_key)
    if bundle:
        cfg, job_id = bundle_config(bundle, job_id, etcd, state_dir or default_root())
    if cfg is None:
        raise click.UsageError("join needs --bundle FILE (written by aimaster run --listen) or --etcd")
    if not job_id:
        raise click.UsageError("join needs --job-id (or --bundle)")
    job_id = keys.check_name("job id", job_id)
    store = connect(cfg, job_id)
    if store.get_value(keys.JOB) is None:
        raise JobError(f"no job {job_id} in etcd at {','.join(cfg.endpoints)}")
    opts = RunOptions(command=command, job_id=job_id, workers=workers, etcd=cfg,
                      state_root=state_dir or default_root(), lease_ttl=lease_ttl, progress=not quiet,
                      join_only=True, log_max_bytes=log_max_bytes, tee=tee)
    sys.exit(Master(opts).run())


@cli.command()
@click.option("--job-id", help="Job to show (default: the most recent one in the state directory).")
@etcd_options
@click.option("--bundle", type=click.Path(dir_okay=False), help="Show the job of this join bundle (join.json).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--failed", "failed_only", is_flag=True,
              help="List the failed slices: their items (files or row range) and last errors.")
@click.option("--watch", is_flag=True, help="Refresh until the job is Succeeded, Failed or Stopped.")
@click.option("--interval", type=click.FloatRange(0.1), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
def status(job_id, etcd, etcd_user, etcd_password, etcd_ca, etcd_cert, etcd_key, state_dir, as_json, failed_only,
           watch, interval, bundle=None) -> None:
    """Show a job: state, slices done / in flight / failed, and a per-worker table (host, pid,
    slices, rate, last commit, restarts). A job still starting shows as Pending."""
    import time

    from aimaster.master.status import format_failed, format_status, job_status

    cfg = etcd_config(etcd, etcd_user, etcd_password, etcd_ca, etcd_cert, etcd_key)
    root = state_dir or default_root()
    if bundle:
        cfg, job_id = bundle_config(bundle, job_id, etcd, root, keep=False)
    live = watch and sys.stdout.isatty() and not as_json
    while True:
        view = job_status(job_id, cfg, root)
        if as_json:
            text = json.dumps(view, indent=2, sort_keys=True)
        elif failed_only:
            text = format_failed(view)
        else:
            text = format_status(view)
        if live:
            click.echo("\x1b[H\x1b[2J" + text)  # redraw in place
        else:
            click.echo(text)
        if not watch or view["state"] in TERMINAL:
            return
        job_id = view["job_id"]
        if not live:
            click.echo("")
        time.sleep(interval)


@cli.command()
@click.option("--job-id", required=True, help="The job to stop.")
@etcd_options
def stop(job_id, etcd, etcd_user, etcd_password, etcd_ca, etcd_cert, etcd_key, state_dir) -> None:
    """Stop a running job cleanly, from any machine that reaches its etcd.

    The master stops its workers (SIGTERM, then SIGKILL after a grace period) and marks the job
    Stopped; committed slices stay committed, and running the job again with the same --job-id
    resumes it.
    """
    from aimaster.master.control import request_stop

    cfg = etcd_config(etcd, etcd_user, etcd_password, etcd_ca, etcd_cert, etcd_key)
    request_stop(keys.check_name("job id", job_id), cfg, state_dir or default_root())
    click.echo(f"aimaster: stop requested for job {job_id}; its master stops it within a few seconds", err=True)


@cli.command()
@click.option("--job-id", help="Job whose logs to show (default: the most recent one in the state directory).")
@click.option("--worker", metavar="W", help="Only this worker slot: 0, w0, or any worker id of it (w0-r2).")
@click.option("-f", "--follow", is_flag=True, help="Go on printing what the workers write until the run ends.")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="Root of job state directories (default: ./.aimaster or $AIMASTER_STATE_DIR).")
def logs(job_id, worker, follow, state_dir) -> None:
    """Show the workers' stdout and stderr, merged in time order.

    Each line is prefixed with its worker slot ([w0] stdout, [w0!] stderr) and the time it was
    written; a separator marks each relaunch. The logs are in the job's state directory, so this
    runs on the machine that ran the workers.
    """
    from aimaster.master.joblogs import show_logs
    from aimaster.master.status import latest_job

    root = state_dir or default_root()
    state = JobStateDir(root, keys.check_name("job id", job_id) if job_id else latest_job(root))
    show_logs(state, worker, follow, click.echo)


@cli.command()
@etcd_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def jobs(etcd, etcd_user, etcd_password, etcd_ca, etcd_cert, etcd_key, state_dir, as_json) -> None:
    """List jobs: those of an etcd (--etcd), or those of the state directory.

    A state directory's jobs show the state of their report when they have ended, else the live
    state from their embedded etcd.
    """
    from aimaster.master.control import jobs_in_state_dir, list_jobs

    cfg = etcd_config(etcd, etcd_user, etcd_password, etcd_ca, etcd_cert, etcd_key)
    if cfg is not None:
        rows = list_jobs(cfg)
    else:
        root = state_dir or default_root()
        rows = [_state_dir_job(root, job) for job in jobs_in_state_dir(root)]
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    if not rows:
        click.echo("no jobs")
        return
    click.echo(f"{'job':<32} {'state':<10} {'workers':>7}  created")
    for r in rows:
        created = r.get("created")
        when = (datetime.datetime.fromtimestamp(created).strftime("%Y-%m-%d %H:%M:%S")
                if isinstance(created, (int, float)) else "-")
        click.echo(f"{str(r['job_id'])[:32]:<32} {str(r.get('state'))[:10]:<10} {str(r.get('workers', '-')):>7}  "
                   f"{when}")


def _state_dir_job(root: str, job_id: str) -> dict:
    state = JobStateDir(root, job_id)
    report = state.read_json(state.report)
    endpoint = state.running_etcd()
    if endpoint is not None:
        try:
            store = connect(state.client_config(endpoint), job_id)
            try:
                record = store.get_value(keys.JOB) or {}
            finally:
                store.close()
            return {"job_id": job_id, "state": record.get("state", JobState.PENDING.value),
                    "created": record.get("created"), "workers": record.get("workers")}
        except AimasterError as e:
            return {"job_id": job_id, "state": "Unknown", "error": str(e)}
    if report:
        return {"job_id": job_id, "state": report.get("state"), "created": report.get("started")}
    return {"job_id": job_id, "state": "Unknown" if os.path.exists(state.etcd_dir) else JobState.PENDING.value}


@cli.command()
@click.option("-n", "--workers", type=click.IntRange(1), default=3, show_default=True)
@click.option("--files", "num_files", type=click.IntRange(1), default=600, show_default=True)
@click.option("--slice-size", type=click.IntRange(1), default=20, show_default=True)
@click.option("--dir", "workdir", type=click.Path(file_okay=False), help="Where to put the demo data.")
@click.option("--text", is_flag=True, help="Label text files instead of classifying images (the demo without torch).")
def demo(workers, num_files, slice_size, workdir, text) -> None:
    """Classify generated images with a CNN in a real job on an embedded etcd (text files without torch)."""
    from aimaster.demo import run_demo

    sys.exit(run_demo(workers, num_files, slice_size, workdir, text=text))


cli.add_command(retry.make_retry_command(run))
cli.add_command(engine_commands.k8s)  # aimaster k8s render/submit/status/delete
cli.add_command(engine_commands.slurm_group(run), "slurm")  # aimaster slurm script: run's options too


def _warm_spares(count: int, slow_multiplier: float, launcher) -> int:
    """``--warm-spares``, checked: spares only replace slow workers, and only a launcher that starts
    workers without a slot (local, no per-slot GPUs) can start one ahead."""
    if not count:
        return 0
    if not slow_multiplier:
        raise click.UsageError("--warm-spares only replace slow workers: it needs --slow-worker-multiplier > 0")
    if launcher is not None and not launcher.spares:
        raise click.UsageError(f"--warm-spares needs the local launcher without --gpus-per-worker "
                               f"(here: {launcher.describe()}): a spare is started before it knows its slot")
    return count


def _command(command) -> List[str]:
    command = command_args(command, " (e.g. aimaster run -n 2 -- python infer.py)")
    check_command(command)  # before any job is registered: a typo leaves nothing behind
    return command


def main(argv: Optional[List[str]] = None) -> None:
    try:
        cli.main(args=argv, prog_name="aimaster", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aimaster: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except AimasterError as e:
        click.echo(f"aimaster: error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("aimaster: interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    else:
        sys.exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
