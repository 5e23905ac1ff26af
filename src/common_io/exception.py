"""Exceptions of PAI's ``common_io``, for code written against it."""

from __future__ import annotations


class OutOfRangeException(Exception):
    """Raised by ``TableReader.read()`` once every row of the reader's range has been read."""
