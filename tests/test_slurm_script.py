"""``aimaster slurm script``: the batch script's directives, its ``aimaster run`` line (every run
option given, rendered back, and nothing else), and ``bash -n`` accepts it. Running it with
``sbatch --wait`` on a real Slurm cluster comes with the Slurm launcher."""

from __future__ import annotations

import shlex
import subprocess

import click
from helpers import run_aimaster

from aimaster.cli import run as run_command


def _script(*args: str) -> str:
    r = run_aimaster("slurm", "script", *args, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _run_line(script: str) -> list:
    (line,) = [x for x in script.splitlines() if x.startswith("exec ")]
    return shlex.split(line)[1:]


def test_the_script_asks_for_the_allocation_and_runs_the_slurm_launcher(tmp_path):
    script = _script("-n", "4", "--job-id", "nightly", "--nodes", "2", "--cpus-per-worker", "6", "--gpus-per-worker",
                     "1", "--time", "4:00:00", "--partition", "gpu", "--signal-seconds", "300", "--lease-ttl", "20",
                     "--no-speculation", "--tee", "--state-dir", "/nas/state", "--", "python", "infer.py", "--x", "a b")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert [x for x in lines if x.startswith("#SBATCH")] == [
        "#SBATCH --job-name=aimaster-nightly", "#SBATCH --ntasks=4", "#SBATCH --nodes=2", "#SBATCH --cpus-per-task=6",
        "#SBATCH --gpus-per-task=1", "#SBATCH --time=4:00:00", "#SBATCH --partition=gpu", "#SBATCH --requeue",
        "#SBATCH --signal=B:TERM@300"]
    # sbatch reads directives only before the first command
    first_command = next(i for i, x in enumerate(lines) if x and not x.startswith("#"))
    assert all(i < first_command for i, x in enumerate(lines) if x.startswith("#SBATCH"))
    assert _run_line(script) == ["aimaster", "run", "--launcher", "slurm", "--job-id", "nightly", "--state-dir",
                                 "/nas/state", "--lease-ttl", "20", "--no-speculation", "--tee",
                                 "--cpus-per-worker", "6", "--gpus-per-worker", "1", "--", "python",
                                 "infer.py", "--x", "a b"]
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)


def test_the_run_line_parses_as_aimaster_run():
    """The line is one ``aimaster run`` accepts, every option with the value given to the script."""
    args = _run_line(_script("-n", "2", "--job-id", "j", "--max-slice-attempts", "7", "--slice-timeout", "30",
                             "--speculation", "--gpus-per-worker", "2", "--", "python", "x.py"))
    assert args[:2] == ["aimaster", "run"]
    ctx = run_command.make_context("run", args[2:])
    assert ctx.params["launcher"] == "slurm" and ctx.params["job_id"] == "j"
    assert ctx.params["max_slice_attempts"] == 7 and ctx.params["slice_timeout"] == 30
    assert ctx.params["gpus_per_worker"] == 2 and ctx.params["command"] == ("python", "x.py")


def test_a_job_id_is_fixed_in_the_script_when_none_is_given():
    script = _script("-n", "2", "--", "python", "x.py")
    (name,) = [x for x in script.splitlines() if x.startswith("#SBATCH --job-name=")]
    job_id = name.split("=", 1)[1][len("aimaster-"):]
    args = _run_line(script)
    assert args[args.index("--job-id") + 1] == job_id and job_id.startswith("job-")


def test_bad_input_is_refused():
    for args, says in ((["--", "python", "x.py"], "Missing option '-n'"),
                       (["-n", "2", "--lease-ttl", "1", "--", "python", "x.py"], "Invalid value for '--lease-ttl'"),
                       (["-n", "2", "--time", "4 h", "--", "python", "x.py"], "has spaces"),
                       (["-n", "2", "--etcd-password", "s3cret", "--", "python", "x.py"], "No such option"),
                       (["-n", "2"], "missing COMMAND")):
        r = run_aimaster("slurm", "script", *args, timeout=60)
        assert r.returncode == 2 and r.stdout == "", (args, r.stdout)
        assert says in r.stderr.splitlines()[-1] and "Traceback" not in r.stderr, (args, r.stderr)


def test_the_options_taken_over_from_run_are_run_s():
    from aimaster.cli import cli

    script = cli.commands["slurm"].commands["script"]
    own = {"workers", "job_id", "nodes", "cpus_per_worker", "gpus_per_worker", "time", "partition", "account",
           "output", "signal_seconds"}
    taken = {p.name for p in script.params if isinstance(p, click.Option)} - own
    # --launcher is the script's own (slurm); a password is never written into the script
    assert taken == {p.name for p in run_command.params if isinstance(p, click.Option)} - own - {
        "etcd_password", "launcher"}
