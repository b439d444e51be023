"""The one base class of expected failures: bad params, inputs or files that a user can fix.

A stage runner (stages/_cli.py) turns a GemelError into one line and exit status 2; any other
exception is a bug and keeps its traceback. Each module defines its own subclass next to the code
that raises it (ConfigError, DataError, TrieError, ...), naming the file, record and field.
"""
from __future__ import annotations


class GemelError(Exception):
    """An expected failure; the message alone tells the user what to fix."""
