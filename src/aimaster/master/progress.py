"""Progress of a job: one live line on a terminal, periodic plain lines otherwise (CI, nohup)."""

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


def _width(stream: TextIO) -> int:
    """Columns of the terminal: ``$COLUMNS`` if set (as every terminal program honours), else the tty's."""
    try:
        return max(20, int(os.environ["COLUMNS"]))
    except (KeyError, ValueError):
        pass
    try:
        return max(20, os.get_terminal_size(stream.fileno()).columns)
    except (AttributeError, OSError, ValueError):
        return 80


def _rate(value: float, unit: str) -> str:
    return f"{value:.1f} {unit}/s" if value < 100 else f"{value:,.0f} {unit}/s"


def live_line(view: JobView, meter: RateMeter, width: int, workers_running: int = 0, restarts: int = 0,
              starting: int = 0, failed_workers: int = 0, backups: int = 0, elapsed: Optional[float] = None) -> str:
    """The one-line live display, fitted to ``width`` columns (the last column is left free, so that
    no terminal wraps it): the least important fields are dropped first, the bar takes what is left.

    Failed slices are counted apart from committed ones: ``180/400 slices`` are committed, ``3 failed``
    are given up on; the bar shows both (``#`` committed, ``x`` failed).
    """
    total, done, failed = view.total, view.done, view.failed
    items = sum(d.items for d in view.datasets)
    rate = meter.rate
    eta = meter.eta(total - done - failed) if total else None
    items_rate = rate * items / total if total else 0.0
    # (position on the line, importance: lower is kept longer, text); "BAR" is drawn to fit at the end
    fields = [(0, 0, f"{view.state} {100.0 * done / total:.0f}%" if total else view.state),
              (3, 0, f"{done}/{total} slices" if total else "planning")]
    if failed:
        fields.append((4, 1, f"{failed} failed"))
    if total:
        fields += [(5, 2, _rate(rate, "slices")), (6, 3, _rate(items_rate, "items")),
                   (7, 4, f"ETA {format_duration(eta)}"), (2, 5, "BAR")]
    alive = workers_running - starting
    fields.append((8, 6, f"{alive} worker{'s' if alive != 1 else ''}"
                         f"{f' (+{starting} starting)' if starting else ''}"))
    if failed_workers:
        fields.append((9, 7, f"{failed_workers} worker failure{'s' if failed_workers != 1 else ''}"))
    if restarts:
        fields.append((10, 7, f"{restarts} relaunched"))
    if backups:
        fields.append((11, 8, f"{backups} cop{'ies' if backups != 1 else 'y'}"))
    if elapsed is not None:
        fields.append((12, 9, format_duration(elapsed)))
    fields.append((13, 10, view.job_id))
    room = width - 1
    min_bar = 12  # "[" + 10 cells + "]"

    def size(chosen) -> int:
        return sum(min_bar if t == "BAR" else len(t) for _, _, t in chosen) + 2 * (len(chosen) - 1)

    kept: list = []
    for f in sorted(fields, key=lambda f: f[1]):
        if size(kept + [f]) > room:
            break  # this field and every less important one are dropped
        kept.append(f)
    kept.sort()
    cells = min_bar - 2 + min(room - size(kept), 30)
    n_done = cells * done // total if total else 0
    n_failed = min(cells - n_done, -(-cells * failed // total)) if failed else 0
    bar = "[" + "#" * n_done + "x" * n_failed + "-" * (cells - n_done - n_failed) + "]"
    line = "  ".join(bar if t == "BAR" else t for _, _, t in kept)
    return line[:room]


class ProgressDisplay:
    """The live line on a terminal (redrawn in place with ``\\r`` and erase-line), plain lines otherwise.

    Events (:meth:`log`) are printed above the live line: it is erased, the message written, the line
    redrawn, so a message is never glued to it. :meth:`close` erases it for good, so that whatever the
    job prints at its end (the summary) starts on a clean line and no stale frame follows it.
    """

    ERASE = "\r\x1b[K"

    def __init__(self, stream: TextIO = sys.stderr, interval: float = 5.0, enabled: bool = True):
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.interval = interval
        self.meter = RateMeter()
        self.started = time.time()
        self._last_line = 0.0
        self._live: Optional[str] = None  # the live line on screen now (tty only)
        self.closed = False

    def update(self, view: JobView, workers_running: int, restarts: int, starting: int = 0,
               failed_workers: int = 0, backups: int = 0) -> None:
        now = time.time()
        self.meter.add(now, view.done + view.failed)
        if not self.enabled or self.closed:
            return
        if self.tty:
            self._live = live_line(view, self.meter, _width(self.stream), workers_running, restarts, starting,
                                   failed_workers, backups, elapsed=now - self.started)
            self._write(self.ERASE + self._live)
        elif now - self._last_line >= self.interval:
            self._last_line = now
            self.log(summary_line(view, self.meter, workers_running, restarts, starting, failed_workers, backups))

    def log(self, message: str) -> None:
        """Events (a worker died, the job resumed) are printed even when the progress display is off."""
        if self._live is not None:
            self._write(self.ERASE + message + "\n" + self._live)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        """Erase the live line (idempotent): what follows is printed on a clean line."""
        if self._live is not None:
            self._write(self.ERASE)
        self._live = None
        self.closed = True

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: the job goes on
            pass
