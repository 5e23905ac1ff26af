"""Progress of a job: a live rich display on a terminal, periodic plain lines otherwise (CI, nohup)."""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from typing import Deque, Optional, TextIO, Tuple

from aimaster.master.monitor import JobView


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def progress_interval(default: float = 5.0) -> float:
    """Seconds between plain progress lines when not on a terminal (``AIMASTER_PROGRESS_INTERVAL``)."""
    try:
        value = float(os.environ.get("AIMASTER_PROGRESS_INTERVAL", default))
    except ValueError:
        return default
    return value if value > 0 else default


def items_done(view: JobView) -> int:
    """Items in committed slices (exact for a dataset whose slices are all full: done * slice size
    capped at its item count; the last, shorter slice makes it an estimate until the end)."""
    total = 0
    for d in view.datasets:
        if d.total:
            total += d.items if d.done >= d.total else min(d.items, round(d.items * d.done / d.total))
    return total


def worker_counts(running: int, starting: int, failed: int) -> str:
    return (f"workers {running - starting} alive / {starting} starting / {failed} failed")


class RateMeter:
    """Slices per second over a sliding window, for a rate and an ETA that follow the present."""

    def __init__(self, window: float = 30.0):
        self.window = window
        self.samples: Deque[Tuple[float, int]] = deque()

    def add(self, t: float, done: int) -> None:
        self.samples.append((t, done))
        while len(self.samples) > 2 and self.samples[0][0] < t - self.window:
            self.samples.popleft()

    @property
    def rate(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def eta(self, remaining: int) -> Optional[float]:
        r = self.rate
        return remaining / r if r > 0 else None


def summary_line(view: JobView, meter: RateMeter, workers_running: int, restarts: int, starting: int = 0,
                 failed_workers: int = 0, backups: int = 0) -> str:
    total, done, failed = view.total, view.done, view.failed
    pct = f"{100.0 * (done + failed) / total:5.1f}%" if total else "  -  "
    eta = meter.eta(total - done - failed) if total else None
    items = sum(d.items for d in view.datasets)
    return (f"[{view.job_id}] {view.state}: {done}/{total} slices {pct}, {items_done(view)}/{items} items"
            f"{f', {failed} failed' if failed else ''}, in flight {view.running}"
            f"{f' (+{backups} backups)' if backups else ''}, "
            f"{meter.rate:.1f} slices/s, ETA {format_duration(eta)}, "
            f"{worker_counts(workers_running, starting, failed_workers)}"
            f"{f', {restarts} relaunched' if restarts else ''}")


class ProgressDisplay:
    def __init__(self, stream: TextIO = sys.stderr, interval: float = 5.0, enabled: bool = True):
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.interval = interval
        self.meter = RateMeter()
        self._last_line = 0.0
        self._progress = None
        self._task = None
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("slices"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"),
                console=Console(file=stream), transient=False, refresh_per_second=4,
            )
            self._progress.start()
            self._task = self._progress.add_task("job", total=None, extra="starting")

    def update(self, view: JobView, workers_running: int, restarts: int, starting: int = 0,
               failed_workers: int = 0, backups: int = 0) -> None:
        now = time.time()
        self.meter.add(now, view.done + view.failed)
        if not self.enabled:
            return
        if self._progress is not None:
            items = sum(d.items for d in view.datasets)
            extra = (f"{items_done(view)}/{items} items  {self.meter.rate:.1f}/s  "
                     f"{worker_counts(workers_running, starting, failed_workers)}"
                     f"{f'  backups {backups}' if backups else ''}"
                     f"{f'  failed slices {view.failed}' if view.failed else ''}"
                     f"{f'  relaunched {restarts}' if restarts else ''}")
            self._progress.update(self._task, description=f"{view.job_id} {view.state}",
                                  total=view.total or None, completed=view.done + view.failed, extra=extra)
        elif now - self._last_line >= self.interval:
            self._last_line = now
            self.log(summary_line(view, self.meter, workers_running, restarts, starting, failed_workers, backups))

    def log(self, message: str) -> None:
        """Events (a worker died, the job resumed) are printed even when the progress display is off."""
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
