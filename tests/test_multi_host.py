"""Two hosts as Linux network namespaces joined by a veth pair, one job over a shared directory.

Host A runs ``aimaster run --listen <A's address>`` (TLS, client certificates, authentication);
host B joins with nothing but A's join bundle. B's link is cut for longer than the lease TTL in
the middle of the job, then restored: B's lost claims must not be committed from B, B carries on,
and every input ends up in exactly one committed output.

Needs root (network namespaces); skipped with that reason otherwise. The namespaces and the veth
pair are made and removed by the test.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time

import pytest
from helpers import assert_exactly_once, clean_env, make_files, program, wait_for

LEASE_TTL = 3


def _can_make_namespaces() -> str:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    return ""


pytestmark = pytest.mark.skipif(bool(_can_make_namespaces()), reason=_can_make_namespaces() or "ok")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_hosts():
    """(ns A, ns B, A's address, B's link name): two network stacks with a veth pair between them."""
    tag = f"{os.getpid() % 10000}{random.randint(0, 99)}"
    ns_a, ns_b, veth_a, veth_b = f"aimA{tag}", f"aimB{tag}", f"va{tag}", f"vb{tag}"
    net = f"10.{random.randint(100, 250)}.{random.randint(0, 250)}"
    try:
        _ip("netns", "add", ns_a)
        _ip("netns", "add", ns_b)
        _ip("link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
        _ip("link", "set", veth_a, "netns", ns_a)
        _ip("link", "set", veth_b, "netns", ns_b)
        for ns, dev, addr in ((ns_a, veth_a, f"{net}.1"), (ns_b, veth_b, f"{net}.2")):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as e:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"cannot create network namespaces here: {e.stderr.strip()}")
    yield ns_a, ns_b, f"{net}.1", veth_b
    for ns in (ns_a, ns_b):  # deleting a namespace deletes its end of the veth pair, hence the pair
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _in_ns(ns: str, *args: str):
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "aimaster.cli", *args]


def _ended(proc: subprocess.Popen, output) -> str:
    """What a host printed (its output goes to a file: a pipe nobody reads would block it)."""
    return f"exit {proc.poll()}; output:\n{output.read_text()[-6000:]}"


@pytest.mark.slow  # about 30-45 s: the job must outlast a partition of 2 x TTL + 3 s
def test_two_hosts_partition_longer_than_the_lease_loses_nothing(tmp_path, two_hosts):
    ns_a, ns_b, addr_a, link_b = two_hosts
    inp, out = tmp_path / "nas" / "in", tmp_path / "nas" / "out"
    log_a, log_b = tmp_path / "log-a", tmp_path / "log-b"
    log_a.mkdir()
    log_b.mkdir()
    inputs = make_files(str(inp), 480)
    worker = [sys.executable, program("file_worker.py"), str(inp), str(out), "4"]
    base = {"FILE_SLEEP": "0.1", "AIMASTER_ETCD_RETRY_SECONDS": "60"}
    state_a, state_b = tmp_path / "host-a", tmp_path / "host-b"
    host_a = subprocess.Popen(
        _in_ns(ns_a, "run", "-n", "1", "--job-id", "mh", "--state-dir", str(state_a), "--listen", addr_a,
               "--lease-ttl", str(LEASE_TTL), "--quiet", "--", *worker),
        env=clean_env({**base, "PROCESS_LOG": str(log_a)}), stdout=open(tmp_path / "a.out", "w"),
        stderr=subprocess.STDOUT)
    host_b = None
    try:
        bundle = state_a / "jobs" / "mh" / "join.json"
        wait_for(lambda: bundle.exists() or host_a.poll() is not None, 60, what="A's join bundle")
        assert host_a.poll() is None, _ended(host_a, tmp_path / "a.out")
        assert oct(bundle.stat().st_mode & 0o777) == "0o600"
        endpoint = json.loads(bundle.read_text())["endpoints"][0]
        assert endpoint.startswith(addr_a + ":")
        host_b = subprocess.Popen(
            _in_ns(ns_b, "join", "--bundle", str(bundle), "-n", "2", "--state-dir", str(state_b),
                   "--lease-ttl", str(LEASE_TTL), "--quiet", "--", *worker),
            env=clean_env({**base, "PROCESS_LOG": str(log_b)}), stdout=open(tmp_path / "b.out", "w"),
            stderr=subprocess.STDOUT)

        def started_by_b():
            return sum(len(p.read_text().splitlines()) for p in log_b.iterdir())

        wait_for(lambda: started_by_b() >= 3 or host_b.poll() is not None, 90, what="B processing slices")
        assert host_b.poll() is None, _ended(host_b, tmp_path / "b.out")
        assert len(list(out.glob("*.txt"))) < 100, "the job ended before the partition could be tested"
        _ip("-n", ns_b, "link", "set", link_b, "down")
        cut = time.monotonic()
        wait_for(lambda: time.monotonic() - cut > 2 * LEASE_TTL + 3, 60, interval=0.5, what="the partition")
        _ip("-n", ns_b, "link", "set", link_b, "up")

        # From B without the bundle: refused, in one line (no client certificate, no credentials).
        r = subprocess.run(_in_ns(ns_b, "status", "--etcd", endpoint, "--job-id", "mh"), env=clean_env(),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("aimaster: error:")]
        assert len(errors) == 1 and endpoint in errors[0], r.stderr

        wait_for(lambda: host_a.poll() is not None, 240, interval=0.5, what="host A's job to end")
        assert host_a.returncode == 0, _ended(host_a, tmp_path / "a.out")
        wait_for(lambda: host_b.poll() is not None, 120, interval=0.5, what="host B's aimaster join to end")
        assert host_b.returncode == 0, _ended(host_b, tmp_path / "b.out")
    finally:
        for p in (host_a, host_b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert_exactly_once(str(out), inputs)
    report = json.loads((state_a / "jobs" / "mh" / "report.json").read_text())
    assert report["state"] == "Succeeded"
    b_workers = {p.name[:-len(".log")] for p in log_b.iterdir()}
    a_workers = {p.name[:-len(".log")] for p in log_a.iterdir()}
    assert b_workers and not b_workers & a_workers
    committed_by_b = sum(w.get("slices") or 0 for w in report["workers"] if w["worker_id"] in b_workers)
    assert committed_by_b > 0, report["workers"]
    assert sum(w.get("slices") or 0 for w in report["workers"]) == report["slices"]["total"]
    # B keeps its own logs and its copy of the worker credentials, private to it.
    tls_b = state_b / "jobs" / "mh" / "tls"
    assert {p.name for p in tls_b.iterdir()} == {"ca.pem", "worker.pem", "worker-key.pem"}
    assert all(p.stat().st_mode & 0o077 == 0 for p in tls_b.iterdir())
