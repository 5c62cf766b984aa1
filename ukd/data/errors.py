"""Exceptions raised by :mod:`ukd.data`.

Both derive from a built-in exception so that callers that already catch ``FileNotFoundError`` or ``ValueError`` keep
working.
"""

from __future__ import annotations

__all__ = ["DatasetFormatError", "DatasetNotFoundError", "IDXFormatError"]


class DatasetNotFoundError(FileNotFoundError):
    """A data set's directory or one of its files is missing. The message names the path and how to get it."""


class DatasetFormatError(ValueError):
    """A data file exists but its content is not what the format requires. The message names the file."""


class IDXFormatError(DatasetFormatError):
    """An IDX file (gzip-compressed or raw) is truncated, corrupted or not an IDX file at all."""
