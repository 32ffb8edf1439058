"""Command lines of the converters and the feature tools: checked option values, one line and exit 2.

:class:`Parser` is argparse with one change: a bad option prints ONE line on stderr
(``error: --user_core: must be an integer >= 0, got -1``) and exits 2, without the usage block. The
``type=`` helpers check ranges and paths while the arguments are parsed, before any work starts (the
same rules and wording as the config keys' schema, :mod:`recbole_histllm.config_schema`).
:func:`run_main` runs an entry point and turns the errors a user can fix (a missing input file, a
malformed header: ``FileNotFoundError``, ``ValueError`` and the plugin's ``UsageError``) into the same
one line and exit 2; ``--debug`` keeps the traceback. Standard library only: the converters do not
import torch.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from dataset_converters.errors import UsageError


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``error: --opt: why``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        message = re.sub(r"^argument ([^:/]+)(/[^:]+)?: ", r"\1: ", message)
        self.exit(2, f"error: {message}\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:
        """argparse's, with ``--debug`` left to :func:`run_main` (it keeps the traceback)."""
        args = [a for a in (sys.argv[1:] if args is None else args) if a != "--debug"]
        return super().parse_args(args, namespace)


def _number(kind: type, low: float | None, high: float | None, low_open: bool) -> Callable[[str], Any]:
    noun = "an integer" if kind is int else "a number"
    if low is not None and high is not None:
        rule = f"{noun} in {'(' if low_open else '['}{low:g}, {high:g}]"
    elif low is not None:
        rule = f"{noun} {'>' if low_open else '>='} {low:g}"
    else:
        rule = noun

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}") from None
        if (low is not None and (value < low or (low_open and value == low))) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    convert.__name__ = kind.__name__
    return convert


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse ``type=``: an integer >= ``low``."""
    return _number(int, low, None, False)


def number_in(low: float | None = None, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    """argparse ``type=``: a number in [low, high] (``low_open``: (low, high])."""
    return _number(float, low, high, low_open)


def existing_dir(text: str) -> str:
    """argparse ``type=``: an existing folder (``~`` expanded)."""
    path = os.path.expanduser(text)
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"no such folder {text}")
    return path


def existing_file(text: str) -> str:
    """argparse ``type=``: an existing file (``~`` expanded)."""
    path = os.path.expanduser(text)
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"no such file {text}")
    return path


def existing_path(text: str) -> str:
    """argparse ``type=``: an existing file or folder (``~`` expanded)."""
    path = os.path.expanduser(text)
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"no such file or folder {text}")
    return path


def run_main(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None,
             errors: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError)) -> int:
    """Run a command-line ``main(argv)``; ``errors`` (and any ``UsageError``) become ``error: <message>`` on
    stderr and exit code 2 (``--debug``: re-raised). Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        main(argv)
    except SystemExit as exit_:  # argparse's own exit (Parser.error: one line printed already; --help: 0)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except Exception as err:  # noqa: BLE001 - filtered below
        if "--debug" in argv or not isinstance(err, (UsageError, *errors)):
            raise
        text = str(err).strip().splitlines() or [type(err).__name__]
        for line in text:
            print(f"error: {line}", file=sys.stderr)
        return 2
    return 0
