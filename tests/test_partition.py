"""A worker cut off from etcd past its lease TTL loses its claims: when it comes back it commits and
publishes nothing from them, takes a new lease (re-registers) and goes on.

The cut is provoked for real on loopback: the worker is stopped (SIGSTOP) holding a slice, so that
neither its keep-alive thread nor anything else of it reaches etcd, until its lease has expired;
then it runs again (SIGCONT) and tries to commit the slice it was holding.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from helpers import assert_exactly_once, clean_env, make_files, program, wait_for

from aimaster.data.coordinator import Dataset
from aimaster.data.store import EtcdConfig, Store, job_prefix

PROGRAM = program("partitioned_worker.py")


def test_a_worker_cut_off_past_its_ttl_cannot_commit_its_lost_claim(tmp_path, etcd, job_id, make_session):
    inputs = make_files(str(tmp_path / "in"), 30)
    go = tmp_path / "go"
    env = clean_env({"AIMASTER_ETCD_ENDPOINTS": etcd.endpoint, "AIMASTER_JOB_ID": job_id,
                     "AIMASTER_WORKER_ID": "cut", "AIMASTER_LEASE_TTL": "2"})
    proc = subprocess.Popen([sys.executable, PROGRAM, str(tmp_path / "in"), str(tmp_path / "out"), "10", str(go)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = Store(EtcdConfig([etcd.endpoint], retry_seconds=20), job_prefix(job_id))
    try:
        first = proc.stdout.readline().split()
        assert first[0] == "holding", first
        sid = first[1]
        [ds] = [rel.split("/")[1] for rel, _, _ in store.range("ds/", keys_only=True) if rel.endswith("/plan")]
        claim = store.get_value(f"ds/{ds}/claim/{sid}")
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: store.get_value(f"ds/{ds}/claim/{sid}") is None, timeout=60,
                     what="the stopped worker's lease to expire")
            assert store.get_value("workers/cut") is None
            # The master, or a waiting peer, finds the slice in no state and puts it back.
            peer = Dataset(make_session("peer"), ds)
            peer.load_plan()
            assert peer.requeue_lost() == 1 and store.get_value(f"ds/{ds}/todo/{sid}") is not None
            go.touch()
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        assert proc.returncode == 0, err
        commits = [line.split()[1:] for line in out.splitlines() if line.startswith("commit ")]
        assert commits[0] == [sid, "False"], out  # the lost claim: nothing committed, nothing published
        assert sorted(s for s, ok in commits if ok == "True") == ["000000", "000001", "000002"], out
        done = store.get_value(f"ds/{ds}/done/{sid}")
        assert done["at"] != claim["at"] and done["w"] == "cut"  # redone under a new claim, by the same worker
        assert "lost its etcd lease; taking a new one" in err, err  # re-registered, then went on
        assert store.get_value("workers/cut") is None  # it exited since, revoking its new lease
    finally:
        store.close()
    assert_exactly_once(str(tmp_path / "out"), inputs)
