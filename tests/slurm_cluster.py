"""A real one-node Slurm cluster for tests: munge, slurmctld and slurmd, torn down afterwards.

Debian's ``slurm-wlm`` and ``munge`` (installed by ``.ci/run``); the configuration is the one
verified on this machine: ``SlurmUser=root``, ``proctrack/linuxproc``, ``task/none``,
``select/cons_tres`` and a partition with ``OverSubscribe=FORCE:8``, its state, spool and logs in a
temporary directory and its ports picked free, pointed at by ``$SLURM_CONF``. Skipped, with the
reason, where the daemons are not installed or we are not root (slurmd must start job steps as any
user). Every daemon the fixture started is stopped at the end, also when the test failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, List

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_works() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        return cred.returncode == 0 and subprocess.run(["unmunge"], input=cred.stdout, capture_output=True,
                                                       timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _start_munge(started: List[int]) -> None:
    if _munge_works():
        return  # a munged of the machine's own: use it, leave it running
    key = "/etc/munge/munge.key"
    if not os.path.exists(key):
        os.makedirs("/etc/munge", exist_ok=True)
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
    for path in ("/etc/munge", "/var/lib/munge", "/var/log/munge", "/run/munge"):
        os.makedirs(path, exist_ok=True)
        shutil.chown(path, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    os.chmod(key, 0o400)
    subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force"], check=True, timeout=30)
    deadline = time.monotonic() + 30
    while not _munge_works():
        if time.monotonic() > deadline:
            raise RuntimeError("munged did not start")
        time.sleep(0.2)
    with open("/run/munge/munged.pid") as f:
        started.append(int(f.read().strip()))


def _config(d: str, host: str) -> str:
    cpus = os.cpu_count() or 2
    return "\n".join([
        "ClusterName=aimastertest", f"SlurmctldHost={host}", "SlurmUser=root", "AuthType=auth/munge",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU", "MpiDefault=none", "ReturnToService=2",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        f"StateSaveLocation={d}/state", f"SlurmdSpoolDir={d}/spool",
        f"SlurmctldPidFile={d}/slurmctld.pid", f"SlurmdPidFile={d}/slurmd.pid",
        f"SlurmctldLogFile={d}/slurmctld.log", f"SlurmdLogFile={d}/slurmd.log",
        "SlurmctldTimeout=30", "SlurmdTimeout=30", "InactiveLimit=0", "KillWait=5",
        f"NodeName={host} CPUs={cpus} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8",
    ]) + "\n"


def _stop(pid_file: str) -> None:
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return
    _kill(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Dict[str, str]:
    """The environment (``SLURM_CONF``) under which salloc/sbatch/srun talk to a fresh one-node cluster."""
    missing = [exe for exe in ("slurmctld", "slurmd", "munged", "salloc") if shutil.which(exe) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} not found): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("a test Slurm cluster needs root (slurmd starts job steps as their user)")
    d = str(tmp_path_factory.mktemp("slurm"))
    for sub in ("state", "spool"):
        os.makedirs(os.path.join(d, sub))
    host = socket.gethostname().split(".")[0]
    conf = os.path.join(d, "slurm.conf")
    with open(conf, "w") as f:
        f.write(_config(d, host))
    env = dict(os.environ, SLURM_CONF=conf)
    for k in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        env.pop(k)  # we may ourselves run inside some allocation: the test's cluster is another
    munged: List[int] = []
    try:
        _start_munge(munged)
        subprocess.run(["slurmctld", "-i"], env=env, check=True, timeout=60)
        subprocess.run(["slurmd"], env=env, check=True, timeout=60)
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True,
                                   timeout=30).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            logs = "".join(open(os.path.join(d, n)).read()[-2000:] for n in ("slurmctld.log", "slurmd.log")
                           if os.path.exists(os.path.join(d, n)))
            raise RuntimeError(f"the test Slurm node did not become idle (sinfo: {state!r}):\n{logs}")
        yield env
    finally:
        subprocess.run(["scancel", "--full", "--user=root"], env=env, capture_output=True, timeout=30)
        _stop(os.path.join(d, "slurmd.pid"))
        _stop(os.path.join(d, "slurmctld.pid"))
        for pid in munged:
            _kill(pid)
