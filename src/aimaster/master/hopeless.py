"""Fail fast on a hopeless crash: every worker dies the same way before anything is committed.

A worker script with a ``SyntaxError``, a missing ``import``, or code that raises on every input
fails the same way however often it is relaunched. Counting such failures up to
``--max-num-of-same-error`` (20) costs minutes of relaunches and buries the cause under as many
one-line messages. Like ``torchrun``, the master ends such a job at once, printing the root cause
(the traceback, with its file and line) once.

A crash counts as hopeless only when all of these hold, so that what a relaunch can fix still is:

* it is a plain exit with an error (a signal, a hang, an environment error -- exit 75 -- or a
  message that reads transient, such as a timeout, may well pass on the next try);
* nothing has been committed in this run by any worker the master supervises (a program that
  committed something works, at least on some data: the poison-slice and same-error rules handle it);
* every slot's most recent failure has the same :attr:`~aimaster.master.policy.Failure.signature`
  (its message normalised: paths, numbers, hex, addresses masked), seen at least twice in all;
* the failures did not all hold one same slice: a single bad slice killing whoever takes it is a
  poison slice, which the job must survive (it fails after ``--max-slice-attempts``, reported).
  Every death of the signature counts towards "every slot, twice"; what tells a poison slice is a
  slice that every one of those deaths held. Two deaths on one slice are therefore not yet hopeless
  (they could be either), and the first death on another slice makes them so.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from aimaster.master.policy import Failure

MIN_FAILURES = 2


class HopelessCrashes:
    """The evidence, per slot, that the job's program cannot run at all."""

    def __init__(self, slots: int, min_failures: int = MIN_FAILURES):
        self.slots = max(1, slots)
        self.min_failures = min_failures
        self.last: Dict[int, str] = {}  # slot -> signature of its latest hopeless-looking failure
        self.counts: Dict[str, int] = {}
        # signature -> the slices every worker that died of it held (empty: no slice is common to all)
        self.common: Dict[str, Set[str]] = {}
        self.off = False  # something was committed: the program works, this rule is done

    def observe(self, slot: int, failure: Failure, held: Iterable[str], committed: bool) -> bool:
        """Count one worker's death; True when the job is hopeless and must end now."""
        if committed:
            self.off = True
        if self.off:
            return False
        if failure.kind != "exit" or failure.transient:
            self.last.pop(slot, None)
            return False
        sig = failure.signature
        held = set(held)
        common = self.common[sig] = self.common[sig] & held if sig in self.common else held
        self.last[slot] = sig
        n = self.counts[sig] = self.counts.get(sig, 0) + 1
        every_slot = all(self.last.get(s) == sig for s in range(self.slots))
        # A slice held by every one of these deaths: a poison slice, not (yet) a hopeless program.
        return every_slot and n >= self.min_failures and not common


def root_cause(stderr_tail: List[str], limit: int = 30) -> List[str]:
    """The part of a dead worker's last stderr lines that says where it failed.

    From the last ``Traceback (most recent call last):``, or, for an error Python reports without one
    (a ``SyntaxError`` in the script itself), from the last ``File "...", line N`` line; else the
    last lines as they are.
    """
    lines = [line.rstrip() for line in stderr_tail]
    start = None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Traceback (most recent call last)"):
            start = i
            break
    if start is None:
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].lstrip().startswith('File "'):
                start = i
                break
    cause = lines[start:] if start is not None else lines
    return cause[-limit:]


def where(cause: List[str]) -> Optional[str]:
    """``file, line N`` of the innermost frame of a traceback, if it names one."""
    for line in reversed(cause):
        text = line.strip()
        if text.startswith('File "'):
            return text.split(", in ")[0]
    return None


def judge(crashes: HopelessCrashes, slots: int, worker_id: str, slot: int, failure: Failure,
          held: Iterable[str], committed: bool,
          stderr_tail: Callable[[], List[str]]) -> Optional[Tuple[str, List[str]]]:
    """After the fault policy chose to relaunch a worker: the reason the job must fail now instead,
    with the lines that print its root cause once (from ``stderr_tail()``, read only then), or None.

    ``committed``: whether a worker the supervisor runs or ran (launched or adopted, dead or alive)
    has committed a slice in this run.
    """
    if not crashes.observe(slot, failure, held, committed):
        return None
    cause = root_cause(list(stderr_tail()))
    n = crashes.counts.get(failure.signature, 0)
    lines = [f"every worker died the same way before committing anything ({n} deaths); the root cause, "
             f"from {worker_id}'s stderr:"]
    lines += [f"  | {line}" for line in cause or ["(it wrote nothing to stderr)"]]
    at = where(cause)
    return (f"hopeless: every worker exited the same way before committing anything ({n} times, "
            f"{slots} slot(s)): {failure.describe()}{f' ({at})' if at else ''}; fix the "
            f"program, then re-run (the same --job-id resumes)"), lines


def committed_by(watch, worker_ids: Iterable[str]) -> bool:
    """Whether any of these workers has committed a slice (by its stats in the watch)."""
    return any(_slices(watch.get(wid)) > 0 for wid in worker_ids if wid)


def _slices(info) -> int:
    value = info.stats.get("slices") if info is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
