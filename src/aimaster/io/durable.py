"""Local file-system steps that survive a power cut, and errors that say which file they hit.

A commit record in etcd says "this attempt's output is staged at X". If a power cut can undo the
creation of X (a rename or a new directory entry not yet on disk), the job later publishes nothing
for that slice and still ends Succeeded. So a staged file is fsynced, and so is every directory
whose entries changed on the way to it; a published rename is made durable the same way.

An ``OSError`` from ``write``/``flush``/``fsync`` carries no file name ("[Errno 28] No space left on
device"): :func:`named` gives it one, keeping its type and errno so callers' handlers still match.
"""

from __future__ import annotations

import errno
import os
from typing import List

# A file system that cannot fsync a directory at all says so with one of these; nothing to do there.
_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


def fsync_dir(path: str) -> None:
    """Persist the entries of a directory (renames and creations in it)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:
        raise named(e, path, "opening the directory to fsync it")
    _fsync_and_close(fd, path, "fsyncing the directory")


def fsync_file(path: str) -> bool:
    """Persist a file written by someone else (a library given a path); False if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    _fsync_and_close(fd, path, "fsyncing the file")
    return True


def _fsync_and_close(fd: int, path: str, what: str) -> None:
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise named(e, path, what)
    finally:
        os.close(fd)


def missing_dirs(directory: str, stop: str) -> List[str]:
    """The directories from ``directory`` up to (not including) ``stop`` that do not exist yet."""
    out = []
    while directory != stop and directory.startswith(stop + "/") and not os.path.isdir(directory):
        out.append(directory)
        directory = os.path.dirname(directory)
    return out


def sync_created(created: List[str]) -> None:
    """After creating ``created`` (see :func:`missing_dirs`): make their entries durable."""
    for parent in sorted({os.path.dirname(d) for d in created}, key=len, reverse=True):
        fsync_dir(parent)


def named(error: OSError, path: str, doing: str) -> OSError:
    """``error`` again, naming ``path`` (and what was being done) if it names no file yet."""
    if error.filename is not None or error.errno is None:
        return error
    try:
        return type(error)(error.errno, f"{error.strerror or error} ({doing})", path)
    except TypeError:  # a subclass with another constructor: keep it, say it in words
        return OSError(error.errno, f"{error.strerror or error} ({doing})", path)
