"""AIMaster's fault-tolerance flags and the classification of a worker's exit.

``--fault-tolerant-policy``:
  * ``OnFailure``: relaunch a worker after any failure;
  * ``ExitCodeAndErrorMsg``: relaunch only failures that look transient: killed by a signal (OOM
    killer, preemption, kill -9), or an exit whose last error line names a connection, timeout or
    resource problem; a plain Python exception in user code fails the job at once;
  * ``Never``: the first worker failure fails the job.
``--max-num-of-same-error N``: the same failure (same kind, code and last error line) N times fails
the job, so a bug that kills every worker does not relaunch forever. "The same" is decided on the
message with what differs between occurrences of one error masked (:func:`normalise`): attempt and
random ids, numbers, paths, addresses.
Unless ``--max-num-of-same-error`` is given, a *hopeless* crash -- every slot dying the same way
before anything is committed (a ``SyntaxError``, a missing module, code that raises on every input)
-- fails the job at once, its traceback printed once (:mod:`aimaster.master.hopeless`).
``--job-execution-mode``: ``Async`` relaunches only the failed worker; ``Sync`` restarts every worker.

A failure is classified from what the master can see of a dead worker: its exit code, or the signal
that killed it (an exit code of 128+N from a shell wrapper counts as signal N), whether the kernel's
OOM killer fired meanwhile (read from the cgroup's ``memory.events``; where that is unavailable, a
SIGKILL the master did not send is reported as *possibly* OOM: kernel logs are not readable from
here), and the last line it wrote to stderr. A worker that died of an aimaster *environment* error
(storage, etcd out of reach, a crashed writer child: see :mod:`aimaster.errors`) exits with
``ENVIRONMENT_ERROR_EXIT`` and counts as transient under every policy but ``Never``; one that exits
with ``USER_ERROR_EXIT`` is never relaunched (the master fails the job before asking the policy).
The master's own kills are their own kinds: ``hang`` (no progress for ``--job-hang-interval``) and
``lost`` (an adopted worker that vanished; its exit status belonged to the previous master).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from typing import Dict, Optional

from aimaster.data.runtime import ENVIRONMENT_ERROR_EXIT
from aimaster.errors import ConfigError
from aimaster.settings import EXECUTION_MODES, POLICIES

_TRANSIENT_MSG = re.compile(
    r"(connection|timed? ?out|timeout|unavailable|temporar|resource exhausted|out of memory|oom|"
    r"broken pipe|reset by peer|too many open files|no space left|etcd)", re.I)


@dataclass(frozen=True)
class Failure:
    kind: str  # "signal", "exit", "hang", "lost"
    code: int
    message: str
    oom: Optional[bool] = field(default=None, compare=False)  # None: could not tell

    @property
    def signature(self) -> str:
        return f"{self.kind}:{self.code}:{normalise(self.message)}"

    @property
    def cause(self) -> str:
        """Short label for counting relaunches by cause in the report."""
        if self.kind == "signal" and self.oom:
            return "oom"
        return self.kind if self.kind in ("hang", "lost") else f"{self.kind}:{self.code}"

    def describe(self) -> str:
        if self.kind == "signal":
            name = _signal_name(self.code)
            hint = ""
            if self.code == signal.SIGKILL:
                hint = (" by the kernel's OOM killer" if self.oom else
                        "" if self.oom is False else " (possibly OOM: the kernel's OOM killer sends SIGKILL)")
            head = f"killed by {name}{hint}"
        elif self.kind == "hang":
            head = f"hung (no progress for {self.code}s) and was killed"
        elif self.kind == "lost":
            head = "vanished (adopted from a previous master; exit status unknown)"
        elif self.environment:
            head = f"exited with code {self.code} (an environment error)"
        else:
            head = f"exited with code {self.code}"
        return f"{head}: {self.message}" if self.message else head

    @property
    def environment(self) -> bool:
        """The worker said so itself: it died of an environment error (see aimaster.errors)."""
        return self.kind == "exit" and self.code == ENVIRONMENT_ERROR_EXIT

    @property
    def transient(self) -> bool:
        return self.kind in ("signal", "hang", "lost") or self.environment or \
            bool(_TRANSIENT_MSG.search(self.message or ""))


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


# What differs between two occurrences of one error, most specific first (each replaced by a tag).
_VARIABLE = [
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<id>"),
    # host:port, IPv4 with or without a port, bracketed IPv6
    (re.compile(r"\[[0-9a-f:.]+\](?::\d+)?|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|"
                r"\b[A-Za-z][\w.-]*:\d{2,5}\b", re.I), "<addr>"),
    # URLs and paths: absolute, ~/..., ./..., or relative with two separators or a file extension
    # (so that "I/O" and "and/or" stay words)
    (re.compile(r"\b[a-z][a-z0-9+.-]*://\S+|(?<![\w.])(?:~|\.{1,2})?(?:/[^\s'\"`:;,()\[\]{}<>]+)+/?|"
                r"\b[\w.-]+(?:/[\w.~-]+){2,}/?|\b[\w.-]+/[\w~-]*\.[\w.~-]+", re.I), "<path>"),
    # an attempt id's random part (``<worker>.<8 hex>``): now and then it holds no digit at all
    (re.compile(r"(?<=\w\.)[0-9a-f]{8}\b"), "N"),
    # numbers and whatever holds a digit and is 6+ long (an attempt id, a hash, a random name): one
    # tag, since a random hex id is now and then all digits
    (re.compile(r"\b0x[0-9a-f]+\b|\b(?=[\w-]*\d)[\w-]{6,}\b|\d+", re.I), "N"),
]


def normalise(message: str) -> str:
    """An error message with what varies between occurrences of the same error masked.

    Random attempt ids, pids, slice ids, byte counts, temporary paths and the addresses of
    whatever was unreachable differ from one failure to the next; the error does not.
    """
    text = message or ""
    for pattern, tag in _VARIABLE:
        text = pattern.sub(tag, text)
    return text[:300]


def classify_exit(returncode: int, last_error_line: str = "", oom: Optional[bool] = None) -> Failure:
    if returncode < 0:
        return Failure("signal", -returncode, last_error_line, oom)
    if 128 < returncode < 128 + 65 and not last_error_line:  # `sh -c` reports a killed child as 128+N
        return Failure("signal", returncode - 128, last_error_line, oom)
    return Failure("exit", returncode, last_error_line)


_OOM_FILES = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


def oom_kill_count() -> Optional[int]:
    """The OOM killer's kill count in this process's cgroup (v2 or v1), or None where unreadable."""
    for path in _OOM_FILES:
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == "oom_kill" and value.strip().isdigit():
                        return int(value)
        except OSError:
            continue
    return None


@dataclass
class FaultPolicy:
    execution_mode: str = "Async"
    policy: str = "OnFailure"
    max_same_error: int = 20
    # Fail at once when every slot dies the same way before anything is committed (see
    # aimaster.master.hopeless). Off when --max-num-of-same-error is given: the user chose the count.
    fail_fast: bool = True

    def __post_init__(self) -> None:
        if self.execution_mode not in EXECUTION_MODES:
            raise ConfigError(f"--job-execution-mode must be one of {', '.join(EXECUTION_MODES)}")
        if self.policy not in POLICIES:
            raise ConfigError(f"--fault-tolerant-policy must be one of {', '.join(POLICIES)}")
        if self.max_same_error < 1:
            raise ConfigError("--max-num-of-same-error must be at least 1")
        self.counts: Dict[str, int] = {}

    def record(self, failure: Failure) -> Optional[str]:
        """Count a failure; return why the job must fail now, or None to relaunch."""
        n = self.counts[failure.signature] = self.counts.get(failure.signature, 0) + 1
        if self.policy == "Never":
            return f"a worker {failure.describe()} (--fault-tolerant-policy=Never)"
        if self.policy == "ExitCodeAndErrorMsg" and not failure.transient:
            return f"a worker {failure.describe()} (not a transient failure under ExitCodeAndErrorMsg)"
        if n >= self.max_same_error:
            return f"the same failure happened {n} times (--max-num-of-same-error={self.max_same_error}): " \
                   f"{failure.describe()}"
        return None
