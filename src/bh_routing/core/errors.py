"""The project's exception for bad input from a user (one line, no traceback at the command line)."""

from __future__ import annotations


class BHRoutingError(Exception):
    """Bad input from a user: a configuration, file, model or folder that cannot work.

    The command line prints ``error: <message>`` (the first line) and exits with status 2 for
    this type only; any other exception is a bug and keeps its traceback. Subclasses that replace
    an older ``ValueError`` also derive from ``ValueError``, so ``except ValueError`` still works.
    """
