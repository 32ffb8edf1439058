"""MIND (Microsoft News) -> RecBole CTR dataset ("news" in the paper).

Raw folder(s): ``behaviors.tsv`` (impression_id, user_id, time ``11/15/2019 8:55:22 AM``,
history (space separated news ids, may be empty), impressions ``N1-1 N2-0``) and
``news.tsv`` (news_id, category, subcategory, title, abstract, url, title_entities,
abstract_entities). One row per impression item, label = click, with the impression's id in
``impression_id`` (the raw id; ``<k>_<id>`` for the k-th of several ``--raw`` folders, whose ids
restart), so the split keeps impressions whole and the metrics group by it. History = the user's
clicks strictly earlier; the behaviors history column (taken from the user's earliest
impression) counts as clicks earlier than any impression. Several ``--raw`` folders
(e.g. MINDsmall_train MINDsmall_dev) are merged. A row whose own news id is in its history is
kept (MIND shows clicked news again; counted as ``target_in_history`` in summary.json).

Bad lines are skipped and counted per file and reason (the first few logged with file, line and
field): wrong field count, a missing or unreadable time, a user id that is not ``U<digits>``
(MIND's form; ``U?`` placeholders would merge unrelated users), an impression token without its
``-0``/``-1`` click label, a duplicate impression id. A file without a usable line stops the
conversion with one line naming it.

    python -m dataset_converters.mind --raw DIR [DIR ...] --output_dir dataset/mind [--images DIR]
"""

from __future__ import annotations

import argparse
import calendar
import logging
import os
import re
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
USER_ID = re.compile(r"U\d+")


def parse_time(value: str) -> float | None:
    """'11/15/2019 8:55:22 AM' -> seconds since the epoch (read as UTC), None when invalid."""
    try:
        dt = datetime.strptime(value.strip(), TIME_FORMAT)
    except ValueError:
        return None
    return float(calendar.timegm(dt.timetuple()))


def _require_rows(path: Path, usable: int, what: str, report: ConversionReport) -> None:
    """A file without one usable line stops the conversion (one line naming the file and why)."""
    if usable:
        return
    if not path.read_bytes().strip():
        raise ValueError(f"{path}: empty file, expected {what}")
    reasons = ", ".join(f"{n} {reason}" for reason, n in report.malformed.get(path.name, {}).items())
    raise ValueError(f"{path}: no usable line ({reasons or 'all blank'}), expected {what}")


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
        _require_rows(path, len(in_file), "news rows of 8 tab-separated fields", report)
    return pd.DataFrame([(k, *v) for k, v in news.items()], columns=["item_id", "title", "abstract"])


def load_behaviors(paths: Sequence[Path], report: ConversionReport) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Impression rows (user_id, item_id, label, timestamp, impression_id) and each user's prior history."""
    users: list[str] = []
    items: list[str] = []
    labels: list[int] = []
    stamps: list[float] = []
    impressions: list[str] = []
    prior: dict[str, tuple[float, list[str]]] = {}
    for k, path in enumerate(paths):
        seen_impressions: set[str] = set()
        for line_no, line in iter_lines(path, report):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 5:
                report.bad(path, line_no, f"expected 5 fields, got {len(fields)}", line)
                continue
            imp_id, user, time_s, history_s, impressions_s = (f.strip() for f in fields)
            if not valid_token(imp_id):
                report.bad(path, line_no, "impression id: missing or invalid", line)
                continue
            if not USER_ID.fullmatch(user):
                report.bad(path, line_no, "user id: not U<digits>", line)
                continue
            if imp_id in seen_impressions:
                report.bad(path, line_no, "duplicate impression id", line)
                continue
            ts = parse_time(time_s)
            if ts is None:
                report.bad(path, line_no, "missing time" if not time_s else "invalid time", line)
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
                reason = ("impressions without click labels" if "-" not in impressions_s
                          else "impressions: a token without -0/-1 click label")
                report.bad(path, line_no, reason, line)
                continue
            seen_impressions.add(imp_id)
            if user not in prior or ts < prior[user][0]:
                prior[user] = (ts, history)
            impression = imp_id if len(paths) == 1 else f"{k}_{imp_id}"
            for news_id, click in parsed:
                users.append(user)
                items.append(news_id)
                labels.append(click)
                stamps.append(ts)
                impressions.append(impression)
        _require_rows(path, len(seen_impressions), "impression lines of 5 tab-separated fields", report)
    inter = pd.DataFrame({"user_id": users, "item_id": items, "label": labels, "timestamp": stamps,
                          "impression_id": impressions})
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
        dedupe_keys=("impression_id", "item_id"),
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
