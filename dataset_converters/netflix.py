"""Netflix Prize -> RecBole CTR dataset ("netflix" in the paper).

Raw folder: ``combined_data_*.txt`` (a ``<movie_id>:`` line, then
``customer_id,rating,YYYY-MM-DD`` lines) and ``movie_titles.csv`` (latin-1,
``id,year,title``; the title may contain unquoted commas, the year may be ``NULL``).
label = rating >= 4; timestamp = the date (UTC midnight); title "Title (YYYY)".

    python -m dataset_converters.netflix --raw DIR --output_dir dataset/netflix [--images DIR]

With ``--sample_users N`` the users are sampled in a first pass over the rating files, so
only the sampled users' ratings are held in memory (the full data has 100M ratings).
"""

from __future__ import annotations

import argparse
import calendar
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from dataset_converters.cli import Parser, existing_dir, existing_file, run_main
from dataset_converters.core import (
    ConversionReport,
    add_common_args,
    clean_text,
    configure_logging,
    finalize_dataset,
    find_images,
    format_summary,
    iter_lines,
    sample_ids,
)

logger = logging.getLogger("dataset_converters.netflix")

LIKE_THRESHOLD = 4
_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_INT_RE = re.compile(r"^\d+$")


def date_to_timestamp(value: str) -> float | None:
    """'YYYY-MM-DD' -> seconds since the epoch at UTC midnight, None when invalid."""
    m = _DATE_RE.match(value.strip())
    if not m:
        return None
    year, month, day = (int(g) for g in m.groups())
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        return None
    return float(calendar.timegm((year, month, day, 0, 0, 0)))


def rating_files(raw: Path) -> list[Path]:
    """``combined_data_*.txt`` in numeric order (``--raw`` may also be one such file)."""
    if raw.is_file():
        return [raw]
    files = sorted(
        raw.glob("combined_data_*.txt"),
        key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)],
    )
    if not files:
        raise FileNotFoundError(f"no combined_data_*.txt in {raw}")
    return files


def iter_ratings(
    files: list[Path], report: ConversionReport, count_errors: bool = True
) -> Iterator[tuple[str, str, int, float]]:
    """Yield (customer_id, movie_id, rating, timestamp) for every valid rating line."""
    quiet = ConversionReport(show=0)  # first pass of two: do not count twice
    rep = report if count_errors else quiet
    for path in files:
        movie: str | None = None
        for line_no, line in iter_lines(path, rep):
            line = line.strip()
            if not line:
                continue
            if line.endswith(":"):
                head = line[:-1].strip()
                if _INT_RE.match(head):
                    movie = str(int(head))
                else:
                    rep.bad(path, line_no, "invalid movie header", line)
                    movie = None
                continue
            fields = line.split(",")
            if len(fields) != 3:
                rep.bad(path, line_no, f"expected 3 fields, got {len(fields)}", line)
                continue
            if movie is None:
                rep.bad(path, line_no, "rating without a valid movie header", line)
                continue
            user, rating, date = (f.strip() for f in fields)
            if not _INT_RE.match(user):
                rep.bad(path, line_no, "non-numeric customer id", line)
                continue
            if rating not in ("1", "2", "3", "4", "5"):
                rep.bad(path, line_no, "rating not in 1..5", line)
                continue
            ts = date_to_timestamp(date)
            if ts is None:
                rep.bad(path, line_no, "invalid date", line)
                continue
            yield str(int(user)), movie, int(rating), ts


def load_titles(path: Path, report: ConversionReport) -> pd.DataFrame:
    """item_id, title ("Title (YYYY)", year omitted when NULL) from movie_titles.csv."""
    rows = []
    seen: set[str] = set()
    for line_no, line in iter_lines(path, report, encoding="utf-8", fallback="latin-1"):
        if not line.strip():
            continue
        parts = line.split(",", 2)  # the title itself may contain commas
        if len(parts) != 3:
            report.bad(path, line_no, "expected id,year,title", line)
            continue
        movie, year, title = parts[0].strip(), parts[1].strip(), clean_text(parts[2])
        if not _INT_RE.match(movie):
            if line_no == 1:  # a header line
                continue
            report.bad(path, line_no, "non-numeric movie id", line)
            continue
        if not title:
            report.bad(path, line_no, "empty title", line)
            continue
        movie = str(int(movie))
        if movie in seen:
            report.bad(path, line_no, "duplicate movie id", line)
            continue
        seen.add(movie)
        if _INT_RE.match(year):
            title = f"{title} ({year})"
        elif year.upper() != "NULL" and year:
            report.note(f"{path.name}: non-numeric year ignored")
        rows.append((movie, title))
    return pd.DataFrame(rows, columns=["item_id", "title"])


def build_netflix(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    titles: str | os.PathLike | None = None,
    max_history: int = 20,
    user_core: int = 0,
    item_core: int = 0,
    sample_users: int | None = None,
    sample_items: int | None = None,
    seed: int = 2024,
    missing_meta: str = "drop",
    require_image: bool = False,
) -> dict[str, Any]:
    """Convert the Netflix Prize files in ``raw_dir`` into ``out_dir``; returns the summary."""
    raw = Path(raw_dir)
    report = ConversionReport()
    files = rating_files(raw)
    titles_path = Path(titles) if titles else (raw if raw.is_dir() else raw.parent) / "movie_titles.csv"
    items = load_titles(titles_path, report)

    keep_users = None
    if sample_users:
        all_users = {u for u, _, _, _ in iter_ratings(files, report, count_errors=False)}
        keep_users = sample_ids(all_users, sample_users, seed + 1)
        report.info["users_before_sampling"] = len(all_users)
    users: list[str] = []
    movies: list[str] = []
    labels: list[int] = []
    stamps: list[float] = []
    skipped = 0
    for user, movie, rating, ts in iter_ratings(files, report):
        if keep_users is not None and user not in keep_users:
            skipped += 1
            continue
        users.append(user)
        movies.append(movie)
        labels.append(int(rating >= LIKE_THRESHOLD))
        stamps.append(ts)
    report.drop("sampling_users", skipped)
    inter = pd.DataFrame({"user_id": users, "item_id": movies, "label": labels, "timestamp": stamps})
    image_items = find_images(images, report)
    return finalize_dataset(
        inter,
        items,
        out_dir,
        max_history=max_history,
        user_core=user_core,
        item_core=item_core,
        n_items=sample_items,
        seed=seed,
        missing_meta=missing_meta,
        image_items=image_items,
        require_image=require_image,
        report=report,
        extra={
            "source": str(raw),
            "label_rule": "rating >= 4",
        },
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", required=True, type=existing_dir,
                        help="folder with combined_data_*.txt and movie_titles.csv")
    parser.add_argument("--titles", type=existing_file, default=None, help="movie_titles.csv (default: in --raw)")
    parser.add_argument("--images", type=existing_dir, default=None, help="poster folder, <movie_id>.jpg")
    add_common_args(parser)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    summary = build_netflix(
        args.raw,
        args.out,
        args.images,
        titles=args.titles,
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
