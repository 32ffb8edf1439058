"""The project's two user-facing errors, defined once at the bottom layer (the converters, the feature tools,
the model and the CLIs all raise them); every command prints them as ``error: <message>`` and exits 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: reported as one line and exit code 2 by the CLI."""


class InputError(UsageError, ValueError):
    """A value or file the user can fix (a checkpoint of the wrong kind, a dataset without what a model needs,
    a malformed side file); a ValueError too, for callers of the library functions."""
