"""MIND (Microsoft News) -> RecBole CTR dataset ("news" in the paper).

Raw folder(s): ``behaviors.tsv`` (impression_id, user_id, time ``11/15/2019 8:55:22 AM``,
history (space separated news ids, may be empty), impressions ``N1-1 N2-0``) and
``news.tsv`` (news_id, category, subcategory, title, abstract, url, title_entities,
abstract_entities). One row per impression item, label = click. History = the user's
clicks strictly earlier; the behaviors history column (taken from the user's earliest
impression) counts as clicks earlier than any impression. Several ``--raw`` folders
(e.g. MINDsmall_train MINDsmall_dev) are merged.

    python -m dataset_converters.mind --raw DIR [DIR ...] --output_dir dataset/mind [--images DIR]
"""

from __future__ import annotations

import argparse
import calendar
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from dataset_converters.cli import Parser, existing_dir, run_main
from dataset_converters.core import (
    ConversionReport,
    add_common_args,
    clean_text,
    configure_logging,
    finalize_dataset,
    find_images,
    format_summary,
    iter_lines,
    valid_token,
)

logger = logging.getLogger("dataset_converters.mind")

TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def parse_time(value: str) -> float | None:
    """'11/15/2019 8:55:22 AM' -> seconds since the epoch (read as UTC), None when invalid."""
    try:
        dt = datetime.strptime(value.strip(), TIME_FORMAT)
    except ValueError:
        return None
    return float(calendar.timegm(dt.timetuple()))


def load_news(paths: Sequence[Path], report: ConversionReport) -> pd.DataFrame:
    """item_id, title, abstract from one or more news.tsv files (first occurrence wins)."""
    news: dict[str, tuple[str, str]] = {}
    for path in paths:
        in_file: set[str] = set()
        for line_no, line in iter_lines(path, report):
            if not line.strip():
                continue
            fields = line.split("\t")
            if not 4 <= len(fields) <= 8:
                report.bad(path, line_no, f"expected 8 fields, got {len(fields)}", line)
                continue
            news_id = fields[0].strip()
            if not valid_token(news_id):
                report.bad(path, line_no, "invalid news id", line)
                continue
            if news_id in in_file:
                report.bad(path, line_no, "duplicate news id", line)
                continue
            in_file.add(news_id)
            title = clean_text(fields[3])
            abstract = clean_text(fields[4]) if len(fields) > 4 else ""
            if not title:
                report.bad(path, line_no, "empty title", line)
                continue
            news.setdefault(news_id, (title, abstract))
    return pd.DataFrame([(k, *v) for k, v in news.items()], columns=["item_id", "title", "abstract"])


def load_behaviors(paths: Sequence[Path], report: ConversionReport) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Impression rows (user_id, item_id, label, timestamp) and each user's prior history."""
    users: list[str] = []
    items: list[str] = []
    labels: list[int] = []
    stamps: list[float] = []
    prior: dict[str, tuple[float, list[str]]] = {}
    for path in paths:
        seen_impressions: set[str] = set()
        for line_no, line in iter_lines(path, report):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 5:
                report.bad(path, line_no, f"expected 5 fields, got {len(fields)}", line)
                continue
            imp_id, user, time_s, history_s, impressions_s = (f.strip() for f in fields)
            if not valid_token(user):
                report.bad(path, line_no, "invalid user id", line)
                continue
            if imp_id in seen_impressions:
                report.bad(path, line_no, "duplicate impression id", line)
                continue
            ts = parse_time(time_s)
            if ts is None:
                report.bad(path, line_no, "invalid time", line)
                continue
            history = history_s.split()
            if not all(valid_token(h) for h in history):
                report.bad(path, line_no, "invalid news id in history", line)
                continue
            tokens = impressions_s.split()
            if not tokens:
                report.bad(path, line_no, "no impressions", line)
                continue
            parsed = []
            for tok in tokens:
                news_id, sep, click = tok.rpartition("-")
                if not sep or click not in ("0", "1") or not valid_token(news_id):
                    parsed = None
                    break
                parsed.append((news_id, int(click)))
            if parsed is None:
                reason = "impressions without click labels" if "-" not in impressions_s else "malformed impression"
                report.bad(path, line_no, reason, line)
                continue
            seen_impressions.add(imp_id)
            if user not in prior or ts < prior[user][0]:
                prior[user] = (ts, history)
            for news_id, click in parsed:
                users.append(user)
                items.append(news_id)
                labels.append(click)
                stamps.append(ts)
    inter = pd.DataFrame({"user_id": users, "item_id": items, "label": labels, "timestamp": stamps})
    return inter, {u: h for u, (_, h) in prior.items()}


def build_mind(
    raw_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    max_history: int = 20,
    user_core: int = 0,
    item_core: int = 0,
    sample_users: int | None = None,
    sample_items: int | None = None,
    seed: int = 2024,
    missing_meta: str = "drop",
    require_image: bool = False,
) -> dict[str, Any]:
    """Convert MIND folder(s) into ``out_dir``; returns the summary."""
    if isinstance(raw_dirs, (str, os.PathLike)):
        raw_dirs = [raw_dirs]
    raws = [Path(r) for r in raw_dirs]
    for raw in raws:
        for name in ("behaviors.tsv", "news.tsv"):
            if not (raw / name).is_file():
                raise FileNotFoundError(f"{raw / name} not found")
    report = ConversionReport()
    news = load_news([r / "news.tsv" for r in raws], report)
    inter, prior = load_behaviors([r / "behaviors.tsv" for r in raws], report)
    image_items = find_images(images, report)
    return finalize_dataset(
        inter,
        news,
        out_dir,
        max_history=max_history,
        user_core=user_core,
        item_core=item_core,
        n_users=sample_users,
        n_items=sample_items,
        seed=seed,
        missing_meta=missing_meta,
        dedupe_keys=("user_id", "item_id", "timestamp"),
        prior_history=prior,
        image_items=image_items,
        require_image=require_image,
        report=report,
        extra={
            "source": [str(r) for r in raws],
            "label_rule": "click",
        },
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", required=True, type=existing_dir, nargs="+",
                        help="folder(s) with behaviors.tsv and news.tsv")
    parser.add_argument("--images", type=existing_dir, default=None, help="image folder, <news_id>.jpg")
    add_common_args(parser)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    summary = build_mind(
        args.raw,
        args.out,
        args.images,
        max_history=args.max_history,
        user_core=args.user_core,
        item_core=args.item_core,
        sample_users=args.sample_users,
        sample_items=args.sample_items,
        seed=args.seed,
        missing_meta=args.missing_meta,
        require_image=args.require_image,
    )
    print(format_summary(summary, Path(args.out).resolve().name))
    return summary


if __name__ == "__main__":
    sys.exit(run_main(main))
