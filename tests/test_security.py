"""etcd with TLS and authentication, credentials kept secret, hostile values in etcd.

More hostile values written into a running job: tests/test_truthful_end.py.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from certs import make_certs
from helpers import assert_exactly_once, make_files, program, run_aimaster, wait_for
from test_elastic import Job

from aimaster.data.etcd_server import EmbeddedEtcd, TlsFiles
from aimaster.data.store import EtcdConfig, Store, job_prefix
from aimaster.io.files import dataset_key

PASSWORD = "pw-Zq81-secret"


@pytest.fixture(scope="module")
def secure_etcd(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_certs(str(d))
    with EmbeddedEtcd(tls=TlsFiles(ca, cert, key), auth=("alice", PASSWORD)) as server:
        yield server


def _tls_args(server):
    return ["--etcd", server.endpoint, "--etcd-ca", server.tls.ca, "--etcd-cert", server.tls.cert,
            "--etcd-key", server.tls.key, "--etcd-user", "alice"]


def test_job_runs_on_tls_etcd_with_auth_and_never_leaks_the_password(tmp_path, secure_etcd):
    inp, out, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    inputs = make_files(str(inp), 60)
    r = run_aimaster("run", "-n", "2", "--job-id", "sec", "--state-dir", str(state), *_tls_args(secure_etcd),
                     "--", sys.executable, program("file_worker.py"), str(inp), str(out), "7",
                     env={"AIMASTER_ETCD_PASSWORD": PASSWORD})
    assert r.returncode == 0, r.stderr
    assert_exactly_once(str(out), inputs)
    assert PASSWORD not in r.stdout + r.stderr
    for root, _, names in os.walk(state):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                assert PASSWORD.encode() not in f.read(), f"password written to {name}"
    cfg = EtcdConfig([secure_etcd.endpoint], user="alice", password=PASSWORD, ca_cert=secure_etcd.tls.ca,
                     cert_cert=secure_etcd.tls.cert, cert_key=secure_etcd.tls.key)
    store = Store(cfg, job_prefix("sec"))
    values = store.range("", expect=None)
    assert values, "the job wrote nothing to etcd"
    assert not any(PASSWORD in json.dumps(v) for _, v, _ in values)
    store.close()


def test_wrong_password_is_one_line_error(tmp_path, secure_etcd):
    r = run_aimaster("run", "--job-id", "bad", "--state-dir", str(tmp_path), *_tls_args(secure_etcd), "--", "true",
                     env={"AIMASTER_ETCD_PASSWORD": "Xq-not-it-7"}, timeout=60)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("aimaster: error:")]
    assert len(errors) == 1 and "refused the credentials for user alice" in errors[0], r.stderr
    assert "Xq-not-it-7" not in r.stderr


def test_missing_client_certificate_is_one_line_error(tmp_path, secure_etcd):
    r = run_aimaster("status", "--etcd", secure_etcd.endpoint, "--job-id", "x", timeout=60,
                     env={"AIMASTER_ETCD_RETRY_SECONDS": "2"})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"etcd at {secure_etcd.endpoint} unreachable" in r.stderr


HOSTILE = {
    "garbage": b"\x00\xffnot json at all",
    "code": b"__import__('os').system('touch PWNED')",
    "wrong_type": json.dumps({"kind": "files", "num_items": "10", "slice_size": 2, "num_slices": [1],
                              "width": 6, "chunks": [], "source": {}}).encode(),
    "huge": json.dumps({"x": "y" * (1100 * 1024)}).encode(),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_plan_value_is_a_clear_error_not_a_crash_loop(tmp_path, etcd, job_id, case):
    inp = tmp_path / "in"
    make_files(str(inp), 10, nested=False)
    ds = "f-" + dataset_key("files", str(inp), "")
    store = Store(EtcdConfig([etcd.endpoint]), job_prefix(job_id))
    pwned = tmp_path / "pwned"
    store.client.put(store.key(f"ds/{ds}/plan"), HOSTILE[case].replace(b"PWNED", str(pwned).encode()))
    r = run_aimaster("run", "-n", "2", "--job-id", job_id, "--etcd", etcd.endpoint, "--state-dir", str(tmp_path / "s"),
                     "--quiet", "--", sys.executable, program("file_worker.py"), str(inp), str(tmp_path / "out"), "2",
                     timeout=90)
    assert r.returncode == 1, r.stderr  # the job Failed (not a master that crashed: that is 2)
    assert "Traceback" not in r.stderr
    assert f"ds/{ds}/plan" in r.stderr, r.stderr
    assert "relaunch" not in r.stderr.split("Failed", 1)[0], "a corrupt value must not cause a relaunch loop"
    assert not pwned.exists()
    record = json.loads(store.client.get(store.key("job"))[0])
    assert record["state"] == "Failed" and f"ds/{ds}/plan" in record["reason"], record
    # `aimaster status` shows the job's end and what is wrong.
    r = run_aimaster("status", "--etcd", etcd.endpoint, "--job-id", job_id, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"job {job_id}: Failed" in r.stdout, r.stdout
    assert f"warning: ignoring value at {store.key(f'ds/{ds}/plan')}" in r.stdout, r.stdout
    store.close()


def test_hostile_values_in_slice_keys_do_not_crash_the_master(tmp_path):
    """Garbage under workers/, beat/, stats/, todo/ and claim/ of a running job is reported and left
    out; the job goes on and Succeeds, every input exactly once, and `aimaster status` reads it."""
    job = Job(tmp_path, "hostile", 600, workers=3, env={"FILE_SLEEP": "0.01"}, extra=("--lease-ttl", "3"))
    try:
        job.start()
        wait_for(lambda: job.committed() >= 5, timeout=60, what="first commits")
        store = job.store()
        [ds] = [rel.split("/")[1] for rel in store.keys("") if rel.startswith("ds/") and rel.endswith("/plan")]
        hostile = {"workers/evil": b"[1, 2, 3]", "beat/evil": HOSTILE["garbage"], "stats/evil": b'{"slices": "x"}',
                   f"ds/{ds}/todo/zzzzzz": HOSTILE["code"], f"ds/{ds}/todo/999999": b"{}",
                   f"ds/{ds}/claim/zzzzzz": HOSTILE["garbage"]}
        for rel, value in hostile.items():
            store.client.put(store.key(rel), value)
        assert job.wait() == 0, job.output_text()
    finally:
        job.close()
    text = job.output_text()
    assert "Traceback" not in text
    for rel in ("workers/evil", "beat/evil", "stats/evil"):
        assert f"warning: ignoring value at {store.key(rel)}" in text, text
    assert_exactly_once(str(job.out), job.inputs)
    report = job.report()
    assert report["state"] == "Succeeded" and report["slices"] == {"total": 60, "committed": 60, "failed": 0}
    assert [e for e in report["worker_exits"] if e["exit"] != 0] == []
    r = run_aimaster("status", "--job-id", "hostile", "--state-dir", str(job.state), timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "job hostile: Succeeded" in r.stdout and "workers/evil" in r.stdout and "expected dict" in r.stdout


def test_a_forged_registration_never_makes_the_master_signal_another_process(tmp_path):
    """A restarted master adopts the workers its predecessor launched, from their registrations, and
    signals them. A registration forged to name another process (bound to a real lease, every field
    right) must not make it adopt -- and later kill -- that process."""
    import signal
    import socket
    import subprocess
    import time

    job = Job(tmp_path, "forgedreg", 600, workers=2, env={"FILE_SLEEP": "0.02"}, extra=("--lease-ttl", "3"))
    innocent = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        job.start()
        wait_for(lambda: job.committed() >= 10, timeout=60, what="first commits")
        os.kill(job.proc.pid, signal.SIGKILL)
        job.proc.wait()
        store = job.store()
        lease = store.grant_lease(60)
        store.put("workers/w5", {"host": socket.gethostname(), "pid": innocent.pid, "started": time.time(),
                                 "ttl": 60, "lease": lease.id, "slot": 5, "incarnation": 0, "launcher": "master"},
                  lease=lease)
        r = job.run()
        assert innocent.poll() is None, "the master killed a process a forged registration named"
        assert r.returncode == 0, r.stderr
        assert f"not adopting w5: its registration names pid {innocent.pid}" in r.stderr
        assert "w5" not in job.report()["adopted"] and len(job.report()["adopted"]) == 2
        assert_exactly_once(str(job.out), job.inputs)
    finally:
        innocent.kill()
        innocent.wait()
        job.close()
