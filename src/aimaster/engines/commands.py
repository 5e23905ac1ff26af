"""The ``aimaster k8s`` and ``aimaster slurm`` command groups (registered by :mod:`aimaster.cli`)."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import click
from click.core import ParameterSource

from aimaster.data import keys
from aimaster.engines import k8s_manifests as manifests
from aimaster.engines import slurm_script
from aimaster.job_ids import new_job_id
from aimaster.master.commandline import command_args

_COMMAND = {"allow_interspersed_args": False}


class BadInput(click.ClickException):
    """A usage error in one line (no usage text): what is missing or wrong, and how to give it."""

    exit_code = 2


def _command(command) -> List[str]:
    return command_args(command, ", the workers' program (e.g. -- python infer.py)")


def _checked(check, value):
    if value is None:
        return None
    try:
        return check(value)
    except ValueError as e:
        raise click.BadParameter(str(e))


def _k8s_job_id(value: Optional[str]) -> str:
    if not value:
        raise BadInput("--job-id is needed: it names the job's Kubernetes objects (e.g. --job-id nightly)")
    keys.check_name("job id", value)
    try:
        return manifests.check_dns_label("--job-id", value, manifests.MAX_JOB_ID)
    except ValueError as e:
        raise BadInput(str(e))


def _namespace_option(f):
    return click.option("--namespace", default="default", show_default=True, help="The Kubernetes namespace.",
                        callback=lambda c, p, v: _checked(lambda x: manifests.check_dns_label("--namespace", x), v))(f)


def _kube_options(f):
    f = click.option("--context", help="kubeconfig context (default: the current one).")(f)
    return click.option("--kubeconfig", type=click.Path(dir_okay=False),
                        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the pod's service account).")(f)


def _apis(kubeconfig, context):
    from aimaster.engines.k8s_client import Apis, api_client

    return Apis.of(api_client(kubeconfig, context))


@click.group()
def k8s() -> None:
    """Run a job on Kubernetes: a master Job with the embedded etcd, an Indexed Job of workers.

    aimaster k8s render --image IMAGE -n 8 --job-id nightly -- python infer.py > job.yaml

    aimaster k8s submit -f job.yaml; aimaster k8s status --job-id nightly; aimaster k8s delete --job-id nightly
    """


@k8s.command(context_settings=_COMMAND)
@click.option("--image", help="Container image with aimaster and the workers' program (required).")
@click.option("-n", "--workers", type=click.IntRange(1), default=1, show_default=True, help="Worker pods.")
@click.option("--job-id", help="The job id (required): names the objects, a Kubernetes name of at most 40 characters.")
@_namespace_option
@click.option("--gpus-per-worker", type=click.IntRange(0), default=0, show_default=True,
              help="nvidia.com/gpu limit of each worker pod.")
@click.option("--cpu", callback=lambda c, p, v: _checked(manifests.check_cpu, v),
              help="CPU request and limit of each worker pod (2, 0.5, 500m).")
@click.option("--memory", callback=lambda c, p, v: _checked(manifests.check_memory, v),
              help="Memory request and limit of each worker pod (8Gi, 512Mi).")
@click.option("--mount", "mounts", multiple=True, metavar="CLAIM:PATH",
              callback=lambda c, p, v: [_checked(manifests.check_mount, m) for m in v],
              help="Mount an existing PersistentVolumeClaim (the input and output data) at PATH in the master and "
                   "every worker; repeatable.")
@click.option("--state-size", default="1Gi", show_default=True,
              callback=lambda c, p, v: _checked(manifests.check_memory, v),
              help="Size of the job's state volume (its etcd data).")
@click.option("--storage-class", help="StorageClass of the state volume (default: the cluster's default).")
@click.option("--retries-per-worker", type=click.IntRange(0), default=3, show_default=True,
              help="backoffLimitPerIndex: failed pods replaced per worker index (disruptions are not counted).")
@click.option("--port", type=click.IntRange(1, 65535), default=2379, show_default=True, help="The etcd port.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def render(image, workers, job_id, namespace, gpus_per_worker, cpu, memory, mounts, state_size, storage_class,
           retries_per_worker, port, command) -> None:
    """Print the job's manifests (YAML): state volume, Secrets, etcd Service, master Job, workers Job.

    Each render makes a new CA and join bundle: keep the output to submit it.
    """
    from aimaster.engines.k8s_tls import make_job_tls

    if not image:
        raise BadInput("k8s render needs --image IMAGE: the container image with aimaster and your program")
    job = manifests.K8sJob(job_id=_k8s_job_id(job_id), image=image, workers=workers, command=_command(command),
                           namespace=namespace, gpus_per_worker=gpus_per_worker, cpu=cpu, memory=memory,
                           state_size=state_size, storage_class=storage_class, mounts=list(mounts),
                           retries_per_worker=retries_per_worker, port=port)
    try:
        import yaml  # noqa: F401
    except ImportError:
        raise click.ClickException("aimaster k8s render needs PyYAML: pip install 'aimaster[k8s]'")
    tls = make_job_tls(job.job_id, job.names()["service"], job.namespace, job.port)
    click.echo(manifests.to_yaml(manifests.render(job, tls)), nl=False)


@k8s.command()
@click.option("-f", "--file", "path", required=True, type=click.File("r"),
              help="The output of aimaster k8s render ('-': standard input).")
@_kube_options
def submit(path, kubeconfig, context) -> None:
    """Create the job's objects; if any already exists, create none and name them."""
    import yaml

    from aimaster.engines.k8s_client import check_manifests
    from aimaster.engines.k8s_client import submit as submit_docs

    source = getattr(path, "name", "manifests")
    try:
        docs = list(yaml.safe_load_all(path))
    except yaml.YAMLError as e:
        raise click.ClickException(f"{source} is not YAML: {str(e).splitlines()[0]}")
    docs = check_manifests(docs, source)
    for ref in submit_docs(_apis(kubeconfig, context), docs):
        click.echo(f"created {ref}")


@k8s.command()
@click.option("--job-id", required=True, help="The job.")
@_namespace_option
@_kube_options
@click.option("--bundle", type=click.Path(dir_okay=False),
              help="The job's join bundle (from its -join Secret): also show aimaster's own status, if its etcd "
                   "Service is reachable from here.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(job_id, namespace, kubeconfig, context, bundle, as_json) -> None:
    """The Jobs' and pods' state, and with --bundle aimaster's view of the job."""
    from aimaster.engines.k8s_client import format_status
    from aimaster.engines.k8s_client import status as k8s_status
    from aimaster.errors import AimasterError

    job_id = _k8s_job_id(job_id)
    view = k8s_status(_apis(kubeconfig, context), job_id, namespace)
    if bundle:
        from aimaster.master.state_dir import default_root
        from aimaster.master.status import job_status
        from aimaster.security.options import bundle_config

        try:
            cfg, _ = bundle_config(bundle, job_id, None, default_root(), keep=False)
            view["aimaster"] = job_status(job_id, cfg, default_root())
        except AimasterError as e:
            view["aimaster"] = {"unreachable": str(e)}
    if as_json:
        click.echo(json.dumps(view, indent=2, sort_keys=True, default=str))
        return
    click.echo(format_status(view))
    ours = view.get("aimaster")
    if ours is None:
        click.echo("  aimaster status: give --bundle (the job's -join Secret) where its etcd Service is reachable")
    elif "unreachable" in ours:
        click.echo(f"  aimaster status: unreachable: {ours['unreachable']}")
    else:
        from aimaster.master.status import format_status as aimaster_format

        click.echo(aimaster_format(ours))


@k8s.command()
@click.option("--job-id", required=True, help="The job.")
@_namespace_option
@_kube_options
@click.option("--purge", is_flag=True, help="Also delete the state volume (the job's etcd data: no resume).")
def delete(job_id, namespace, kubeconfig, context, purge) -> None:
    """Delete the job's Jobs (and their pods), Service and Secrets; the state volume with --purge."""
    from aimaster.engines.k8s_client import delete as delete_objects

    for line in delete_objects(_apis(kubeconfig, context), _k8s_job_id(job_id), namespace, purge):
        click.echo(line)


@k8s.command(hidden=True)
@click.option("--job-id", required=True)
@click.option("--state-dir", required=True, type=click.Path(file_okay=False))
def ready(job_id, state_dir) -> None:
    """The master pod's readiness probe: exit 0 once its etcd runs and holds the job's record."""
    from aimaster.engines.k8s_ready import not_ready

    reason = not_ready(state_dir, job_id)
    if reason is not None:
        click.echo(f"not ready: {reason}", err=True)
        sys.exit(1)


# ---------------------------------------------------------------------------- slurm
_SBATCH_OWN = {"workers", "job_id", "nodes", "cpus_per_worker", "gpus_per_worker", "time", "partition", "account",
               "output", "signal_seconds", "command", "launcher",
               "etcd_password"}  # a password written into a script file: no; AIMASTER_ETCD_PASSWORD is read at run time


def _run_params(run: click.Command) -> List[click.Option]:
    """``aimaster run``'s options, taken over by ``slurm script`` (minus those the allocation sets)."""
    return [p for p in run.params if p.name not in _SBATCH_OWN and isinstance(p, click.Option)]


def _run_args(ctx: click.Context, params: List[click.Option]) -> List[str]:
    """The run options given on the command line, rendered back as arguments (defaults left out)."""
    out: List[str] = []
    for p in params:
        if ctx.get_parameter_source(p.name) != ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[p.name]
        flag = max(p.opts, key=len)
        if p.is_flag:
            if p.secondary_opts:  # --x/--no-x
                out.append(flag if value else max(p.secondary_opts, key=len))
            elif value:
                out.append(flag)
        elif p.multiple:
            for v in value:
                out += [flag, str(v)]
        elif value is not None:
            out += [flag, str(value)]
    return out


def slurm_group(run: click.Command) -> click.Group:
    """``aimaster slurm``, whose ``script`` takes every option of ``run`` (the command given)."""

    @click.group()
    def slurm() -> None:
        """Run a job in a Slurm allocation (see docs/engines.md)."""

    slurm.add_command(_slurm_script_command(run))
    return slurm


def _slurm_script_command(run: click.Command) -> click.Command:
    run_params = _run_params(run)

    @click.command("script", context_settings=_COMMAND)
    @click.option("-n", "--workers", type=click.IntRange(1), required=True, help="Workers: the allocation's tasks.")
    @click.option("--job-id", help="The job id (default: a new one, fixed in the script so that a requeue resumes).")
    @click.option("--nodes", help="#SBATCH --nodes (N or MIN-MAX).")
    @click.option("--cpus-per-worker", type=click.IntRange(1), help="#SBATCH --cpus-per-task.")
    @click.option("--gpus-per-worker", type=click.IntRange(1), help="#SBATCH --gpus-per-task.")
    @click.option("--time", help="#SBATCH --time (the time limit, e.g. 4:00:00).")
    @click.option("--partition", help="#SBATCH --partition.")
    @click.option("--account", help="#SBATCH --account.")
    @click.option("--output", help="#SBATCH --output (default: Slurm's slurm-%j.out).")
    @click.option("--signal-seconds", type=click.IntRange(1, 65535), default=120, show_default=True,
                  help="SIGTERM this many seconds before the time limit: workers give their slices back.")
    @click.argument("command", nargs=-1, type=click.UNPROCESSED)
    @click.pass_context
    def script(ctx, workers, job_id, nodes, cpus_per_worker, gpus_per_worker, time, partition, account, output,
               signal_seconds, command, **_run_options) -> None:
        """Print a batch script that runs COMMAND as a job: aimaster slurm script -n 8 -- python infer.py > job.sbatch

        Any option of aimaster run may be given too; it goes on the script's aimaster run line.
        """
        for text, what in ((nodes, "--nodes"), (time, "--time"), (partition, "--partition"),
                           (account, "--account"), (output, "--output")):
            if text is not None and (not text.strip() or any(c.isspace() for c in text)):
                raise click.BadParameter(f"{text!r} has spaces or is empty", param_hint=what)
        job_id = keys.check_name("job id", job_id) if job_id else new_job_id()
        sbatch = slurm_script.Sbatch(job_id=job_id, tasks=workers, nodes=nodes, cpus_per_task=cpus_per_worker,
                                     gpus_per_task=gpus_per_worker, time=time, partition=partition,
                                     account=account, output=output, signal_seconds=signal_seconds)
        run_args = _run_args(ctx, run_params)
        for flag, value in (("--cpus-per-worker", cpus_per_worker), ("--gpus-per-worker", gpus_per_worker)):
            if value is not None:  # each srun step asks for what each task of the allocation has
                run_args += [flag, str(value)]
        sys.stdout.write(slurm_script.render(sbatch, run_args, _command(command)))

    script.params[-1:-1] = run_params  # run's options, before COMMAND
    return script
