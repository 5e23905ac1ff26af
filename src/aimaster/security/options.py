"""The command-line side of many-host jobs: ``run --listen/--advertise/--insecure`` and ``--bundle``
for ``join`` and ``status``, checked before anything starts (one line each, naming the thing)."""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile
from typing import Optional, Tuple

import click

from aimaster.data.store import EtcdConfig, retry_seconds_from_env
from aimaster.master.state_dir import JobStateDir
from aimaster.security import bundle as bundle_mod
from aimaster.security import listen as listen_mod


def listen_option(listen: Optional[str], advertise: Optional[str], insecure: bool, etcd: Optional[str],
                  state: Optional[JobStateDir] = None) -> Optional[listen_mod.Listen]:
    """``aimaster run``'s listen settings, or None (loopback only)."""
    if not listen:
        if advertise or insecure:
            raise click.UsageError("--advertise and --insecure go with --listen")
        return None
    if etcd:
        raise click.UsageError("--listen is for the job's embedded etcd; with --etcd, the cluster's own "
                               "addresses are what other hosts use")
    spec = listen_mod.parse(listen, advertise, insecure)
    if insecure and state is not None and state.security().secure:
        raise click.UsageError(f"job {state.job_id} was set up with TLS and authentication; --insecure cannot serve "
                               f"its etcd in plain text (use a new --job-id)")
    listen_mod.check_bindable(spec.host, 0)  # an address this host does not have: one line now
    if insecure:
        click.echo(f"aimaster: warning: --insecure: the job's etcd serves {spec.host} in plain text without "
                   f"authentication; anyone who reaches it can read and change the job", err=True)
    return spec


def bundle_config(path: str, job_id: Optional[str], etcd: Optional[str], state_root: str, keep: bool = True
                  ) -> Tuple[EtcdConfig, str]:
    """(client config, job id) from ``--bundle``. Its TLS material is written (0600) to this host's
    state directory of the job (``keep``: ``aimaster join``, whose workers read it from there), or to
    a private temporary directory removed at exit (``aimaster status``)."""
    if etcd:
        raise click.UsageError("--bundle names the job's etcd and credentials; leave out --etcd and the TLS options")
    found = bundle_mod.load(path, job_id)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and not found.insecure:
        click.echo(f"aimaster: warning: join bundle {path} holds a worker key and is readable by others "
                   f"(mode {stat.S_IMODE(mode):o}); chmod 600 it", err=True)
    if keep:
        directory = os.path.join(JobStateDir(state_root, found.job_id).path, "tls")
    else:
        directory = tempfile.mkdtemp(prefix="aimaster-bundle-")
        atexit.register(shutil.rmtree, directory, True)
    cfg = found.etcd_config(directory, retry_seconds=retry_seconds_from_env())
    if keep and not found.insecure:
        click.echo(f"aimaster: joining job {found.job_id} at {','.join(found.endpoints)}; its TLS material is in "
                   f"{directory}", err=True)
    return cfg, found.job_id
