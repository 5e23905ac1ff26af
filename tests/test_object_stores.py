"""File jobs on an object store for real: ``s3://`` through s3fs against a local S3 server.

The server is moto's ``ThreadedMotoServer`` on 127.0.0.1 (real HTTP, the real S3 protocol); workers
are real ``aimaster run`` subprocesses that find it through ``AWS_ENDPOINT_URL`` and the usual AWS
credential variables, as a user's would. Each test checks every input once in the published outputs
and nothing left in the staging prefix: listed and read from S3, a meta file on S3, a worker
SIGKILLed mid-slice, a worker SIGKILLed in the middle of publishing (before the server-side copy,
and between the copy and the delete of the staged object), and speculative copies that race and lose.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest
from helpers import aimaster_cmd, clean_env, program, wait_for

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from aimaster.data.etcd_server import free_port  # noqa: E402
from aimaster.data.store import EtcdConfig, Store, job_prefix  # noqa: E402

WORKER = program("s3_worker.py")
STAGING = ".aimaster-staging"


class S3:
    """The local S3 endpoint, its environment for workers, and a client for the test itself."""

    def __init__(self, endpoint: str):
        import s3fs

        self.endpoint = endpoint
        self.env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "NO_PROXY": "127.0.0.1,localhost"}
        self.fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing",
                                    skip_instance_cache=True, use_listings_cache=False)
        self._buckets = 0

    def bucket(self) -> str:
        self._buckets += 1
        name = f"b{self._buckets}-{os.getpid()}"
        self.fs.mkdir(name)
        return name

    def put_inputs(self, prefix: str, n: int):
        """n small objects in nested "directories", plus entries that are not inputs."""
        names = []
        for i in range(n):
            rel = f"d{i % 3}/f{i:04d}.txt"
            self.fs.pipe(f"{prefix}/{rel}", f"content of {i}".encode())
            names.append(rel)
        self.fs.pipe(f"{prefix}/.hidden/secret.txt", b"not an input")
        self.fs.pipe(f"{prefix}/d0/.dotfile", b"not an input")
        self.fs.pipe(f"{prefix}/d1/", b"")  # a "directory marker", as consoles create them
        return sorted(names)

    def outputs(self, prefix: str):
        """Every line of every published output object (the staging prefix excluded)."""
        self.fs.invalidate_cache()
        lines = []
        for key in sorted(self.fs.find(prefix)):
            if f"/{STAGING}/" not in key and key.endswith(".tsv"):
                lines += [x for x in self.fs.cat(key).decode().splitlines() if x.strip()]
        return lines

    def staged(self, prefix: str):
        self.fs.invalidate_cache()
        return self.fs.find(f"{prefix}/{STAGING}")

    def assert_exactly_once(self, bucket: str, out: str, names):
        lines = self.outputs(f"{bucket}/{out}")
        expected = sorted(f"s3://{bucket}/in/{n}\tcontent of {int(n[4:8])}" for n in names)
        assert len(lines) == len(set(lines)), "duplicated outputs"
        assert sorted(lines) == expected, (f"{len(set(expected) - set(lines))} inputs missing, "
                                           f"{len(set(lines) - set(expected))} unexpected")
        assert self.staged(f"{bucket}/{out}") == [], "staged objects left behind"


@pytest.fixture(scope="module")
def s3():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


def run_job(tmp_path, s3, bucket, job_id, *extra, workers=2, slice_size=5, env=None, out="out", background=False):
    cmd = aimaster_cmd("run", "-n", str(workers), "--job-id", job_id, "--state-dir", str(tmp_path / "state"),
                       "--quiet", *extra, "--", sys.executable, WORKER, f"s3://{bucket}/in", f"s3://{bucket}/{out}",
                       str(slice_size))
    full_env = clean_env({**s3.env, "MARKS": str(tmp_path), **(env or {})})
    if background:
        log = open(tmp_path / "master.log", "w+")
        return subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=180)


def report(tmp_path, job_id):
    return json.loads((tmp_path / "state" / "jobs" / job_id / "report.json").read_text())


def killed(rep) -> int:
    """How many worker processes of the job died of SIGKILL."""
    return sum(1 for e in rep["worker_exits"] if e.get("exit") == -signal.SIGKILL)


def test_s3_input_listed_read_and_published_exactly_once(tmp_path, s3):
    bucket = s3.bucket()
    names = s3.put_inputs(f"{bucket}/in", 23)
    r = run_job(tmp_path, s3, bucket, "s3-basic")
    assert r.returncode == 0, r.stderr
    s3.assert_exactly_once(bucket, "out", names)  # hidden objects and the directory marker are no inputs
    rep = report(tmp_path, "s3-basic")
    assert rep["state"] == "Succeeded" and rep["slices"]["committed"] == 5
    assert sorted(s3.fs.ls(f"{bucket}/out", detail=False)) == [f"{bucket}/out/{i:06d}.tsv" for i in range(5)]


def test_s3_meta_file_standalone(tmp_path, s3):
    """A PAI meta file on S3 naming a subset of the objects; no launcher (standalone); the endpoint and
    keys given through fsspec's configuration (FSSPEC_S3) instead of the AWS variables."""
    bucket = s3.bucket()
    names = s3.put_inputs(f"{bucket}/in", 12)
    chosen = names[::2]
    s3.fs.pipe(f"{bucket}/meta.json", json.dumps(
        {"FileCount": len(chosen), "FileDir": f"s3://{bucket}/in", "FileList": chosen}).encode())
    env = clean_env({"MARKS": str(tmp_path), "NO_PROXY": "127.0.0.1",
                     "FSSPEC_S3": json.dumps({"endpoint_url": s3.endpoint, "key": "testing", "secret": "testing"})})
    for k in list(env):
        if k.startswith("AWS_"):
            del env[k]
    r = subprocess.run([sys.executable, WORKER, "", f"s3://{bucket}/out", "4", f"s3://{bucket}/meta.json"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    s3.assert_exactly_once(bucket, "out", chosen)


def test_s3_missing_input_is_one_line(tmp_path, s3):
    bucket = s3.bucket()
    r = run_job(tmp_path, s3, bucket, "s3-missing")
    assert r.returncode != 0
    assert f"input directory s3://{bucket}/in does not exist" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("step", ["before-copy", "after-copy"])
def test_worker_sigkilled_while_publishing(tmp_path, s3, step):
    """Killed after its commit won, before the copy or between the copy and the delete of the staged
    object: the finalizer's redo publishes that slice once, and removes the staged object."""
    bucket = s3.bucket()
    names = s3.put_inputs(f"{bucket}/in", 30)
    r = run_job(tmp_path, s3, bucket, "s3-kill", env={"KILL_AT": step, "KILL_SLICE": "000002"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "kill-000002").exists(), "the worker publishing slice 000002 was not killed"
    s3.assert_exactly_once(bucket, "out", names)
    assert killed(report(tmp_path, "s3-kill")) == 1


def test_worker_sigkilled_mid_slice(tmp_path, s3):
    """A worker SIGKILLed while it holds a slice (its staged object maybe half-uploaded): the slice is
    handed out again after the lease TTL and committed once."""
    bucket = s3.bucket()
    names = s3.put_inputs(f"{bucket}/in", 45)
    proc = run_job(tmp_path, s3, bucket, "s3-midkill", "--lease-ttl", "3", workers=3,
                   env={"FILE_SLEEP": "0.05"}, background=True)
    try:
        info_path = tmp_path / "state" / "jobs" / "s3-midkill" / "etcd.json"
        info = wait_for(lambda: info_path.exists() and json.loads(info_path.read_text() or "{}"), what="etcd.json")
        store = Store(EtcdConfig([f"127.0.0.1:{info['port']}"], retry_seconds=20), job_prefix("s3-midkill"))
        try:
            def claim_of_w0():
                regs = {rel[len("workers/"):]: v for rel, v, _ in store.range("workers/")}
                claims = [json.loads(raw) for rel, raw, _ in store.iter_prefix_chunks("ds/") if "/claim/" in rel]
                held = any(isinstance(c, dict) and c.get("w") == "w0" for c in claims)
                return regs.get("w0", {}).get("pid") if held and s3.outputs(f"{bucket}/out") else None

            pid = wait_for(claim_of_w0, timeout=90, what="w0 holding a slice after a first commit")
            os.kill(pid, signal.SIGKILL)
        finally:
            store.close()
        assert proc.wait(180) == 0, (tmp_path / "master.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    s3.assert_exactly_once(bucket, "out", names)
    assert killed(report(tmp_path, "s3-midkill")) == 1


def test_speculative_copies_on_s3_publish_once(tmp_path, s3):
    """One slow slice, two copies of it racing each other; the slow first attempt commits late and
    loses too: the losers' staged objects are discarded, every input is published once.

    One slow slice, not two: with two, the three idle workers may spread their copies one per
    slice, and a lone copy has nobody to lose to (seen in CI: won 2, lost 0)."""
    bucket = s3.bucket()
    names = s3.put_inputs(f"{bucket}/in", 40)
    r = run_job(tmp_path, s3, bucket, "s3-spec", "--max-slice-copies", "2", "--speculation-multiplier", "0",
                workers=4, env={"SLOW_SLICE": "000002", "COPIES": "2"})
    assert r.returncode == 0, r.stderr
    s3.assert_exactly_once(bucket, "out", names)
    spec = report(tmp_path, "s3-spec")["speculation"]
    assert spec["copies_started"] >= 2, spec
    assert spec["won"] >= 1 and spec["lost"] >= 1, spec


# ---------------------------------------------------------------- publishing, step by step, on S3


@pytest.fixture
def sink(s3, monkeypatch):
    from aimaster.io.files import FileSink

    for k, v in s3.env.items():  # the sink's own s3fs finds the server as a worker's would
        monkeypatch.setenv(k, v)
    bucket = s3.bucket()
    return FileSink(f"s3://{bucket}/out"), bucket


def _stage(sink, slice_id, text):
    handle, ref = sink.open_staged(slice_id, "a1", f"{slice_id}.tsv")
    with handle:
        handle.write(text)
    return ref


def test_publish_redo_after_crash_between_copy_and_delete(s3, sink):
    sink, bucket = sink
    ref = _stage(sink, "000000", "one\n")
    s3.fs.copy(f"{bucket}/out/{ref['staged']}", f"{bucket}/out/000000.tsv")  # the copy made, then the crash
    sink.publish("000000", ref)
    assert s3.fs.cat(f"{bucket}/out/000000.tsv") == b"one\n"
    assert s3.staged(f"{bucket}/out") == []
    sink.publish("000000", ref)  # once more, with the staged object gone: nothing to do
    assert s3.fs.cat(f"{bucket}/out/000000.tsv") == b"one\n"


def test_publish_sees_objects_staged_after_this_process_listed(s3, sink):
    """s3fs caches listings per process: a stale cache must not hide a staged object from the finalizer."""
    sink, bucket = sink
    ref = {"staged": f"{STAGING}/000001/a9/000001.tsv", "final": "000001.tsv"}
    sink.fs.find(f"{bucket}/out")  # cache the (empty) listing
    s3.fs.pipe(f"{bucket}/out/{ref['staged']}", b"late\n")  # written by another process
    sink.publish("000001", ref)
    assert s3.fs.cat(f"{bucket}/out/000001.tsv") == b"late\n"


def test_publish_of_a_lost_staged_object_is_an_error(s3, sink):
    from aimaster.io.object_store import StagedOutputMissingError

    sink, bucket = sink
    ref = {"staged": f"{STAGING}/000003/a1/000003.tsv", "final": "000003.tsv"}
    with pytest.raises(StagedOutputMissingError, match=f"s3://{bucket}/out/000003.tsv was never published"):
        sink.publish("000003", ref)


def test_discard_and_finalize_remove_staged_objects(s3, sink):
    sink, bucket = sink
    loser = _stage(sink, "000004", "loser\n")
    _stage(sink, "000005", "left over\n")
    sink.discard(loser)
    assert s3.staged(f"{bucket}/out") == [f"{bucket}/out/{STAGING}/000005/a1/000005.tsv"]
    sink.finalize([])
    assert s3.staged(f"{bucket}/out") == []


def test_unreachable_endpoint_is_one_line_environment_error(tmp_path, s3):
    """No server at the endpoint: one line naming the URL, and the environment-error exit (relaunch)."""
    from aimaster.data.runtime import ENVIRONMENT_ERROR_EXIT

    env = clean_env({**s3.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "MARKS": str(tmp_path),
                     "AWS_MAX_ATTEMPTS": "1"})
    r = subprocess.run([sys.executable, WORKER, "s3://nowhere/in", "s3://nowhere/out", "3"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == ENVIRONMENT_ERROR_EXIT, r.stderr
    assert r.stderr.strip().splitlines() == [
        "aimaster: error: opening output_dir s3://nowhere/out failed: EndpointConnectionError: Could not connect "
        f"to the endpoint URL: \"{env['AWS_ENDPOINT_URL']}/nowhere/out\""]


def test_missing_credentials_are_one_line_user_error(tmp_path, s3):
    """No credentials anywhere (instance metadata disabled, so nothing leaves the machine): a
    configuration error, so the job is not relaunched into it."""
    from aimaster.data.runtime import USER_ERROR_EXIT

    env = clean_env({"AWS_ENDPOINT_URL": s3.endpoint, "AWS_EC2_METADATA_DISABLED": "true", "MARKS": str(tmp_path),
                     "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")})
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, WORKER, "s3://nowhere/in", "s3://nowhere/out", "3"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == USER_ERROR_EXIT, r.stderr
    assert r.stderr.strip().splitlines() == [
        "aimaster: error: opening output_dir s3://nowhere/out: no storage credentials found (Unable to locate "
        "credentials); set them in the environment (see docs/object-stores.md)"]
