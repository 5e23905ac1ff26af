"""Prometheus metrics of a running job, served by the master (``aimaster run --metrics-port P``).

The numbers come from the same :class:`~aimaster.master.monitor.JobView` that drives the progress
display and ``aimaster status``, so the three never disagree. ``prometheus_client`` is an optional
dependency (``pip install aimaster[metrics]``), imported only when the endpoint is enabled.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Dict, Iterable, Optional, Tuple

from aimaster.errors import ConfigError
from aimaster.master.job_state import JobState
from aimaster.master.progress import items_done

# Claim and commit latencies span sub-millisecond (local etcd) to seconds (a remote, loaded cluster).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class JobMetrics:
    """Gauges and counters of one job in a private registry, exported over HTTP.

    Names follow Prometheus' conventions: counters end in ``_total`` (``prometheus_client`` adds the
    suffix to a Counter's name) and only ever go up; a gauge's parts are never summed with their
    total beside them (``aimaster_slices{state}`` are the parts, ``aimaster_slices_planned`` the
    total); the job is labelled ``job_id``, since ``job`` is the label Prometheus itself attaches
    to every scraped series. ``worker`` is the worker's *slot* (``w0``), stable across its
    relaunches; which incarnation runs in it now is ``aimaster_worker_generation``.
    """

    def __init__(self, job_id: str, port: int, addr: str = "0.0.0.0"):
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigError("--metrics-port needs prometheus_client: pip install 'aimaster[metrics]'")
        if hasattr(prom, "disable_created_metrics"):  # counters are NAME_total only, no NAME_created beside
            prom.disable_created_metrics()
        self.job_id = job_id
        self.registry = prom.CollectorRegistry()
        labels = ["job_id"]
        self._seen: Dict[Tuple[Any, ...], float] = {}  # counter series -> the absolute value fed so far

        def gauge(name, doc, extra=()):
            return prom.Gauge(name, doc, labels + list(extra), registry=self.registry)

        def counter(name, doc, extra=()):
            return prom.Counter(name, doc, labels + list(extra), registry=self.registry)

        self.job_state = gauge("aimaster_job_state", "1 for the job's current state, 0 for the others", ["state"])
        self.slices_planned = gauge("aimaster_slices_planned", "Slices planned for the job")
        self.slices = gauge("aimaster_slices", "Slices of the job by state (the parts of aimaster_slices_planned)",
                            ["state"])
        self.slices_committed = counter("aimaster_slices_committed", "Slices committed")
        self.items_committed = counter("aimaster_items_committed", "Items in committed slices")
        self.items_per_second = gauge("aimaster_items_per_second", "Items committed per second (recent)")
        self.slices_per_second = gauge("aimaster_slices_per_second", "Slices committed per second (recent)")
        self.workers = gauge("aimaster_workers", "Workers by state", ["state"])
        self.worker_slices = counter("aimaster_worker_slices_committed",
                                     "Slices committed per worker slot (all its incarnations)", ["worker"])
        self.worker_generation = gauge("aimaster_worker_generation",
                                       "Incarnation of the worker in this slot (0: never relaunched)", ["worker"])
        self.attempts = counter("aimaster_attempts", "Slice attempts committed, as observed by the master")
        self.relaunches = counter("aimaster_relaunches", "Worker relaunches by cause", ["cause"])
        self.copies_started = counter("aimaster_copies_started", "Speculative copies of slices started")
        self.copies_won = counter("aimaster_copies_won", "Speculative copies whose commit won")
        self.copies_lost = counter("aimaster_copies_lost", "Speculative copies whose commit lost")
        self.copies_in_flight = gauge("aimaster_copies_in_flight", "Speculative copies running now")
        self.claim_latency = prom.Histogram("aimaster_claim_seconds", "Latency of claiming a slice", labels,
                                            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.commit_latency = prom.Histogram("aimaster_commit_seconds", "Latency of committing a slice", labels,
                                             buckets=LATENCY_BUCKETS, registry=self.registry)
        self.slice_seconds = prom.Histogram("aimaster_slice_seconds", "Time from claim to commit of a slice",
                                            labels, registry=self.registry,
                                            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800))
        try:
            self._server = prom.start_http_server(port, addr=addr, registry=self.registry)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {addr}:{port}: {e.strerror or e}")

    def _count(self, metric, value: float, *labels: str) -> None:
        """Bring a counter up to an absolute value read from etcd (it never goes down)."""
        key = (id(metric), *labels)
        delta = value - self._seen.get(key, 0)
        if delta > 0:
            metric.labels(self.job_id, *labels).inc(delta)
            self._seen[key] = value
        elif key not in self._seen:
            metric.labels(self.job_id, *labels)  # the series exists from the start, at 0
            self._seen[key] = 0

    def set_state(self, state: str) -> None:
        for s in (member.value for member in JobState):
            self.job_state.labels(self.job_id, s).set(1 if s == state else 0)

    def update(self, view, rates: Optional[Dict[str, float]] = None, relaunches: Optional[Dict[str, int]] = None,
               backups: Optional[Dict[str, int]] = None) -> None:
        """Refresh every series from a job view (called by the master on each loop)."""
        j = self.job_id
        self.set_state(view.state)
        self.slices_planned.labels(j).set(view.total)
        for state, value in (("committed", view.done), ("failed", view.failed), ("in_flight", view.running),
                             ("waiting", sum(d.todo for d in view.datasets))):
            self.slices.labels(j, state).set(value)
        self._count(self.slices_committed, view.done)
        self._count(self.items_committed, items_done(view))
        alive = sum(1 for w in view.workers if w.alive)
        self.workers.labels(j, "alive").set(alive)
        self.workers.labels(j, "gone").set(len(view.workers) - alive)
        per_slot: Dict[str, int] = {}
        current: Dict[str, int] = {}
        for w in view.workers:
            slot, incarnation = worker_slot(w.worker_id)
            per_slot[slot] = per_slot.get(slot, 0) + w.slices
            current[slot] = max(incarnation, current.get(slot, 0))  # the latest incarnation runs now
        for slot, n in per_slot.items():
            self._count(self.worker_slices, n, slot)
            self.worker_generation.labels(j, slot).set(current[slot])
        for name, value in (rates or {}).items():
            getattr(self, name).labels(j).set(value)
        for cause, n in (relaunches or {}).items():
            self._count(self.relaunches, n, cause)
        b = backups or {}
        self.copies_in_flight.labels(j).set(b.get("in_flight", 0))
        for name, metric in (("started", self.copies_started), ("won", self.copies_won), ("lost", self.copies_lost)):
            self._count(metric, b.get(name, 0))

    def observe_commits(self, records: Iterable[Dict[str, Any]]) -> None:
        """Feed newly seen commit records (their claim-to-commit time ``dt``, their latencies)."""
        j = self.job_id
        for rec in records:
            self.attempts.labels(j).inc()
            dt = rec.get("dt")
            if isinstance(dt, (int, float)) and dt >= 0:
                self.slice_seconds.labels(j).observe(dt)
            for key, hist in (("lc", self.claim_latency), ("lm", self.commit_latency)):
                v = rec.get(key)
                if isinstance(v, (int, float)) and v >= 0:
                    hist.labels(j).observe(v)

    def linger(self, seconds: float, state: Optional[str], interrupted: Optional[threading.Event] = None,
               say=None) -> None:
        """Serve the final values ``seconds`` longer, so that the next scrape sees how the job ended
        (a job shorter than the scrape interval would otherwise never be seen ending). Returns at once
        when ``interrupted`` is set (Ctrl-C)."""
        if state:
            self.set_state(state)
        if seconds <= 0 or (interrupted is not None and interrupted.is_set()):
            return
        if say is not None:
            say(f"metrics: serving the final values for {seconds:g}s more (--metrics-grace; Ctrl-C ends it now)")
        (interrupted or threading.Event()).wait(seconds)

    def close(self) -> None:
        server = self._server
        if isinstance(server, tuple) and server:
            server[0].shutdown()
            server[0].server_close()


_WORKER_ID = re.compile(r"^(w\d+)(?:-r(\d+))?(g\d+)?$")


def worker_slot(worker_id: str) -> Tuple[str, int]:
    """The stable label of a worker (its slot: ``w0``, ``w0g2`` in a resumed run's second generation)
    and its incarnation in that slot, from its id (``w0-r3g2``: slot ``w0g2``, incarnation 3).
    An id of another form is its own slot."""
    m = _WORKER_ID.match(worker_id)
    if not m:
        return worker_id, 0
    return m.group(1) + (m.group(3) or ""), int(m.group(2) or 0)
