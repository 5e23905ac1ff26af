"""The Prometheus endpoint of a real job: names by Prometheus' conventions, and the end stays scrapable.

One ``aimaster run --metrics-port`` whose worker dies once of an environment error (a real exit 75,
relaunched): scraped after the job ended, during ``--metrics-grace``, the endpoint shows how it
ended. Counters end in ``_total``, the job is labelled ``job_id`` (never ``job``), the total number
of slices is not a ``state`` beside its parts, and a relaunched worker keeps its slot's label.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request

from helpers import aimaster_cmd, clean_env, make_files, program, wait_for

from aimaster.data.etcd_server import free_port
from aimaster.metrics import worker_slot


def _scrape(port: int):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None


def _families(text: str):
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def test_metrics_names_and_the_final_values_after_the_end(tmp_path):
    port = free_port()
    make_files(str(tmp_path / "in"), 200)
    (tmp_path / "markers").mkdir()
    cmd = aimaster_cmd("run", "-n", "2", "--job-id", "m", "--state-dir", str(tmp_path / "state"), "--quiet",
                       "--metrics-port", str(port), "--metrics-grace", "120", "--",
                       sys.executable, program("flaky_worker.py"), str(tmp_path / "in"), str(tmp_path / "out"), "5")
    env = clean_env({"FLAKY_ERRORS": "EIO", "FLAKY_MARKERS": str(tmp_path / "markers"), "FILE_SLEEP": "0.05"})
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ended = 'aimaster_job_state{job_id="m",state="Succeeded"} 1.0'
        text = wait_for(lambda: (lambda t: t if t and ended in t else None)(_scrape(port)), timeout=120,
                        what="the job's end on the metrics endpoint")
        assert proc.poll() is None, "the endpoint is served on after the end (--metrics-grace)"
        proc.send_signal(signal.SIGINT)  # Ctrl-C ends the grace period
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "serving the final values for 120s more" in stderr

    families = _families(text)
    samples = _samples(text)
    assert samples
    # Counters: every sample of a counter family is NAME_total.
    counters = [re.sub(r"_total$", "", name) for name, kind in families.items() if kind == "counter"]
    for name in ("aimaster_slices_committed", "aimaster_items_committed", "aimaster_relaunches",
                 "aimaster_copies_started", "aimaster_copies_won", "aimaster_copies_lost",
                 "aimaster_worker_slices_committed", "aimaster_attempts"):
        assert name in counters, (name, families)
    for sample, _, _ in samples:
        family = max((c for c in counters if sample.startswith(c + "_")), key=len, default=None)
        assert family is None or sample == f"{family}_total", sample
    # No label named job (Prometheus attaches its own), no total beside its parts.
    assert not any("job" in labels for _, labels, _ in samples), "a label named job"
    assert not any(labels.get("state") == "total" for _, labels, _ in samples)

    def value(name, **labels):
        found = [v for n, lab, v in samples if n == name and lab == {"job_id": "m", **labels}]
        assert len(found) == 1, (name, labels, [s for s in samples if s[0] == name])
        return found[0]

    assert value("aimaster_job_state", state="Succeeded") == 1.0
    assert value("aimaster_slices_planned") == 40.0
    assert value("aimaster_slices", state="committed") == 40.0
    assert value("aimaster_slices_committed_total") == 40.0
    assert value("aimaster_items_committed_total") == 200.0
    assert value("aimaster_relaunches_total", cause="exit:75") == 1.0
    for name in ("started", "won", "lost"):
        assert value(f"aimaster_copies_{name}_total") >= 0
    # The relaunched worker's slot keeps its label; its incarnation is apart.
    per_worker = {lab["worker"]: v for n, lab, v in samples if n == "aimaster_worker_slices_committed_total"}
    assert set(per_worker) == {"w0", "w1"}, per_worker
    assert sum(per_worker.values()) == 40.0
    generations = {lab["worker"]: v for n, lab, v in samples if n == "aimaster_worker_generation"}
    assert sorted(generations.values()) == [0.0, 1.0], generations


def _samples(text: str):
    """(name, labels, value) of every sample in Prometheus' text format."""
    out = []
    for name, labels, value in re.findall(r"^(\w+)(?:\{([^}]*)\})? (\S+)$", text, re.M):
        out.append((name, dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value)))
    return out


def test_worker_slot_labels():
    assert worker_slot("w0") == ("w0", 0)
    assert worker_slot("w3-r2") == ("w3", 2)
    assert worker_slot("w1-r4g2") == ("w1g2", 4)
    assert worker_slot("w0g53127") == ("w0g53127", 0)
    assert worker_slot("master-host-12") == ("master-host-12", 0)
