"""Score (user, item) pairs with a finished run.

    python -m recbole_histllm.predict --run=DIR --input=pairs.csv [--output=scores.csv] [--data_path=ROOT]
        [--any_config_key=value ...]

``pairs.csv``: a header with ``user_id,item_id`` and optionally ``timestamp`` (raw ids, as in the dataset
files; other columns are kept). Every row comes back with ``score`` and ``status`` (``ok``, ``malformed``,
``unknown_user``, ``unknown_item``: :meth:`recbole_histllm.run_io.Run.score`); a line with the wrong number
of fields is ``malformed``. The counts go to stderr. Without ``--output`` the scores go to stdout. A file
that cannot be read (missing, not UTF-8 text, no header with user_id and item_id) is one line and exit 2.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pandas as pd

from recbole_histllm.run_io import MALFORMED, cli_main, load_run, summarize
from recbole_histllm.utils import InputError, UsageError

USAGE = ("usage: python -m recbole_histllm.predict --run=DIR --input=pairs.csv [--output=scores.csv] "
         "[--any_config_key=value ...]")


def read_pairs(path: str | Path) -> tuple[pd.DataFrame, list[bool]]:
    """The pairs file as a frame of strings and, per row, whether its line had the header's field count."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            lines = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"cannot read --input={path}: {getattr(err, 'strerror', None) or err}") from None
    header = [name.strip() for name in lines[0]] if lines else []
    missing = [name for name in ("user_id", "item_id") if name not in header]
    if missing:
        raise InputError(f"--input={path}: line 1 must be a header naming user_id,item_id[,timestamp]; "
                         f"no {', '.join(missing)}")
    if len(set(header)) != len(header):
        raise InputError(f"--input={path}: line 1 repeats a column name")
    body = [row for row in lines[1:] if row]  # blank lines carry nothing
    fits = [len(row) == len(header) for row in body]
    rows = [row[: len(header)] + [""] * (len(header) - len(row)) for row in body]
    return pd.DataFrame(rows, columns=header, dtype=str), fits


def predict(args: dict[str, str]) -> int:
    """The command: read, score, write, report the counts."""
    if not args.get("input"):
        raise UsageError(f"--input=FILE is required. {USAGE}")
    pairs, fits = read_pairs(args.pop("input"))
    output = args.pop("output", None)
    run = load_run(args.pop("run"), **args)
    fit = pd.Series(fits, index=pairs.index, dtype=bool)
    scored = run.score(pairs[fit])
    out = pairs.assign(score=scored["score"].reindex(pairs.index),
                       status=scored["status"].reindex(pairs.index).fillna(MALFORMED))
    out.to_csv(output or sys.stdout, index=False)
    print(summarize(out["status"]) + (f"; written to {output}" if output else ""), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli_main(argv, USAGE, predict)


if __name__ == "__main__":
    sys.exit(main())
