"""Prometheus metrics of a running job, served by the master (``aimaster run --metrics-port P``).

The numbers come from the same :class:`~aimaster.master.monitor.JobView` that drives the progress
display and ``aimaster status``, so the three never disagree. ``prometheus_client`` is an optional
dependency (``pip install aimaster[metrics]``), imported only when the endpoint is enabled.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

from aimaster.errors import ConfigError

# Claim and commit latencies span sub-millisecond (local etcd) to seconds (a remote, loaded cluster).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class JobMetrics:
    """Gauges and counters of one job in a private registry, exported over HTTP."""

    def __init__(self, job_id: str, port: int, addr: str = "0.0.0.0"):
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigError("--metrics-port needs prometheus_client: pip install 'aimaster[metrics]'")
        self.job_id = job_id
        self.registry = prom.CollectorRegistry()
        labels = ["job"]

        def gauge(name, doc, extra=()):
            return prom.Gauge(name, doc, labels + list(extra), registry=self.registry)

        self.slices = gauge("aimaster_slices", "Slices of the job by state", ["state"])
        self.items_per_second = gauge("aimaster_items_per_second", "Items committed per second (recent)")
        self.slices_per_second = gauge("aimaster_slices_per_second", "Slices committed per second (recent)")
        self.workers = gauge("aimaster_workers", "Workers by state", ["state"])
        self.worker_slices = gauge("aimaster_worker_slices_committed", "Slices committed per worker", ["worker"])
        self.attempts = prom.Counter("aimaster_attempts", "Slice attempts observed by the master", labels,
                                     registry=self.registry)
        self.backups = gauge("aimaster_backups", "Backup and speculative attempts", ["outcome"])
        self.relaunches = gauge("aimaster_relaunches", "Worker relaunches by cause", ["cause"])
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

    def update(self, view, rates: Optional[Dict[str, float]] = None, relaunches: Optional[Dict[str, int]] = None,
               backups: Optional[Dict[str, int]] = None) -> None:
        """Refresh every gauge from a job view (called by the master on each loop)."""
        j = self.job_id
        for state, value in (("total", view.total), ("committed", view.done), ("failed", view.failed),
                             ("in_flight", view.running), ("waiting", sum(d.todo for d in view.datasets))):
            self.slices.labels(j, state).set(value)
        alive = sum(1 for w in view.workers if w.alive)
        self.workers.labels(j, "alive").set(alive)
        self.workers.labels(j, "gone").set(len(view.workers) - alive)
        for w in view.workers:
            self.worker_slices.labels(j, w.worker_id).set(w.slices)
        for name, value in (rates or {}).items():
            getattr(self, name).labels(j).set(value)
        for cause, n in (relaunches or {}).items():
            self.relaunches.labels(j, cause).set(n)
        for outcome, n in (backups or {}).items():
            self.backups.labels(j, outcome).set(n)

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

    def close(self) -> None:
        server = self._server
        if isinstance(server, tuple) and server:
            server[0].shutdown()
