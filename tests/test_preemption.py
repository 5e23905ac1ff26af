"""Preemption and joined workers as full workers, on real processes and a real etcd.

* SIGTERM to a worker mid-slice: its slice is free again at once (well before the lease TTL, which
  is set long so that the two cannot be confused), the worker exits 0, the exit is no failure
  (under ``--fault-tolerant-policy Never``, any failure would fail the job), it is relaunched, and
  ``status`` and the report say "preempted";
* SIGTERM to ``aimaster join``: likewise for every worker it runs;
* a hung joined worker: the master, which cannot signal it, writes a stop request; the worker's
  ``aimaster join`` kills it and relaunches it under the job's policy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import aimaster_cmd, assert_exactly_once, clean_env, make_files, program, run_aimaster, wait_for

from aimaster.data.store import EtcdConfig, Store, job_prefix
from aimaster.master.launcher import pid_alive

WORKER = program("file_worker.py")
TTL = "30"  # long: "free at once" must not be mistaken for "freed by the lease expiring"
FREE_WITHIN = 15.0  # generous for a loaded machine, and still half the TTL


def _claims(store: Store):
    """{(dataset, slice): claim record} of every primary claim in flight."""
    out = {}
    for plan, _, _ in store.range("ds/", keys_only=True):
        if plan.endswith("/plan"):
            ds = plan.split("/")[1]
            for rel, value, _ in store.range(f"ds/{ds}/claim/"):
                out[(ds, rel.rsplit("/", 1)[1])] = value
    return out


def _free_again(store: Store, ds: str, sid: str, attempt: str) -> bool:
    """The attempt's claim is gone and the slice is back in todo (or already taken up again)."""
    claim = store.get_value(f"ds/{ds}/claim/{sid}")
    if claim is not None and claim.get("at") == attempt:
        return False
    return claim is not None or store.get_value(f"ds/{ds}/todo/{sid}") is not None or \
        store.get_value(f"ds/{ds}/done/{sid}") is not None


def _report(state_dir, job_id):
    with open(os.path.join(state_dir, "jobs", job_id, "report.json")) as f:
        return json.load(f)


def _status(job_id, *args):
    r = run_aimaster("status", "--job-id", job_id, "--json", *args)
    assert r.returncode == 0, r.stderr
    return {w["worker_id"]: w for w in json.loads(r.stdout)["workers"]}


def test_sigterm_gives_the_slice_back_at_once_and_is_no_failure(tmp_path):
    inputs = make_files(str(tmp_path / "in"), 120)
    state, out = tmp_path / "state", tmp_path / "out"
    log = open(tmp_path / "master.log", "w+")
    proc = subprocess.Popen(
        aimaster_cmd("run", "-n", "2", "--job-id", "pre", "--state-dir", str(state), "--quiet", "--lease-ttl", TTL,
                     "--fault-tolerant-policy", "Never", "--slow-worker-multiplier", "0", "--",
                     sys.executable, WORKER, str(tmp_path / "in"), str(out), "10"),
        env=clean_env({"FILE_SLEEP": "0.05"}), stdout=log, stderr=subprocess.STDOUT)
    store = None
    try:
        info = wait_for(lambda: (state / "jobs/pre/etcd.json").exists()
                        and json.loads((state / "jobs/pre/etcd.json").read_text() or "{}"), what="etcd.json")
        store = Store(EtcdConfig([f"127.0.0.1:{info['port']}"], retry_seconds=20), job_prefix("pre"))
        (ds, sid), claim = wait_for(lambda: next(((k, v) for k, v in _claims(store).items() if v["w"] == "w0"), None),
                                    timeout=60, what="w0 to hold a slice")
        pid = store.get_value("workers/w0")["pid"]
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: _free_again(store, ds, sid, claim["at"]), timeout=FREE_WITHIN,
                 what=f"slice {sid} to be free again well before the {TTL}s lease TTL")
        wait_for(lambda: not pid_alive(pid), timeout=FREE_WITHIN, what="the preempted worker to exit")
        assert store.get_value("workers/w0") is None  # its lease was revoked, not left to expire
        todo = store.get_value(f"ds/{ds}/todo/{sid}")
        if todo is not None:  # not taken up again yet: the preempted attempt is not counted
            assert todo["a"] == claim["a"] - 1
        assert proc.wait(180) == 0, (tmp_path / "master.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        if store is not None:
            store.close()
    assert_exactly_once(str(out), inputs)
    report = _report(state, "pre")
    assert report["state"] == "Succeeded" and report["relaunches"] == {"preempted": 1}, report["relaunches"]
    [w0] = [e for e in report["worker_exits"] if e["worker"] == "w0"]
    assert w0["exit"] == 0 and w0["preempted"] is True and "error" not in w0, w0
    assert any(w["worker_id"] == "w0-r1" for w in report["workers"])  # relaunched in its slot
    assert "preempted" in (tmp_path / "master.log").read_text()
    err = (state / "jobs/pre/logs/worker-0.err").read_text()
    assert "aimaster: worker w0 preempted (SIGTERM): gave back 1 slice(s)" in err, err
    rows = _status("pre", "--state-dir", str(state))
    assert rows["w0"]["left"] == "preempted" and rows["w1"]["left"] is None, rows
    text = run_aimaster("status", "--job-id", "pre", "--state-dir", str(state)).stdout
    assert [line for line in text.splitlines() if line.strip().startswith("w0 ")][0].endswith("preempted"), text


def _start_master(tmp_path, etcd, job_id, *extra, env=None):
    """A master with no workers of its own (``-n 0``): every worker of the job joins."""
    log = open(tmp_path / "master.log", "w+")
    return subprocess.Popen(
        aimaster_cmd("run", "-n", "0", "--etcd", etcd.endpoint, "--job-id", job_id, "--state-dir",
                     str(tmp_path / "state"), "--quiet", "--lease-ttl", TTL, "--slow-worker-multiplier", "0",
                     *extra, "--", sys.executable, WORKER, str(tmp_path / "in"), str(tmp_path / "out"), "10"),
        env=clean_env(env), stdout=log, stderr=subprocess.STDOUT)


def _start_joiner(tmp_path, etcd, job_id, n, env=None, name="joiner"):
    store = Store(EtcdConfig([etcd.endpoint], retry_seconds=20), job_prefix(job_id))
    try:
        wait_for(lambda: store.get_value("job"), timeout=60, what="the job record")
    finally:
        store.close()
    log = open(tmp_path / f"{name}.log", "w+")
    return subprocess.Popen(
        aimaster_cmd("join", "-n", str(n), "--etcd", etcd.endpoint, "--job-id", job_id, "--state-dir",
                     str(tmp_path / name), "--quiet", "--lease-ttl", TTL, "--",
                     sys.executable, WORKER, str(tmp_path / "in"), str(tmp_path / "out"), "10"),
        env=clean_env(env), stdout=log, stderr=subprocess.STDOUT)


def _joined(store: Store):
    """{worker id: registration} of workers an `aimaster join` launched."""
    return {rel[len("workers/"):]: v for rel, v, _ in store.range("workers/")
            if str(v.get("launcher", "")).startswith("join:")}


def test_sigterm_to_join_gives_back_the_slices_of_all_its_workers(tmp_path, etcd, job_id):
    inputs = make_files(str(tmp_path / "in"), 300)
    env = {"FILE_SLEEP": "0.03"}
    master = _start_master(tmp_path, etcd, job_id, "--fault-tolerant-policy", "Never", env=env)
    joiner = _start_joiner(tmp_path, etcd, job_id, 2, env=env)
    store = Store(EtcdConfig([etcd.endpoint], retry_seconds=20), job_prefix(job_id))
    finisher = None
    try:
        def joined_holding():
            joined = _joined(store)
            held = {v["w"]: (k, v) for k, v in _claims(store).items() if v["w"] in joined}
            return (joined, held) if len(joined) == 2 and len(held) == 2 else None

        joined, held = wait_for(joined_holding, timeout=90, what="both joined workers to hold a slice")
        joiner.send_signal(signal.SIGTERM)
        for wid, ((ds, sid), claim) in held.items():
            wait_for(lambda ds=ds, sid=sid, claim=claim: _free_again(store, ds, sid, claim["at"]),
                     timeout=FREE_WITHIN, what=f"{wid}'s slice {sid} to be free again well before the TTL")
        assert joiner.wait(60) == 130, (tmp_path / "joiner.log").read_text()  # the joiner itself: Stopped
        assert not any(pid_alive(v["pid"]) for v in joined.values())
        finisher = _start_joiner(tmp_path, etcd, job_id, 1, env=env, name="finisher")  # another host comes
        assert master.wait(180) == 0, (tmp_path / "master.log").read_text()
        assert finisher.wait(60) == 0, (tmp_path / "finisher.log").read_text()
    finally:
        for p in (master, joiner, finisher):
            if p is None:
                continue
            if p.poll() is None:
                p.kill()
        store.close()
    assert_exactly_once(str(tmp_path / "out"), inputs)
    exits = {e["worker"]: e for e in _report(tmp_path / "joiner", job_id)["worker_exits"]}
    assert {w: (e["exit"], e.get("stopped"), e.get("error")) for w, e in exits.items()} == \
        {w: (0, "preempted", None) for w in joined}, exits
    rows = _status(job_id, "--etcd", etcd.endpoint)
    assert {w: rows[w]["left"] for w in joined} == {w: "preempted" for w in joined}, rows
    report = _report(tmp_path / "state", job_id)
    assert report["state"] == "Succeeded" and report["relaunches"] == {}, report


def test_a_hung_joined_worker_is_killed_through_a_stop_request(tmp_path, etcd, job_id):
    """The master's hang detection covers joined workers; it cannot signal them, so it asks their
    `aimaster join`, which kills the worker and relaunches it under the job's policy."""
    inputs = make_files(str(tmp_path / "in"), 300)
    env = {"FILE_SLEEP": "0.03"}
    master = _start_master(tmp_path, etcd, job_id, "--enable-job-hang-detection", "--job-hang-interval", "5", env=env)
    joiner = _start_joiner(tmp_path, etcd, job_id, 2, env=env)
    store = Store(EtcdConfig([etcd.endpoint], retry_seconds=20), job_prefix(job_id))
    victim = None
    try:
        def joined_holding():
            joined = _joined(store)
            held = [v["w"] for v in _claims(store).values() if v["w"] in joined]
            return (held[0], joined[held[0]]) if held else None

        victim, rec = wait_for(joined_holding, timeout=90, what="the joined worker to hold a slice")
        os.kill(rec["pid"], signal.SIGSTOP)  # hung, holding a slice; its lease (30 s) outlives the interval
        request = wait_for(lambda: store.get_value(f"stop/{victim}"), timeout=60, what="a stop request")
        assert request["signal"] == "KILL" and request["reason"] == "hang" and request["by"].startswith("master-")
        assert master.wait(180) == 0, (tmp_path / "master.log").read_text()
        assert joiner.wait(60) == 0, (tmp_path / "joiner.log").read_text()
    finally:
        for p in (master, joiner):
            if p.poll() is None:
                p.kill()
        if victim is not None and pid_alive(rec["pid"]):
            os.kill(rec["pid"], signal.SIGKILL)
        store.close()
    assert_exactly_once(str(tmp_path / "out"), inputs)
    assert "asking its aimaster join to kill it" in (tmp_path / "master.log").read_text()
    joined_log = (tmp_path / "joiner.log").read_text()
    assert f"worker {victim} (pid {rec['pid']}): master-" in joined_log and "asks to kill it (hang)" in joined_log
    report = _report(tmp_path / "joiner", job_id)
    assert report["relaunches"] == {"hang": 1}, report["relaunches"]
    [exit_] = [e for e in report["worker_exits"] if e["worker"] == victim]
    assert exit_["error"].startswith("hung (no progress for 5s)"), exit_


@pytest.mark.parametrize("target", ["process", "group"])
def test_sigterm_to_a_dataloader_worker_gives_back_its_readers_claims_too(tmp_path, etcd, job_id, target):
    """torch DataLoader readers are child processes claiming under ``<worker>.<pid>``: on SIGTERM to
    the worker, their claims go back too, at once, and nothing is left lost; a later worker finishes
    the job, exactly once. To the process alone (``kill PID``), or to its whole process group, as a
    supervisor sends it: then the readers die of it too, and PyTorch's SIGCHLD handler must not turn
    the clean exit into an error."""
    inputs = make_files(str(tmp_path / "in"), 120)
    env = clean_env({"AIMASTER_ETCD_ENDPOINTS": etcd.endpoint, "AIMASTER_JOB_ID": job_id,
                     "AIMASTER_LEASE_TTL": TTL, "BATCH_SLEEP": "0.2"})
    cmd = [sys.executable, program("torch_file_slices.py"), str(tmp_path / "in"), str(tmp_path / "out"), "5", "2"]
    proc = subprocess.Popen(cmd, env=dict(env, AIMASTER_WORKER_ID="tw"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    store = Store(EtcdConfig([etcd.endpoint], retry_seconds=20), job_prefix(job_id))
    try:
        def family(claims):
            return {k: v for k, v in claims.items() if v["w"] == "tw" or v["w"].startswith("tw.")}

        held = wait_for(lambda: (lambda f: f if any("." in v["w"] for v in f.values()) else None)(
            family(_claims(store))), timeout=90, what="a DataLoader reader to hold a slice")
        if target == "group":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=FREE_WITHIN)
        assert proc.returncode == 0, err
        assert "aimaster: worker tw preempted (SIGTERM)" in err and "Traceback" not in err, err
        [ds] = {ds for ds, _ in held}

        def settled():
            total = store.get_value(f"ds/{ds}/plan")["num_slices"]
            todo = len(store.range(f"ds/{ds}/todo/", keys_only=True))
            done = len(store.range(f"ds/{ds}/done/", keys_only=True))
            return not family(_claims(store)) and todo + done == total

        wait_for(settled, timeout=FREE_WITHIN, what="every slice the family held back in todo, none lost")
    finally:
        if proc.poll() is None:
            proc.kill()
        store.close()
    r = subprocess.run(cmd, env=dict(env, AIMASTER_WORKER_ID="tw2"), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    lines = []
    for name in sorted(os.listdir(tmp_path / "out")):
        if name.endswith(".txt"):
            lines += [line.split("\t")[0] for line in (tmp_path / "out" / name).read_text().splitlines()]
    assert sorted(lines) == sorted(inputs) and len(lines) == len(set(lines))
