"""etcd with TLS and authentication, credentials kept secret, hostile values in etcd."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from certs import make_certs
from helpers import assert_exactly_once, clean_env, make_files, program, run_aimaster

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
    "code": b"__import__('os').system('touch /tmp/aimaster-pwned')",
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
    store.client.put(store.key(f"ds/{ds}/plan"), HOSTILE[case])
    r = run_aimaster("run", "-n", "2", "--job-id", job_id, "--etcd", etcd.endpoint, "--state-dir", str(tmp_path / "s"),
                     "--quiet", "--", sys.executable, program("file_worker.py"), str(inp), str(tmp_path / "out"), "2",
                     timeout=90)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert f"ds/{ds}/plan" in r.stderr, r.stderr
    assert "relaunch" not in r.stderr.split("Failed", 1)[0], "a corrupt value must not cause a relaunch loop"
    assert not os.path.exists("/tmp/aimaster-pwned")
    # `aimaster status` says what is wrong, in one line, too.
    r = run_aimaster("status", "--etcd", etcd.endpoint, "--job-id", job_id, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr and f"ds/{ds}/plan" in r.stderr
    store.close()


def test_hostile_values_in_slice_keys_do_not_crash_the_master(tmp_path, etcd, job_id):
    """Garbage under todo/ and workers/ is reported; the job fails cleanly instead of looping."""
    inp = tmp_path / "in"
    make_files(str(inp), 10, nested=False)
    out = tmp_path / "out"
    code = [sys.executable, program("file_worker.py"), str(inp), str(out), "2"]
    env = clean_env({"AIMASTER_ETCD_ENDPOINTS": etcd.endpoint, "AIMASTER_JOB_ID": job_id})
    # Plan the dataset by running one worker to completion, then corrupt a finished job's keys.
    subprocess.run(code, env=env, check=True, timeout=60)
    store = Store(EtcdConfig([etcd.endpoint]), job_prefix(job_id))
    store.client.put(store.key("workers/evil"), b"[1, 2, 3]")
    r = run_aimaster("status", "--etcd", etcd.endpoint, "--job-id", job_id, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "workers/evil" in r.stderr and "expected dict" in r.stderr
    store.close()
