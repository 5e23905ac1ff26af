"""`aimaster run --launcher ray` on a real two-node Ray cluster made on this machine.

The cluster is Ray's own test helper (:class:`ray.cluster_utils.Cluster`): a head and one added node,
each a real raylet with its own worker processes. The added node is removed mid-job without grace
(its raylet and workers are killed), and the job must still end Succeeded with every input in
exactly one committed output, the lost workers relaunched on the node left, and no actor left behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from helpers import aimaster_cmd, assert_exactly_once, clean_env, make_files, program, run_aimaster, wait_for

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow
RECORDER = program("env_recorder.py")
# Node deaths noticed in about a second instead of fifteen (inherited by the cluster's GCS and raylets).
FAST_HEALTH = {"RAY_health_check_period_ms": "300", "RAY_health_check_failure_threshold": "3",
               "RAY_health_check_initial_delay_ms": "0"}


@pytest.fixture(scope="module")
def cluster():
    """A head (2 CPUs, 2 GPUs that Ray only accounts for) and an added node (2 CPUs)."""
    saved = {k: os.environ.get(k) for k in (*FAST_HEALTH, "CUDA_VISIBLE_DEVICES")}
    os.environ.update(FAST_HEALTH)
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)  # the raylet would take its GPU ids from it
    c = None
    try:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 2})
        node = c.add_node(num_cpus=2)
        c.wait_for_nodes()
        yield c, node
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if c is not None:
            c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _records(directory):
    return {name[:-5]: json.loads((directory / name).read_text()) for name in os.listdir(directory)
            if name.endswith(".json")}


def _live_actors(address):
    """Actors of the cluster that are not dead, as the GCS tells (our driver connected just for this)."""
    ray.init(address=address, log_to_driver=False)
    try:
        return [a for a in ray._private.state.actors().values() if a.get("State") != "DEAD"]
    finally:
        ray.shutdown()


def test_ray_places_gpus_and_the_workers_see_them(tmp_path, cluster):
    """Each actor gets its own GPU from Ray; the worker's CUDA_VISIBLE_DEVICES is the actor's, not the master's."""
    c, _ = cluster
    inp, out, rec = tmp_path / "in", tmp_path / "out", tmp_path / "rec"
    rec.mkdir()
    inputs = make_files(str(inp), 20)
    r = subprocess.run(aimaster_cmd("run", "-n", "2", "--launcher", "ray", "--ray-address", c.address,
                                    "--cpus-per-worker", "0.25", "--gpus-per-worker", "1", "--job-id", "raygpu",
                                    "--state-dir", str(tmp_path / "state"), "--quiet", "--", sys.executable,
                                    RECORDER, str(rec), str(inp), str(out), "5"),
                       env=clean_env({"CUDA_VISIBLE_DEVICES": "7"}), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    seen = _records(rec)
    gpus = sorted(seen[w]["gpus"] for w in ("w0", "w1"))
    assert gpus == ["0", "1"], seen  # the head's two GPUs, one each
    assert {x["ray_node"] for x in seen.values()} == {c.head_node.node_id}, seen  # only the head has GPUs
    assert_exactly_once(str(out), inputs)
    assert not _live_actors(c.address), "actors left behind"


def test_job_survives_losing_a_node(tmp_path, cluster):
    c, node = cluster
    inp, out, rec, state = tmp_path / "in", tmp_path / "out", tmp_path / "rec", tmp_path / "state"
    rec.mkdir()
    inputs = make_files(str(inp), 200)
    cmd = aimaster_cmd("run", "-n", "4", "--launcher", "ray", "--ray-address", c.address, "--cpus-per-worker",
                       "0.5", "--lease-ttl", "3", "--job-id", "ray", "--state-dir", str(state), "--quiet", "--",
                       sys.executable, RECORDER, str(rec), str(inp), str(out), "5")
    log_path = tmp_path / "master.log"
    with open(log_path, "w+") as log:
        env = clean_env({"FILE_SLEEP": "0.05", "HOLD_AFTER": "2", **FAST_HEALTH})
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            first = wait_for(lambda: len(_records(rec)) >= 4 and _records(rec), timeout=90, what="4 workers")
            on_node = sorted(w for w, r in first.items() if r["ray_node"] == node.node_id)
            assert on_node and len(on_node) < 4, f"SPREAD put {on_node} of {sorted(first)} on the added node"
            wait_for(lambda: out.exists() and any(n.endswith(".txt") for n in os.listdir(out)), timeout=60,
                     what="a first commit")
            c.remove_node(node, allow_graceful=False)
            # Each worker lost with the node comes back in its slot, on the head: the job goes on.
            def relaunches():
                found = [r for w, r in _records(rec).items() if "-r" in w and w.split("-r")[0] in on_node]
                return found if len(found) >= len(on_node) else None

            relaunched = wait_for(relaunches, timeout=90, what=f"{on_node} relaunched")
            assert {r["ray_node"] for r in relaunched} == {c.head_node.node_id}, relaunched
            (rec / "go").touch()  # let the job finish
            assert proc.wait(120) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert_exactly_once(str(out), inputs)
    report = json.loads((state / "jobs" / "ray" / "report.json").read_text())
    assert report["state"] == "Succeeded", report
    text = log_path.read_text()
    assert "launcher: ray (2 node(s)" in text, text
    assert not _live_actors(c.address), "actors left behind"
    logs = (state / "jobs" / "ray" / "logs" / f"worker-{on_node[0][1:]}.err").read_text()
    assert "Ray actor of" in logs and "is gone" in logs, logs  # the loss is in the worker's own log
    out_log = (state / "jobs" / "ray" / "logs" / "worker-0.out").read_text()
    assert "committed" in out_log, out_log  # the actors' output reached the master's files


def test_no_reachable_cluster_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    r = run_aimaster("run", "--launcher", "ray", "--ray-address", f"127.0.0.1:{port}", "--state-dir", str(tmp_path),
                     "--", sys.executable, "-c", "pass", timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"no Ray cluster at --ray-address 127.0.0.1:{port}" in lines[0], r.stderr
