"""``aimaster run --listen``: TLS, client certificates and etcd users, the join bundle, on loopback.

A real secure job etcd (started the way ``aimaster run --listen`` starts it) serves the refusal and
confinement tests; real ``aimaster run``/``join``/``status`` processes serve the end-to-end ones.
Two hosts with a partition between them: tests/test_multi_host.py.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys

import grpc
import pytest
from certs import make_certs
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import aimaster_cmd, assert_exactly_once, clean_env, make_files, program, run_aimaster, wait_for
from pyetcd.etcdrpc import rpc_pb2

from aimaster.data.store import Compare, EtcdConfig, Op, Store, job_prefix
from aimaster.errors import ConfigError, CredentialsError, EtcdUnavailableError
from aimaster.master.state_dir import JobStateDir
from aimaster.security import bundle, certs, diagnose
from aimaster.security.listen import parse

JOB = "secure-job"


def _one_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith(("aimaster: error:", "Error:"))]
    assert len(errors) == 1, r.stderr
    return errors[0]


@pytest.fixture(scope="module")
def secure_job(tmp_path_factory):
    """(state dir, running etcd) of a job whose etcd serves 127.0.0.1 with TLS and users."""
    root = tmp_path_factory.mktemp("secure-state")
    state = JobStateDir(str(root), JOB)
    state.create()
    state.security().set_listen(parse("127.0.0.1"))
    etcd = state.start_etcd()
    yield state, etcd
    etcd.stop()


def _store(state, etcd, user="root", job=JOB, retry=3.0):
    cfg = state.security().client_config([etcd.endpoint], user=user, retry_seconds=retry)
    return Store(cfg, job_prefix(job))


def _expired_cert(sec, directory):
    """(cert, key) files of a worker certificate of the job's own CA that expired yesterday."""
    ca_cert = sec._load_cert("ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(ca_cert.subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=3)).not_valid_after(now - datetime.timedelta(days=1))
            .sign(sec._load_key("ca"), hashes.SHA256()))
    paths = (os.path.join(directory, "expired.pem"), os.path.join(directory, "expired-key.pem"))
    certs.write_private(paths[0], certs.cert_pem(cert))
    certs.write_private(paths[1], certs.key_pem(key))
    return paths, cert, key


def test_plain_text_certless_and_foreign_clients_are_refused(secure_job, tmp_path):
    state, etcd = secure_job
    sec = state.security()
    ours = sec.client_config([etcd.endpoint]).ca_cert
    ca, cert, key = make_certs(str(tmp_path))  # a CA and certificate of somebody else
    for cfg in (EtcdConfig([etcd.endpoint], retry_seconds=1),
                EtcdConfig([etcd.endpoint], ca_cert=ours, retry_seconds=1),
                EtcdConfig([etcd.endpoint], ca_cert=ours, cert_cert=cert, cert_key=key, retry_seconds=1),
                EtcdConfig([etcd.endpoint], ca_cert=ca, cert_cert=cert, cert_key=key, retry_seconds=1)):
        with pytest.raises(EtcdUnavailableError):
            Store(cfg, job_prefix(JOB)).get("job")
    # Through the command line: one line each, saying what is wrong.
    ep = etcd.endpoint
    status = ("status", "--etcd", ep, "--job-id", JOB)
    fast = {"AIMASTER_ETCD_RETRY_SECONDS": "1"}  # no need to wait out the usual 5 s probe
    line = _one_error(run_aimaster(*status, env=fast, timeout=60))
    assert f"etcd at {ep} unreachable: it requires a TLS client certificate" in line and "--bundle" in line
    (expired, expired_key), _, _ = _expired_cert(sec, str(tmp_path))
    line = _one_error(run_aimaster(*status, "--etcd-ca", ours, "--etcd-cert", expired, "--etcd-key", expired_key,
                                   timeout=60))
    assert f"etcd client certificate {expired} expired on" in line
    # The same diagnosis, in process.
    line = diagnose.explain(EtcdConfig([ep], ca_cert=ours, cert_cert=cert, cert_key=key))
    assert line == f"etcd at {ep} unreachable: it refused the client certificate {cert} (not issued by the CA of " \
                   f"the job it serves)"
    line = diagnose.explain(EtcdConfig([ep], ca_cert=ca, cert_cert=cert, cert_key=key))
    assert line == f"etcd at {ep} unreachable: its certificate was not issued by the CA in {ca} (another job's etcd?)"
    assert diagnose.explain(sec.client_config([ep], user="worker")) is None  # the job's own credentials work
    # A bundle of another job whose endpoint is this job's etcd (the port was reused, say).
    other = JobStateDir(str(tmp_path / "other"), JOB)
    other.create()
    other.security().set_listen(parse("127.0.0.1"))
    line = _one_error(run_aimaster("status", "--bundle", other.security().write_bundle(etcd.client_port),
                                   env=fast, timeout=60))
    assert "its certificate was not issued by the CA in" in line


def test_worker_user_reads_and_writes_its_job_prefix_only(secure_job):
    state, etcd = secure_job
    root, worker = _store(state, etcd), _store(state, etcd, user="worker")
    try:
        root.client.put("/aimaster/v1/index/" + JOB, "{}")
        root.client.put(job_prefix(JOB + "2") + "job", "{}")
        # What a worker does: values, leases, transactions, counts, all under the job's prefix.
        lease = worker.grant_lease(5)
        worker.put("workers/w", {"pid": 1}, lease=lease)
        assert worker.refresh_lease(lease) > 0
        ok, _ = worker.txn("commit", [Compare.version("ds/x/done/000001") == 0], [Op.put("ds/x/done/000001", "{}")])
        assert ok and worker.count("ds/") == 1
        worker.revoke_lease(lease)
        assert worker.get_value("workers/w") is None
        # Nothing else: the etcd-wide index, a job whose id extends this one's, the whole key space.
        for attempt in (lambda c: c.get("/aimaster/v1/index/" + JOB),
                        lambda c: c.put("/aimaster/v1/index/" + JOB, "{}"),
                        lambda c: c.get(job_prefix(JOB + "2") + "job"),
                        lambda c: c.put(job_prefix(JOB + "2") + "job", "{}"),
                        lambda c: list(c.get_all())):
            with pytest.raises(CredentialsError):
                worker.call("outside", attempt)
        with pytest.raises(grpc.RpcError) as e:
            worker.client.authstub.UserAdd(rpc_pb2.AuthUserAddRequest(name="mallory", password="x"), 5)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert root.client.get("/aimaster/v1/index/" + JOB)[0] == b"{}"
    finally:
        root.close()
        worker.close()


def _bundle_fields(path):
    return json.loads(open(path).read())


def _write_bundle(tmp_path, state, cert_pem, key_pem, name="b.json", job=JOB):
    sec = state.security()
    path = str(tmp_path / name)
    ca_pem = open(os.path.join(sec.dir, "ca.pem"), "rb").read()
    bundle.write(path, job, ["127.0.0.1:1"], ca_pem, cert_pem, key_pem, sec._load_key("ca"))
    return path


def test_bundle_is_checked_before_anything_is_dialled(secure_job, tmp_path):
    state, etcd = secure_job
    sec = state.security()
    good = sec.write_bundle(etcd.client_port)
    assert os.stat(good).st_mode & 0o777 == 0o600
    found = bundle.load(good, JOB)
    assert found.endpoints == [f"127.0.0.1:{etcd.client_port}"] and not found.insecure
    fields = _bundle_fields(good)
    assert set(fields) == {"version", "job_id", "endpoints", "ca", "cert", "key", "signature"}
    assert open(os.path.join(sec.dir, "root-password")).read() not in json.dumps(fields)
    assert "BEGIN" in fields["ca"] and open(os.path.join(sec.dir, "ca-key.pem")).read() not in json.dumps(fields)

    def refused(path, job=None):
        with pytest.raises(ConfigError) as e:
            bundle.load(str(path), job)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
        return str(e.value)

    assert "does not exist" in refused(tmp_path / "nope.json")
    assert "cannot read" in refused(tmp_path)
    (tmp_path / "junk.json").write_text("{not json")
    assert "not JSON" in refused(tmp_path / "junk.json")
    assert f"is for job {JOB}, not other" in refused(good, "other")
    for field, value in (("endpoints", ["evil.example:2379"]), ("job_id", "other")):
        (tmp_path / "t.json").write_text(json.dumps({**fields, field: value}))
        assert "has been altered" in refused(tmp_path / "t.json")

    # Correctly signed, yet an expired worker certificate, or one of another job's CA.
    _, expired, key = _expired_cert(sec, str(tmp_path))
    path = _write_bundle(tmp_path, state, certs.cert_pem(expired), certs.key_pem(key), "expired.json")
    assert "worker certificate" in refused(path) and "expired on" in refused(path)
    other_ca, other_key = certs.make_ca("another-job")
    foreign, foreign_key = certs.issue(other_ca, other_key, "aimaster-worker")
    path = _write_bundle(tmp_path, state, certs.cert_pem(foreign), certs.key_pem(foreign_key), "foreign.json")
    assert "not issued by the job's CA" in refused(path)

    # The command line says the same in one line, exit non-zero.
    r = run_aimaster("join", "--bundle", str(tmp_path / "t.json"), "--state-dir", str(tmp_path / "s"), "--", "true",
                     timeout=60)
    assert "has been altered" in _one_error(r)
    r = run_aimaster("status", "--bundle", good, "--job-id", "other", timeout=60)
    assert f"is for job {JOB}, not other" in _one_error(r)


def test_bad_listen_options_are_one_line_errors(tmp_path, secure_job):
    state, _ = secure_job
    args = ["--state-dir", str(tmp_path), "--quiet", "--", "true"]
    r = run_aimaster("run", "--job-id", "l1", "--listen", "192.0.2.77", *args, timeout=60)
    assert "192.0.2.77: this host has no such address" in _one_error(r)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = run_aimaster("run", "--job-id", "l2", "--listen", f"127.0.0.1:{port}", *args, timeout=60)
        assert f"127.0.0.1:{port}: the port is already in use" in _one_error(r)
    assert "go with --listen" in _one_error(run_aimaster("run", "--job-id", "l3", "--insecure", *args, timeout=60))
    r = run_aimaster("run", "--job-id", "l4", "--listen", "127.0.0.1", "--etcd", "127.0.0.1:1", *args, timeout=60)
    assert "--listen is for the job's embedded etcd" in _one_error(r)
    r = run_aimaster("run", "--job-id", JOB, "--state-dir", state.root, "--listen", "127.0.0.1", "--insecure",
                     "--", "true", timeout=60)
    assert "set up with TLS and authentication" in _one_error(r)


def _secrets(security_dir: str):
    password = open(os.path.join(security_dir, "root-password"), "rb").read()
    assert len(password) >= 24
    lines = []  # every base64 line of every private key (a PEM anywhere would contain them)
    for name in ("ca-key.pem", "root-key.pem", "worker-key.pem"):
        lines += [line for line in open(os.path.join(security_dir, name), "rb").read().splitlines()[1:-1]
                  if len(line) >= 32]
    return [password, *lines]


def test_job_on_a_listening_etcd_with_a_joiner_then_resume_reuses_credentials(tmp_path):
    inp, out, state_root = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    inputs = make_files(str(inp), 160)
    worker = [sys.executable, program("file_worker.py"), str(inp), str(out), "4"]
    env = clean_env({"FILE_SLEEP": "0.05"})
    run_cmd = aimaster_cmd("run", "-n", "1", "--job-id", "lj", "--state-dir", str(state_root), "--listen",
                           "127.0.0.1", "--quiet", "--", *worker)
    with open(tmp_path / "run.out", "w") as log:
        master = subprocess.Popen(run_cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        path = state_root / "jobs" / "lj" / "join.json"
        wait_for(lambda: path.exists() or master.poll() is not None, 60, what="the join bundle")
        assert master.poll() is None, (tmp_path / "run.out").read_text()
        shown = run_aimaster("status", "--bundle", str(path), "--json", timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["job_id"] == "lj"
        joined = run_aimaster("join", "--bundle", str(path), "-n", "1", "--state-dir", str(tmp_path / "b"),
                              "--quiet", "--", *worker, env={"FILE_SLEEP": "0.05"}, timeout=180)
        assert joined.returncode == 0, joined.stderr
        assert master.wait(180) == 0, (tmp_path / "run.out").read_text()
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
    text = (tmp_path / "run.out").read_text()
    expected = f"aimaster join --bundle {path} -n 1 -- {' '.join(worker)}"
    assert expected in text, text
    assert_exactly_once(str(out), inputs)
    # No secret in clear anywhere in the job's etcd data (etcd keeps only a hash of the password).
    security_dir = str(state_root / "jobs" / "lj" / "security")
    secrets = _secrets(security_dir)
    for directory, _, names in os.walk(state_root / "jobs" / "lj" / "etcd"):
        for name in names:
            data = open(os.path.join(directory, name), "rb").read()
            assert not any(s in data for s in secrets), f"a secret in clear in {name}"
    # The local status of the finished job restarts its etcd (TLS, root's certificate) to read it.
    r = run_aimaster("status", "--job-id", "lj", "--state-dir", str(state_root), "--json", timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "Succeeded", r.stderr

    # Resume: the same CA, certificates and password; the bundle of before still admits a worker.
    before = {n: open(os.path.join(security_dir, n), "rb").read() for n in sorted(os.listdir(security_dir))}
    old_bundle = path.read_bytes()
    r = subprocess.run(run_cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "already succeeded" in r.stderr, r.stderr
    after = {n: open(os.path.join(security_dir, n), "rb").read() for n in sorted(os.listdir(security_dir))}
    assert {n: v for n, v in after.items() if n != "listen.json"} == \
        {n: v for n, v in before.items() if n != "listen.json"}
    assert bundle.load(str(path)).cert == json.loads(old_bundle)["cert"].encode()


def test_insecure_listen_warns_and_writes_a_bundle_without_credentials(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inputs = make_files(str(inp), 12)
    r = run_aimaster("run", "-n", "1", "--job-id", "plain", "--state-dir", str(tmp_path / "s"), "--listen",
                     "127.0.0.1", "--insecure", "--quiet", "--", sys.executable, program("file_worker.py"),
                     str(inp), str(out), "4", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "warning: --insecure" in r.stderr
    assert_exactly_once(str(out), inputs)
    fields = json.loads((tmp_path / "s" / "jobs" / "plain" / "join.json").read_text())
    assert fields["insecure"] is True and not {"ca", "cert", "key"} & set(fields)
    assert not (tmp_path / "s" / "jobs" / "plain" / "security" / "ca.pem").exists()


def test_secure_job_survives_its_etcd_being_killed(tmp_path):
    """Workers authenticate by certificate, not by an auth token an etcd restart would invalidate: the
    guard restarts a SIGKILLed etcd with TLS on the same port and the job carries on."""
    inp, out, state_root = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    inputs = make_files(str(inp), 120)
    cmd = aimaster_cmd("run", "-n", "2", "--job-id", "kill", "--state-dir", str(state_root), "--listen",
                       "127.0.0.1", "--quiet", "--", sys.executable, program("file_worker.py"), str(inp), str(out), "4")
    with open(tmp_path / "run.out", "w") as log:
        master = subprocess.Popen(cmd, env=clean_env({"FILE_SLEEP": "0.05"}), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(list(out.glob("*.txt"))) >= 3 or master.poll() is not None, 90, what="some commits")
        assert master.poll() is None, (tmp_path / "run.out").read_text()
        info = json.loads((state_root / "jobs" / "kill" / "etcd.json").read_text())
        os.kill(info["pid"], 9)
        assert master.wait(180) == 0, (tmp_path / "run.out").read_text()
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
    assert_exactly_once(str(out), inputs)
    report = json.loads((state_root / "jobs" / "kill" / "report.json").read_text())
    assert report["state"] == "Succeeded" and report["etcd_restarts"] >= 1, report


def test_listen_address_parsing():
    spec = parse("127.0.0.1:2400")
    assert (spec.host, spec.port, spec.advertise, spec.hosts) == ("127.0.0.1", 2400, "127.0.0.1", ["127.0.0.1"])
    spec = parse("0.0.0.0", advertise="gpu1.example")
    assert spec.hosts == ["0.0.0.0"] and spec.endpoint(9) == "gpu1.example:9"
    assert "gpu1.example" in spec.cert_names() and "127.0.0.1" in spec.cert_names()
    assert parse("0.0.0.0").advertise not in ("0.0.0.0", "")  # this host's primary address
    spec = parse("[::1]:7", advertise="::1")
    assert (spec.host, spec.port, spec.endpoint(7)) == ("::1", 7, "[::1]:7")
    for bad, why in (("127.0.0.1:99999", "port must be a number"), ("127.0.0.1:x", "port must be a number"),
                     (":80", r"expected HOST\[:PORT\]")):
        with pytest.raises(ConfigError, match=why):
            parse(bad)
    with pytest.raises(ConfigError, match="--advertise"):
        parse("127.0.0.1", advertise="0.0.0.0")
