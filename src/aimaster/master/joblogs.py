"""``aimaster logs``: the workers' output of a job, from its state directory, in time order.

Each worker slot has two files (``logs/worker-N.out`` and ``.err``, rotated into ``.1``, ``.2``, ...),
every line stamped by the log pump with the time it was read (:mod:`aimaster.master.logpump`). This
reads them oldest first, merges stdout and stderr by those stamps, and prints each line prefixed
the way ``--tee`` does (``[w0]`` stdout, ``[w0!]`` stderr), so a crash's traceback lands next to what
the worker printed just before it; the separator lines show where one incarnation of a slot ends and
its relaunch begins. ``--follow`` goes on printing what the workers write until the run ends.
"""

from __future__ import annotations

import heapq
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Tuple

from aimaster.errors import ConfigError, JobError
from aimaster.master.logpump import STAMP
from aimaster.master.state_dir import JobStateDir

_LOG = re.compile(r"^worker-(\d+)\.(out|err)((?:\.\d+)?)$")
_WORKER = re.compile(r"^w?(\d+)(?:-r\d+)?(?:g\d+)?$")


def parse_worker(worker: str) -> int:
    """The slot of ``--worker``: ``0``, ``w0``, or any worker id of that slot (``w0-r2``)."""
    m = _WORKER.match(worker.strip())
    if not m:
        raise ConfigError(f"--worker {worker!r}: expected a slot number or a worker id such as w0 or w0-r2")
    return int(m.group(1))


def slots(log_dir: str) -> List[int]:
    try:
        names = os.listdir(log_dir)
    except OSError:
        return []
    return sorted({int(m.group(1)) for m in map(_LOG.match, names) if m})


def _files(log_dir: str, slot: int, stream: str) -> List[str]:
    """The slot's files of one stream, oldest first (``.3``, ``.2``, ``.1``, then the current one)."""
    base = os.path.join(log_dir, f"worker-{slot}.{stream}")
    rotated = []
    try:
        for name in os.listdir(log_dir):
            m = _LOG.match(name)
            if m and int(m.group(1)) == slot and m.group(2) == stream and m.group(3):
                rotated.append((int(m.group(3)[1:]), os.path.join(log_dir, name)))
    except OSError:
        return []
    return [p for _, p in sorted(rotated, reverse=True)] + ([base] if os.path.exists(base) else [])


@dataclass
class _Stream:
    """One slot's stdout or stderr, read incrementally (for --follow) from its current file."""

    slot: int
    name: str  # "out" or "err"
    path: str
    offset: int = 0
    partial: bytes = b""
    last_stamp: str = field(default="")

    @property
    def tag(self) -> str:
        return f"[w{self.slot}{'!' if self.name == 'err' else ''}]"

    def read_new(self) -> List[Tuple[str, str]]:
        """(stamp, line) of every whole line written since the last call."""
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return []
        if size < self.offset:  # rotated since: the new file starts from 0
            self.offset, self.partial = 0, b""
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        self.offset += len(data)
        data = self.partial + data
        cut = data.rfind(b"\n")
        if cut < 0:
            self.partial = data
            return []
        self.partial = data[cut + 1:]
        return self._lines(data[:cut].decode("utf-8", "replace").split("\n"))

    def _lines(self, lines: List[str]) -> List[Tuple[str, str]]:
        out = []
        for line in lines:
            m = STAMP.match(line)
            if m:
                self.last_stamp = line[:m.end() - 1]
            out.append((self.last_stamp, line))  # a line without a stamp keeps the one before it
        return out


def _read_all(paths: List[str], stream: _Stream) -> List[Tuple[str, str]]:
    lines: List[Tuple[str, str]] = []
    for path in paths[:-1]:
        try:
            with open(path, "rb") as f:
                lines += stream._lines(f.read().decode("utf-8", "replace").splitlines())
        except OSError:
            continue
    lines += stream.read_new()
    return lines


def _merge(batches: List[Tuple[_Stream, List[Tuple[str, str]]]]) -> Iterator[str]:
    """Lines of several streams in stamp order (each stream is in order already)."""
    keyed = [[(stamp, i, n, f"{s.tag} {line}") for n, (stamp, line) in enumerate(lines)]
             for i, (s, lines) in enumerate(batches)]
    for _, _, _, text in heapq.merge(*keyed):
        yield text


def show_logs(state: JobStateDir, worker: Optional[str], follow: bool, echo: Callable[[str], None],
              interval: float = 0.5, should_stop: Optional[Callable[[], bool]] = None) -> int:
    """Print the job's worker logs; with ``follow``, keep printing until the run ends. Returns the
    number of lines printed."""
    if not state.exists():
        raise JobError(f"no job {state.job_id} in state directory {state.root}")
    wanted = slots(state.logs) if worker is None else [parse_worker(worker)]
    if worker is not None and wanted[0] not in slots(state.logs):
        raise JobError(f"job {state.job_id} has no logs of worker slot {wanted[0]} (slots: "
                       f"{', '.join(f'w{s}' for s in slots(state.logs)) or 'none yet'})")
    report_mtime = _mtime(state.report)
    running = state.running_etcd() is not None
    streams: List[_Stream] = []
    batches = []
    for slot in wanted:
        for name in ("out", "err"):
            paths = _files(state.logs, slot, name)
            s = _Stream(slot, name, os.path.join(state.logs, f"worker-{slot}.{name}"))
            streams.append(s)
            batches.append((s, _read_all(paths, s) if paths else []))
    printed = 0
    for text in _merge(batches):
        echo(text)
        printed += 1
    if not follow:
        return printed
    if not running and report_mtime is not None:
        echo(f"aimaster: job {state.job_id} is not running (its report is {state.report}); nothing to follow")
        return printed
    while True:
        over = _mtime(state.report) != report_mtime  # the run wrote its report: it ended
        if worker is None:  # slots that appear later (a relaunch never does; -n more on resume does)
            for slot in slots(state.logs):
                if all(s.slot != slot for s in streams):
                    streams += [_Stream(slot, n, os.path.join(state.logs, f"worker-{slot}.{n}"))
                                for n in ("out", "err")]
        for text in _merge([(s, s.read_new()) for s in streams]):
            echo(text)
            printed += 1
        if over or (should_stop is not None and should_stop()):
            return printed
        time.sleep(interval)


def _mtime(path: str) -> Optional[float]:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None
