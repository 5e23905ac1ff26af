"""The rendered pods' commands, run for real: the nearest this machine comes to a cluster.

One network namespace stands in for the cluster network: its own loopback, and (through
``ip netns exec``'s ``/etc/netns/NAME/hosts``) the etcd Service's DNS name resolving to it. The
master's init container script installs the master Secret's files, the master container's command
and environment run as rendered (only the state volume's path moved under tmp_path), and two
"worker pods" run their rendered ``aimaster join --bundle`` with the join Secret's bundle. So the
TLS material made at render time is what the master serves and what the workers are let in with,
and the job is done exactly once, also when the master pod is evicted mid-job and replaced.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
from helpers import assert_exactly_once, clean_env, make_files, program, run_aimaster, wait_for

yaml = pytest.importorskip("yaml")

from aimaster.engines import k8s_manifests as m  # noqa: E402


def _cannot() -> str:
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    return ""


pytestmark = pytest.mark.skipif(bool(_cannot()), reason=_cannot() or "ok")


@pytest.fixture
def cluster_net():
    """A network namespace whose /etc/hosts names the job's etcd Service."""
    ns = f"aimk8s{os.getpid() % 10000}{random.randint(0, 99)}"
    etc = f"/etc/netns/{ns}"
    os.makedirs(etc)
    with open(f"{etc}/hosts", "w") as f:
        f.write("127.0.0.1 localhost\n127.0.0.1 aimaster-kjob-etcd.ml.svc\n")
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, text=True, timeout=30)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30)
    except subprocess.CalledProcessError as e:
        shutil.rmtree(etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        pytest.skip(f"cannot create a network namespace here: {e.stderr}")
    yield ns
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    shutil.rmtree(etc, ignore_errors=True)


def _pod_env(container: dict, moves: dict) -> dict:
    env = {}
    for e in container.get("env", []):
        value = e["value"]
        for old, new in moves.items():
            value = value.replace(old, new)
        env[e["name"]] = value
    env["AIMASTER_ETCD_RETRY_SECONDS"] = "60"  # a broken run fails within the test's limits
    return clean_env(env)


def _argv(command: list, moves: dict) -> list:
    assert command[0] == "aimaster"
    out = [sys.executable, "-m", "aimaster.cli"]
    for arg in command[1:]:
        for old, new in moves.items():
            arg = arg.replace(old, new)
        out.append(arg)
    return out


class RenderedJob:
    """The objects of one ``aimaster k8s render``, run as their pods would run them, in ``ns``."""

    def __init__(self, tmp_path, ns: str, inp, out, env=None):
        self.tmp, self.ns, self.env = tmp_path, ns, env or {}
        self.secret_dir, self.state = tmp_path / "master-tls", tmp_path / "state"
        self.secret_dir.mkdir()
        self.moves = {m.STATE_DIR: str(self.state)}
        self.command = ["--", sys.executable, program("file_worker.py"), str(inp), str(out), "10"]
        self.procs = []
        self.render()

    def render(self) -> None:
        """A new render (a new CA); its master Secret becomes the master's Secret volume."""
        r = run_aimaster("k8s", "render", "--image", "i", "-n", "2", "--job-id", "kjob", "--namespace", "ml",
                         *self.command, timeout=120)
        assert r.returncode == 0, r.stderr
        self.docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(r.stdout)}
        self.secret = {k: base64.b64decode(v) for k, v in self.docs["aimaster-kjob-master-tls"]["data"].items()}
        self.bundle = base64.b64decode(self.docs["aimaster-kjob-join"]["data"]["join.json"])
        for name, data in self.secret.items():
            path = self.secret_dir / name
            if path.exists():
                os.chmod(path, 0o600)
            path.write_bytes(data)
            os.chmod(path, 0o400)
        self.master_pod = self.docs["aimaster-kjob-master"]["spec"]["template"]["spec"]
        self.master = self.master_pod["containers"][0]

    def _env(self, container, moves) -> dict:
        return {**_pod_env(container, moves), **self.env}

    def _popen(self, argv, env, log_path) -> subprocess.Popen:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start_master(self, name: str = "master") -> subprocess.Popen:
        """The master pod: its init container, then its container."""
        script = self.master_pod["initContainers"][0]["command"][2]
        subprocess.run(["sh", "-c", script.replace(m.STATE_DIR, str(self.state)).replace(
            m.MASTER_TLS_DIR, str(self.secret_dir))], check=True, timeout=60)
        return self._popen(_argv(self.master["command"], self.moves), self._env(self.master, self.moves),
                           self.tmp / f"{name}.log")

    def ready(self) -> bool:
        probe = _argv(self.master["readinessProbe"]["exec"]["command"], self.moves)
        return subprocess.run(["ip", "netns", "exec", self.ns, *probe], env=self._env(self.master, self.moves),
                              capture_output=True, timeout=120).returncode == 0

    def wait_ready(self, master: subprocess.Popen, name: str = "master") -> None:
        """As the Service does: workers reach the master once it is ready (its etcd holds the job)."""
        wait_for(lambda: self.ready() or master.poll() is not None, timeout=120, interval=0.5, what="ready master")
        assert master.poll() is None, self.log(name)

    def start_worker(self, index: int) -> subprocess.Popen:
        pod = self.tmp / f"worker-{index}"
        (pod / "join").mkdir(parents=True)
        (pod / "join" / "join.json").write_bytes(self.bundle)
        os.chmod(pod / "join" / "join.json", 0o400)
        worker = self.docs["aimaster-kjob-workers"]["spec"]["template"]["spec"]["containers"][0]
        moves = {m.STATE_DIR: str(pod / "state"), m.JOIN_DIR: str(pod / "join")}
        return self._popen(_argv(worker["command"], moves), self._env(worker, moves), self.tmp / f"worker-{index}.log")

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()[-4000:]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


@pytest.fixture
def rendered(tmp_path, cluster_net):
    jobs = []

    def make(inp, out, env=None) -> RenderedJob:
        jobs.append(RenderedJob(tmp_path, cluster_net, inp, out, env))
        return jobs[-1]

    yield make
    for job in jobs:
        job.close()


def test_the_rendered_master_and_workers_run_a_job(tmp_path, rendered):
    inp, out = tmp_path / "data" / "in", tmp_path / "data" / "out"
    inputs = make_files(str(inp), 120)
    job = rendered(inp, out)
    assert not job.ready()  # no etcd yet: the Service would route no worker here
    master = job.start_master()
    job.wait_ready(master)
    workers = [job.start_worker(i) for i in range(2)]
    for i, proc in enumerate(workers):
        assert proc.wait(timeout=240) == 0, job.log(f"worker-{i}")
    assert master.wait(timeout=240) == 0, job.log("master")
    assert "Succeeded" in job.log("master")
    assert_exactly_once(str(out), inputs)
    # The master served the render's CA: its security directory still holds the Secret's files.
    for name in ("ca.pem", "server.pem", "worker.pem"):
        assert (job.state / "jobs" / "kjob" / "security" / name).read_bytes() == job.secret[name]
    # Both worker pods joined through the Service's name.
    for i in range(2):
        assert "joining job kjob at aimaster-kjob-etcd.ml.svc:2379" in job.log(f"worker-{i}")

    # Deleted and submitted again from a new render (a new CA) on the kept state volume: the master
    # serves the job's existing etcd data with the new material and reads that the job is done.
    old_ca = job.secret["ca.pem"]
    job.render()
    assert job.secret["ca.pem"] != old_ca
    again = job.start_master("master-again")
    assert again.wait(timeout=240) == 0, job.log("master-again")
    assert "job kjob already succeeded; nothing to do" in job.log("master-again")  # read from its etcd
    assert_exactly_once(str(out), inputs)


def test_an_evicted_master_is_replaced_and_the_job_goes_on(tmp_path, rendered):
    """The master pod gets SIGTERM mid-job (an eviction: the DisruptionTarget rule replaces it); its
    replacement, on the same state volume, resumes the job; the workers wait it out and finish."""
    inp, out = tmp_path / "data" / "in", tmp_path / "data" / "out"
    inputs = make_files(str(inp), 200)
    job = rendered(inp, out, env={"FILE_SLEEP": "0.05"})
    master = job.start_master()
    job.wait_ready(master)
    workers = [job.start_worker(i) for i in range(2)]
    wait_for(lambda: len(list(out.rglob("*.txt"))) >= 3 or any(w.poll() is not None for w in workers),
             timeout=120, what="first commits")
    assert all(w.poll() is None for w in workers), "a worker ended before the master was evicted"
    master.send_signal(signal.SIGTERM)
    assert master.wait(timeout=120) == 130, job.log("master")  # Stopped: what the Ignore rule replaces
    replacement = job.start_master("replacement")
    for i, proc in enumerate(workers):
        assert proc.wait(timeout=240) == 0, job.log(f"worker-{i}")
    assert replacement.wait(timeout=240) == 0, job.log("replacement")
    assert "Succeeded" in job.log("replacement")
    assert_exactly_once(str(out), inputs)
