"""Waking the master's control loop as soon as one of its workers exits.

The loop runs a round every ``poll_interval`` (0.5 s). A worker that finishes, crashes or is stopped
would otherwise wait up to that long to be noticed, and the job's end with it: the last worker's
exit ends the job. So the master sleeps on a self-pipe that a ``SIGCHLD`` handler writes to (the
handler only writes a byte, which is safe whatever the main thread was doing), and runs the next
round at once. Any child's exit wakes it (etcd's or a launcher helper's too): an extra round is
harmless. Outside the main thread no handler can be installed, and the loop just sleeps.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from typing import Any, Optional, Tuple


class ChildExitWakeup:
    """``pause(seconds)`` sleeps that long, or until a child process exits."""

    def __init__(self) -> None:
        self._pipe: Optional[Tuple[int, int]] = None
        self._previous: Any = None

    def install(self) -> None:
        if self._pipe is not None or threading.current_thread() is not threading.main_thread():
            return
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._pipe = (r, w)

        def child_exited(signum, frame):
            try:
                os.write(w, b"x")
            except OSError:
                pass  # the pipe is full: a wake-up is pending anyway

        self._previous = signal.signal(signal.SIGCHLD, child_exited)

    def pause(self, seconds: float) -> None:
        if self._pipe is None:
            time.sleep(seconds)
            return
        r = self._pipe[0]
        ready, _, _ = select.select([r], [], [], seconds)
        if ready:
            try:
                while os.read(r, 4096):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        if self._pipe is None:
            return
        signal.signal(signal.SIGCHLD, self._previous if self._previous is not None else signal.SIG_DFL)
        for fd in self._pipe:
            os.close(fd)
        self._pipe = None
