"""Listing a local input directory so that nothing under it is left out without a word.

``os.walk`` swallows every error: a subdirectory it cannot read, a symlink to an unmounted share, a
symlink loop, a symlinked directory (not followed) all simply contribute no files, and the job
ends Succeeded with those files never processed. This walk reports each of them instead: by default
the listing fails with one line naming the entries (an :class:`UnreadableInputError`); with
``skip_unreadable`` they are left out and named in a warning (and in the plan, see
:mod:`aimaster.io.file_plan`). A name that is not valid UTF-8 is such an entry too: it cannot go
through etcd's JSON and come back as the same path.

Symlinks are followed, to directories as to files (a loop is an unreadable entry). Entries that are
neither directories nor regular files (FIFOs, sockets, devices) are not inputs: they are left out
and counted in a warning. Hidden entries (a leading ``.``) are not inputs either, as before.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Set, Tuple

from aimaster.errors import AimasterError

log = logging.getLogger(__name__)
EXAMPLES = 3  # entries named in a message; the rest are counted


class UnreadableInputError(AimasterError, OSError):
    """Entries under an input directory cannot be listed or read, or are not named in UTF-8."""


@dataclass
class Listing:
    names: List[str] = field(default_factory=list)  # regular files, relative, "/"-separated
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (relative path, why), on request
    special: List[str] = field(default_factory=list)  # FIFOs, sockets, devices: never inputs


def shown(path: str) -> str:
    """``path`` as printable text: bytes that are not UTF-8 appear as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def summary(entries: List[Tuple[str, str]], root: str) -> str:
    """``root/a (why), root/b (why) and 3 more``: what messages about unreadable entries say."""
    named = ", ".join(f"{shown(root + '/' + rel)} ({why})" for rel, why in entries[:EXAMPLES])
    more = len(entries) - EXAMPLES
    return named + (f" and {more} more" if more > 0 else "")


def walk(root: str, skip_unreadable: bool = False) -> Listing:
    """Every regular, non-hidden file under the local directory ``root``, sorted, relative."""
    out = Listing()
    problems: List[Tuple[str, str]] = []
    readable = _ReadCheck()
    try:
        top = os.stat(root)
    except OSError as e:
        raise UnreadableInputError(f"cannot read input directory {shown(root)}: {e.strerror or e}")
    stack: List[Tuple[str, str, Tuple[Tuple[int, int], ...]]] = [("", root, ((top.st_dev, top.st_ino),))]
    while stack:
        rel_dir, path, ancestors = stack.pop()
        for entry in _entries(root, rel_dir, path, problems):
            if entry.name.startswith("."):
                continue
            rel = entry.name if not rel_dir else f"{rel_dir}/{entry.name}"
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                problems.append((rel, "its name is not valid UTF-8"))
                continue
            try:
                st = entry.stat()  # follows symlinks
            except OSError as e:
                problems.append((rel, _why(entry.path, e)))
                continue
            if stat.S_ISDIR(st.st_mode):
                ident = (st.st_dev, st.st_ino)
                if ident in ancestors:
                    problems.append((rel, "a symlink loop: it leads back to a directory above it"))
                else:
                    stack.append((rel, entry.path, ancestors + (ident,)))
            elif stat.S_ISREG(st.st_mode):
                if readable(entry.path, st):
                    out.names.append(rel)
                else:
                    problems.append((rel, "Permission denied"))
            else:
                out.special.append(rel)
    if problems:
        problems.sort()
        if not skip_unreadable:
            noun = "entry" if len(problems) == 1 else "entries"
            raise UnreadableInputError(
                f"{len(problems)} {noun} under input directory {shown(root)} cannot be read: "
                f"{summary(problems, root)}; fix them, or pass PosixFileConfig(skip_unreadable=True) to "
                "skip such entries with a warning")
        out.skipped = problems
        log.warning("aimaster: warning: skipped %d unreadable entries under input directory %s "
                    "(skip_unreadable=True): %s", len(problems), shown(root), summary(problems, root))
    if out.special:
        out.special.sort()
        log.warning("aimaster: warning: %d entries under input directory %s are not regular files "
                    "(FIFOs, sockets or devices) and are not inputs: %s", len(out.special), shown(root),
                    summary([(rel, "not a regular file") for rel in out.special], root))
    out.names.sort()
    return out


def _entries(root: str, rel_dir: str, path: str, problems: List[Tuple[str, str]]) -> Iterator[os.DirEntry]:
    """The entries of one directory, one at a time (a million of them need not sit in memory)."""
    try:
        it = os.scandir(path)
    except OSError as e:
        if not rel_dir:  # the input directory itself: there is nothing to skip to
            raise UnreadableInputError(f"cannot list input directory {shown(root)}: {e.strerror or e}")
        problems.append((rel_dir, f"cannot list it: {e.strerror or e}"))
        return
    with it:
        while True:
            try:
                entry = next(it)
            except StopIteration:
                return
            except OSError as e:  # failed half-way (an I/O error, a share that went away)
                problems.append((rel_dir or ".", f"listing it failed: {e.strerror or e}"))
                return
            yield entry


def _why(path: str, error: OSError) -> str:
    if os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        if error.errno == errno.ENOENT:
            return f"a symlink to {shown(target)}, which does not exist"
        if error.errno == errno.ELOOP:
            return f"a symlink loop ({shown(target)})"
    return error.strerror or str(error)


class _ReadCheck:
    """Whether this process may read a file, at no cost for the usual world- or owner-readable one.

    The mode bits settle most files without a system call; only a file they say is unreadable is
    asked about with ``access()``, which also knows about root's privileges and ACLs.
    """

    def __init__(self) -> None:
        self.uid = os.geteuid()
        self.groups: Set[int] = set(os.getgroups()) | {os.getegid()}

    def __call__(self, path: str, st: os.stat_result) -> bool:
        if st.st_uid == self.uid:
            allowed = st.st_mode & stat.S_IRUSR
        elif st.st_gid in self.groups:
            allowed = st.st_mode & stat.S_IRGRP
        else:
            allowed = st.st_mode & stat.S_IROTH
        if allowed:
            return True
        effective = os.access in os.supports_effective_ids
        return os.access(path, os.R_OK, effective_ids=effective)


def input_problem(path: str) -> Optional[str]:
    """Why the local input ``path`` cannot be handed to the program now (None: a regular file).

    Checked when a slice is handed out: a file replaced by a FIFO since the job was planned would
    make the program's ``open()`` wait for a writer forever, a deleted one would fail somewhere in
    user code; one ``stat`` says so first, naming the path.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        return f"input {shown(path)} cannot be read ({_why(path, e)})"
    if stat.S_ISREG(st.st_mode):
        return None
    return f"input {shown(path)} is {_kind(st.st_mode)}, not a regular file"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"
