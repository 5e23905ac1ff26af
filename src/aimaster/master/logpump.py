"""Capture one worker's stdout and stderr into size-capped, rotated files in the state directory.

Run by the launcher as a small process of its own (standard library only, started with ``-I``), one
per worker, reading the worker's two pipes::

    python -I logpump.py OUT_FD ERR_FD OUT_PATH ERR_PATH MAX_BYTES BACKUPS TEE_PREFIX [BANNER]

It is a process, not a thread of the master, so that a master killed with SIGKILL does not take the
read ends of the pipes with it: the workers it launched keep running (a new master adopts them), and
a worker writing to a pipe nobody reads would get EPIPE, or block forever once the pipe is full. It
runs in a session of its own, so the signals the master sends a worker's process group do not stop
it before it has written the worker's last words; it exits when both pipes reach end of file.

It never stops reading: a failed write (disk full) drops that chunk, so a worker can never stall on
a full pipe because of its logs. ``worker-N.out`` grows to ``MAX_BYTES``, then becomes
``worker-N.out.1`` (``.1`` becomes ``.2``, ..., the oldest beyond ``BACKUPS`` is deleted).
With a ``TEE_PREFIX``, every line is also written to this process's stderr (the master's console),
prefixed with it.

Every line in the files starts with the UTC time the pump read it (``2026-12-01T12:00:35.123Z ``,
:data:`STAMP`), so that a worker's output can be read against the master's events and the two
streams merged in order (``aimaster logs``). A ``BANNER`` is written first to both files: the
separator a relaunch leaves between one incarnation's output and the next
(:data:`SEPARATOR` starts it). :func:`strip_line` gives a line back as the worker wrote it.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import sys
import time

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
SEPARATOR = "===== aimaster: "


def stamp_now() -> bytes:
    now = time.time()
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z ").encode()


def strip_line(line: str) -> str:
    """A log line as the worker wrote it (its time stamp removed)."""
    m = STAMP.match(line)
    return line[m.end():] if m else line


def worker_lines(text: str):
    """The lines a worker wrote, from a log file's text: stamps removed, separators left out."""
    lines = (strip_line(line) for line in text.splitlines())
    return [line for line in lines if not line.startswith(SEPARATOR)]


class Stamper:
    """Puts the time at the start of every line of a stream that arrives in arbitrary chunks."""

    def __init__(self) -> None:
        self.at_line_start = True

    def __call__(self, data: bytes) -> bytes:
        stamp = stamp_now()
        parts = data.split(b"\n")
        out = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last and not part:
                break  # the data ended with a line break: the next chunk starts a line
            out.append((stamp if (self.at_line_start or i > 0) else b"") + part + (b"" if last else b"\n"))
        self.at_line_start = data.endswith(b"\n")
        return b"".join(out)


class RotatingFile:
    def __init__(self, path: str, max_bytes: int, backups: int):
        self.path = path
        self.max_bytes = max(1024, max_bytes)
        self.backups = max(1, backups)
        self.f = open(path, "ab")
        self.size = self.f.tell()

    def write(self, data: bytes) -> None:
        while data:
            room = self.max_bytes - self.size
            if room <= 0:
                self.rotate()
                continue
            # Cut at the last line break that fits, so rotated files hold whole lines when they can.
            chunk = data[:room]
            if len(data) > room:
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    chunk = chunk[:nl + 1]
                elif self.size > 0:
                    self.rotate()
                    continue
            try:
                self.f.write(chunk)
                self.f.flush()
            except OSError:
                pass  # disk full or gone: drop the chunk, keep draining the pipe
            self.size += len(chunk)
            data = data[len(chunk):]

    def rotate(self) -> None:
        try:
            self.f.close()
            for i in range(self.backups - 1, 0, -1):
                if os.path.exists(f"{self.path}.{i}"):
                    os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
        except OSError:
            pass
        self.f = open(self.path, "wb")
        self.size = 0


def pump(fds, files, tee_prefix: str) -> None:
    sel = selectors.DefaultSelector()
    partial = {}
    stampers = {}
    for name, fd in fds.items():
        sel.register(fd, selectors.EVENT_READ, name)
        partial[name] = b""
        stampers[name] = Stamper()
    open_fds = len(fds)
    while open_fds:
        for key, _ in sel.select():
            name = key.data
            try:
                data = os.read(key.fd, 65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fd)
                os.close(key.fd)
                open_fds -= 1
                if tee_prefix and partial[name]:
                    _tee(tee_prefix, name, partial[name] + b"\n")
                continue
            files[name].write(stampers[name](data))
            if tee_prefix:
                buf = partial[name] + data
                cut = buf.rfind(b"\n")
                if cut >= 0:
                    _tee(tee_prefix, name, buf[:cut + 1])
                    buf = buf[cut + 1:]
                partial[name] = buf[-65536:]


def _tee(prefix: str, name: str, lines: bytes) -> None:
    tag = f"[{prefix}{'!' if name == 'err' else ''}] ".encode()
    out = b"".join(tag + line + b"\n" for line in lines.rstrip(b"\n").split(b"\n"))
    try:
        os.write(2, out)
    except OSError:
        pass  # the console is gone (the master died): the files still get everything


def main(argv) -> None:
    out_fd, err_fd, out_path, err_path, max_bytes, backups, tee_prefix = argv[:7]
    banner = argv[7] if len(argv) > 7 else ""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    max_b, keep = int(max_bytes), int(backups)
    files = {"out": RotatingFile(out_path, max_b, keep), "err": RotatingFile(err_path, max_b, keep)}
    if banner:
        for f in files.values():
            f.write(stamp_now() + (SEPARATOR + banner + " =====\n").encode())
    pump({"out": int(out_fd), "err": int(err_fd)}, files, tee_prefix)


if __name__ == "__main__":
    main(sys.argv[1:])
