"""ml-100k CTR dataset from the copy shipped inside the installed ``recbole`` package.

label = rating >= 4; title "Movie Title (year)".

    python -m dataset_converters.ml100k --out dataset/ml-100k
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from dataset_converters.cli import Parser, int_at_least, run_main
from dataset_converters.core import (
    LIKE_THRESHOLD,
    ConversionReport,
    configure_logging,
    finalize_dataset,
    format_summary,
    valid_token,
)

logger = logging.getLogger("dataset_converters.ml100k")


def recbole_ml100k_dir() -> Path:
    """Folder of the ml-100k example inside the installed recbole package."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the recbole package is not installed")
    for root in spec.submodule_search_locations:
        folder = Path(root) / "dataset_example" / "ml-100k"
        if (folder / "ml-100k.inter").is_file():
            return folder
    raise FileNotFoundError("recbole/dataset_example/ml-100k/ml-100k.inter not found")


def _read_atomic(path: Path, report: ConversionReport) -> tuple[list[str], list[list[str]]]:
    """Header field names and the rows of a RecBole atomic file (bad lines counted)."""
    with open(path, encoding="utf-8", newline="") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\r\n").split("\t")]
        rows = []
        for line_no, line in enumerate(f, start=2):
            if not line.endswith("\n"):
                report.bad(path, line_no, "truncated line (no newline)", line)
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != len(header):
                report.bad(path, line_no, f"expected {len(header)} fields, got {len(fields)}", line)
                continue
            rows.append(fields)
    return header, rows


def load_ml100k(folder: Path, report: ConversionReport) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Interaction frame (user_id, item_id, label, timestamp) and item frame (item_id, title)."""
    header, rows = _read_atomic(folder / "ml-100k.inter", report)
    col = {name: i for i, name in enumerate(header)}
    users, items, labels, stamps = [], [], [], []
    inter_path = folder / "ml-100k.inter"
    for line_no, r in enumerate(rows, start=2):
        user, item = r[col["user_id"]], r[col["item_id"]]
        try:
            rating = float(r[col["rating"]])
            ts = float(r[col["timestamp"]])
        except ValueError:
            report.bad(inter_path, line_no, "non-numeric rating or timestamp", "\t".join(r))
            continue
        if not (valid_token(user) and valid_token(item)):
            report.bad(inter_path, line_no, "invalid user or item id", "\t".join(r))
            continue
        users.append(user)
        items.append(item)
        labels.append(int(rating >= LIKE_THRESHOLD))
        stamps.append(ts)
    inter = pd.DataFrame({"user_id": users, "item_id": items, "label": labels, "timestamp": stamps})

    header, rows = _read_atomic(folder / "ml-100k.item", report)
    col = {name: i for i, name in enumerate(header)}
    titles = []
    for r in rows:
        title = r[col["movie_title"]].strip()
        year = r[col["release_year"]].strip() if "release_year" in col else ""
        titles.append((r[col["item_id"]], f"{title} ({year})" if year else title))
    item_df = pd.DataFrame(titles, columns=["item_id", "title"])
    return inter, item_df


def build_ml100k(out_dir: str | os.PathLike, max_history: int = 20) -> dict[str, Any]:
    """Convert recbole's bundled ml-100k into ``out_dir``; returns the Table-1 summary."""
    report = ConversionReport()
    folder = recbole_ml100k_dir()
    inter, items = load_ml100k(folder, report)
    return finalize_dataset(
        inter,
        items,
        out_dir,
        max_history=max_history,
        missing_meta="keep",
        report=report,
        extra={"source": "recbole/dataset_example/ml-100k", "label_rule": "rating >= 4"},
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", "--out", dest="out", default="dataset/ml-100k",
                        help="output folder (--out: the former name)")
    parser.add_argument("--max_history", type=int_at_least(1), default=20)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    summary = build_ml100k(args.out, args.max_history)
    print(format_summary(summary, Path(args.out).resolve().name))
    return summary


if __name__ == "__main__":
    sys.exit(run_main(main))
