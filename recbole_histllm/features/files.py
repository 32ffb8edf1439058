"""File helpers of the feature tools: atomic rewrites, RecBole's atomic ``.item`` file, the common command line.

A feature tool rewrites ``<name>.item`` (or ``<name>.text``, or its resume cache) in place; a kill in the
middle must never leave half a file, so every rewrite goes through :func:`atomic_write`: a temp file in
the same folder, flushed and fsynced, then renamed over the target (keeping the target's permissions).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from dataset_converters.cli import Parser
from recbole_histllm.utils import UsageError


def _default_mode() -> int:
    """The permissions of a new file under the current umask (mkstemp's own are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, binary: bool = False) -> Iterator[IO]:
    """Write ``path`` all at once: yields a handle on a temp file beside it, renamed over ``path`` when the
    block ends without error (the old file, if any, keeps existing until then); on error the temp file is
    removed and ``path`` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_item_file(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a RecBole atomic file, every field kept verbatim (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"item file not found: {path} (convert the dataset first)")
    with open(path, encoding="utf-8", newline="") as handle:
        lines = handle.read().splitlines()
    if not lines:
        raise UsageError(f"{path}: empty item file (no header)")
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:] if line.strip()]


def rewrite_item_file(path: str | os.PathLike, header: list[str], rows: list[list[str]], drop: set[str],
                      new_header: list[str], new_fields: Callable[[list[str]], list[str]]) -> None:
    """Rewrite ``path`` atomically: the columns named in ``drop`` (field names, without ``:type``) removed,
    ``new_header`` appended, each row's new cells from ``new_fields(row)`` (the row padded to the header)."""
    keep = [i for i, name in enumerate(header) if name.split(":")[0] not in drop]
    with atomic_write(path) as handle:
        handle.write("\t".join([header[i] for i in keep] + new_header) + "\n")
        for row in rows:
            row = row + [""] * (len(header) - len(row))
            handle.write("\t".join([row[i] for i in keep] + new_fields(row)) + "\n")


def feature_parser(module: str, description: str, data_path: str | None = "dataset",
                   data_path_help: str = "datasets root (default: dataset)") -> Parser:
    """The command line every feature tool starts with (``python -m <module>``): ``--dataset`` (folder and
    file stem) and ``--data_path`` (the datasets root, default ``data_path``)."""
    parser = Parser(prog=f"python -m {module}", description=description)
    parser.add_argument("--dataset", required=True, help="dataset name (folder and file stem)")
    parser.add_argument("--data_path", default=data_path, help=data_path_help)
    return parser
