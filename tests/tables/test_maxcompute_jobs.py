"""`aimaster run` writing a MaxCompute table through pyodps, for longer than its sessions live.

The stand-in is served over HTTP (``mc_http``): the workers and their writer children are real
processes running pyodps' real client. Its sessions live a few seconds, and so does the lifetime
aimaster plans with (``AIMASTER_ODPS_SESSION_LIFETIME``): a job of several lifetimes must rotate its
upload sessions and commit the old ones before they expire, read on through expiring download
sessions, and a job resumed after its sessions expired must redo the slices whose rows died with them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from helpers import clean_env, wait_for
from jobs import failed_exits, job_cmd, report, run_job

from aimaster.data.store import EtcdConfig, Store, job_prefix

SLICE = 200


def _short_lived(fake, lifetime: float) -> dict:
    fake.upload_lifetime = fake.download_lifetime = lifetime
    return {"AIMASTER_ODPS_SESSION_LIFETIME": str(lifetime), "READ_BATCH": "100", "BATCH_SLEEP": "0.1"}


@pytest.mark.parametrize("buffer_size", [0, 2048])
def test_a_job_longer_than_the_session_lifetime(tmp_path, job_tables, buffer_size):
    # A generation must be sealed between 5L/8 and L of its age by a worker that still looks, or by
    # the master's finalize once every worker has exited: with L = 6 s that window (2.25 s) was missed
    # on a loaded 2-core CI machine. L = 10 s; 80 slices keep the job longer than one lifetime.
    lifetime = 10.0
    tables = job_tables("odps", 80 * SLICE)  # about 0.2 s per slice, two workers
    env = dict(_short_lived(tables.fake, lifetime), BUFFER_SIZE=str(buffer_size))
    t0 = time.monotonic()
    r = run_job(tmp_path / "state", "long", tables, SLICE, env=env, workers=2)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 > lifetime, "the job did not outlive its sessions"
    tables.assert_exactly_once()
    assert failed_exits(report(tmp_path / "state", "long")) == []
    committed = {sid for sid, _ in tables.fake.commits}
    assert len(committed) >= 2, "one upload session cannot have held the whole job"
    assert all(tables.fake.upload_status(sid) == "closed" for sid in committed)


def test_a_job_resumes_after_its_upload_sessions_expired(tmp_path, job_tables):
    tables = job_tables("odps", 30 * SLICE)
    # L = 10 s, not 6: the resumed run must seal its own generations within 5L/8..L of their age, and
    # on a loaded 2-core machine (slow-worker replacements, 11 s for the run) a 2.25 s window was missed.
    lifetime = 10.0
    env = clean_env(dict(tables.env, **_short_lived(tables.fake, lifetime)))
    state = tmp_path / "state"
    cmd = job_cmd(state, "resume", tables, SLICE, workers=2)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    info_path = os.path.join(str(state), "jobs", "resume", "etcd.json")
    info = wait_for(lambda: os.path.exists(info_path) and json.load(open(info_path)), what="etcd.json")
    store = Store(EtcdConfig([f"127.0.0.1:{info['port']}"], retry_seconds=5), job_prefix("resume"))
    try:
        deadline = time.monotonic() + 60
        while len(seen := _committed_sessions(store)) < 4:
            assert time.monotonic() < deadline, "no slices committed"
            time.sleep(0.1)
        workers = [w["pid"] for _, w, _ in store.range("workers/")]
        for pid in [proc.pid, info["pid"]] + workers:  # everything, etcd included
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        store.close()
    proc.wait(10)
    time.sleep(0.5)
    # Slices are committed whose rows are still in an upload session nobody committed yet...
    assert any(tables.fake.upload_status(sid) == "normal" for sid in seen)
    tables.fake.expire_all()  # ... and the job stays down for longer than its sessions live
    time.sleep(lifetime * 5 / 8)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "resuming job resume" in r.stderr
    tables.assert_exactly_once()  # the slices committed into the expired sessions were redone


def _committed_sessions(store) -> list:
    """The upload session of every committed slice's ref (read from the job's etcd)."""
    return [out["ref"]["session"] for rel, record, _ in store.range("ds/")
            if "/done/" in rel for out in record.get("out") or []]
