"""What a user sees on a terminal: the live line fits 80 columns, and the end of a job is clean.

The master runs under a real pseudo-terminal (80 columns, ``COLUMNS=80``); what it writes is replayed
through a small terminal model (carriage return, newline, erase-line, wrapping at the last column)
to get the screen a user is left with. On Succeeded, Failed and Stopped alike the summary must start
on a line of its own (never glued to the live line) and no live frame may be drawn after it.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time

import pytest
from helpers import aimaster_cmd, clean_env, make_files, program

from aimaster.master.monitor import DatasetView, JobView
from aimaster.master.progress import RateMeter, live_line

COLS = 80


class Screen:
    """Enough of a terminal to replay a progress display: text, CR, LF, ``ESC[K``, wrapping at the last column."""

    def __init__(self, cols: int = COLS):
        self.cols = cols
        self.rows = [""]
        self.row = self.col = 0
        self.continued = set()  # rows that are the wrapped rest of the row above
        self.frames = []  # every line content that was erased in place (the live line's frames)

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                m = re.match(r"\x1b\[([0-9;?]*)([A-Za-z])", text[i:])
                if m:
                    self._csi(m.group(1), m.group(2))
                    i += m.end()
                    continue
            elif ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.row += 1
                self.col = 0
                if self.row == len(self.rows):
                    self.rows.append("")
            elif ch >= " ":
                if self.col >= self.cols:
                    self.feed("\n")
                    self.continued.add(self.row)
                line = self.rows[self.row].ljust(self.col)
                self.rows[self.row] = line[:self.col] + ch + line[self.col + 1:]
                self.col += 1
            i += 1

    def _csi(self, params: str, final: str) -> None:
        if final == "K":
            line = self.rows[self.row]
            if line.strip():
                self.frames.append(line)
            self.rows[self.row] = "" if params == "2" else line[:self.col]

    def lines(self):
        """The screen's logical lines (a line the terminal wrapped is joined again)."""
        out = []
        for i, row in enumerate(self.rows):
            if i in self.continued and out:
                out[-1] += row
            else:
                out.append(row)
        return [line.rstrip() for line in out if line.strip()]


def _run_on_tty(tmp_path, command, job_id, *extra, stop_when=None, env=None):
    """``aimaster run`` on an 80-column pty; returns (exit code, final screen). ``stop_when(text)``:
    send SIGINT (Ctrl-C) once it holds for what was written so far."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLS, 0, 0))
    full_env = clean_env(dict(env or {}, COLUMNS=str(COLS)))
    proc = subprocess.Popen(aimaster_cmd("run", "-n", "2", "--job-id", job_id, "--state-dir", str(tmp_path / "state"),
                                         *extra, "--", *command),
                            env=full_env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    chunks, stopped = [], False
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
            if stop_when and not stopped and stop_when(b"".join(chunks).decode("utf-8", "replace")):
                os.kill(proc.pid, signal.SIGINT)
                stopped = True
        elif proc.poll() is not None:
            break
    rc = proc.wait(60)
    os.close(master)
    screen = Screen()
    screen.feed(b"".join(chunks).decode("utf-8", "replace"))
    return rc, screen


def _assert_clean_end(screen: Screen, state: str):
    lines = screen.lines()
    heads = [i for i, line in enumerate(lines) if f" {state} in " in line]
    assert len(heads) == 1, lines
    head = lines[heads[0]]
    assert re.match(rf"job \S+ {state} in \d", head), f"summary glued to something: {head!r}"
    after = lines[heads[0]:]
    assert after[-1].startswith("  report: "), lines
    assert all(line.startswith("  ") for line in after[1:]), after
    assert not any("slices/s" in line or line.startswith("Running") for line in after), \
        f"a live frame drawn after the summary: {after}"
    assert not any("slices/s" in line for line in lines), f"the live line was left on screen: {lines}"


def _assert_fitting_frames(screen: Screen):
    live = [f for f in screen.frames if "slices/s" in f]
    assert live, screen.frames
    assert max(len(f) for f in live) < COLS, max(live, key=len)
    assert any("items/s" in f for f in live)


def test_succeeded_job_leaves_a_clean_screen(tmp_path):
    make_files(str(tmp_path / "in"), 100)
    rc, screen = _run_on_tty(tmp_path, [sys.executable, program("file_worker.py"), str(tmp_path / "in"),
                                        str(tmp_path / "out"), "5"], "a-job-with-a-rather-long-name-for-80-cols",
                             env={"FILE_SLEEP": "0.03"})
    assert rc == 0, screen.lines()
    _assert_clean_end(screen, "Succeeded")
    _assert_fitting_frames(screen)
    assert any(re.search(r"\b20/20 slices\b", f) for f in screen.frames), screen.frames[-3:]


def test_failed_job_leaves_a_clean_screen(tmp_path):
    script = tmp_path / "infer.py"
    script.write_text(textwrap.dedent("""
        import os, time
        time.sleep(1.0)
        import aimaster_no_such_module_for_tests
    """))
    rc, screen = _run_on_tty(tmp_path, [sys.executable, str(script)], "tty-failed")
    assert rc == 1, screen.lines()
    _assert_clean_end(screen, "Failed")
    lines = screen.lines()
    # Events were printed above the live line, each on a line of its own.
    assert any(line.startswith("worker w0 (pid ") for line in lines), lines
    assert any(line.startswith("  | ModuleNotFoundError") for line in lines), lines


def test_stopped_job_leaves_a_clean_screen(tmp_path):
    make_files(str(tmp_path / "in"), 400)
    rc, screen = _run_on_tty(tmp_path, [sys.executable, program("file_worker.py"), str(tmp_path / "in"),
                                        str(tmp_path / "out"), "5"], "tty-stopped",
                             stop_when=lambda text: re.search(r"\b[1-9]\d*/80 slices", text) is not None,
                             env={"FILE_SLEEP": "0.05"})
    assert rc == 130, screen.lines()
    _assert_clean_end(screen, "Stopped")


def _view(done, failed, total=400, items=40000, state="Running"):
    ds = DatasetView("ds1", "files", total=total, items=items, done=done, failed=failed, running=3,
                     todo=total - done - failed - 3)
    return JobView("job-20261201-115959-ab12", {"state": state}, datasets=[ds])


def _meter(rate_slices_per_s=2.5):
    m = RateMeter()
    m.add(100.0, 0)
    m.add(110.0, int(rate_slices_per_s * 10))
    return m


@pytest.mark.parametrize("width", [80, 60, 40, 200])
def test_live_line_fits_and_drops_the_least_important_first(width):
    line = live_line(_view(180, 3), _meter(), width, workers_running=4, restarts=2, starting=1,
                     failed_workers=2, backups=1, elapsed=754)
    assert len(line) < width, line
    assert line.startswith("Running") and "180/400 slices" in line and "3 failed" in line
    if width >= 80:
        assert "2.5 slices/s" in line and "250 items/s" in line and "ETA 01:27" in line, line
    if width >= 100:
        assert "[" in line and "#" in line and "x" in line, f"a bar with committed and failed cells: {line}"
    if width >= 200:
        assert "job-20261201-115959-ab12" in line and "2 relaunched" in line and "12:34" in line, line


def test_live_line_without_failures_does_not_mention_them():
    line = live_line(_view(100, 0), _meter(), 80, workers_running=2)
    assert "failed" not in line and "x" not in line.split("]")[0], line
    assert "[#" in line and "100/400 slices" in line, f"80 columns without failures have room for the bar: {line}"
