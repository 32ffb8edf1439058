"""The Movies Dataset (Kaggle) -> RecBole CTR dataset ("movie" in the paper).

Raw folder: ``ratings_small.csv`` (or ``ratings.csv``), ``links.csv`` / ``links_small.csv``
(movieId,imdbId,tmdbId) and ``movies_metadata.csv`` (id = tmdbId; title, overview,
release_date). Item ids are MovieLens movieIds (posters ``<movieId>.jpg`` are keyed by
them); label = rating >= 4; title "Title (YYYY)"; ``overview`` kept as an extra text column.

    python -m dataset_converters.movie --raw DIR --output_dir dataset/movie [--images DIR]
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Unpack

import pandas as pd

from dataset_converters.cli import run_main
from dataset_converters.core import (
    INT_RE,
    LIKE_THRESHOLD,
    ConversionReport,
    ConvertOptions,
    clean_text,
    converter_parser,
    finalize_dataset,
    finalize_options,
    find_images,
    iter_lines,
    read_text_file,
    run_converter,
)

logger = logging.getLogger("dataset_converters.movie")

_YEAR_RE = re.compile(r"^(\d{4})")


def _int_id(value: str) -> str | None:
    """Canonical integer id ('00862' -> '862', '862.0' -> '862'), None when not an id."""
    value = value.strip()
    if value.endswith(".0"):
        value = value[:-2]
    if not INT_RE.match(value):
        return None
    return str(int(value))


def pick_file(raw: Path, *names: str) -> Path:
    """The first of ``names`` present in ``raw``."""
    for name in names:
        if (raw / name).is_file():
            return raw / name
    raise FileNotFoundError(f"none of {', '.join(names)} found in {raw}")


def load_ratings(path: Path, report: ConversionReport) -> pd.DataFrame:
    """user_id, item_id (movieId), label (rating >= 4), timestamp from a ratings csv."""
    users: list[str] = []
    items: list[str] = []
    labels: list[int] = []
    stamps: list[float] = []
    col = {"userId": 0, "movieId": 1, "rating": 2, "timestamp": 3}
    width = 4
    for line_no, line in iter_lines(path, report):
        fields = line.split(",")
        if line_no == 1 and not INT_RE.match(fields[0].strip()):
            names = [f.strip() for f in fields]
            if not set(col) <= set(names):
                raise ValueError(f"{path}: header must name {sorted(col)}, got {names}")
            col = {k: names.index(k) for k in col}
            width = len(names)
            continue
        if not line.strip():
            report.bad(path, line_no, "empty line")
            continue
        if len(fields) != width:
            report.bad(path, line_no, f"expected {width} fields, got {len(fields)}", line)
            continue
        user, item = _int_id(fields[col["userId"]]), _int_id(fields[col["movieId"]])
        if user is None or item is None:
            report.bad(path, line_no, "non-numeric userId or movieId", line)
            continue
        try:
            rating = float(fields[col["rating"]])
            ts = float(fields[col["timestamp"]])
        except ValueError:
            report.bad(path, line_no, "non-numeric rating or timestamp", line)
            continue
        if not 0.0 <= rating <= 5.0:
            report.bad(path, line_no, "rating out of range", line)
            continue
        users.append(user)
        items.append(item)
        labels.append(int(rating >= LIKE_THRESHOLD))
        stamps.append(ts)
    return pd.DataFrame({"user_id": users, "item_id": items, "label": labels, "timestamp": stamps})


def load_links(path: Path, report: ConversionReport) -> dict[str, str]:
    """movieId -> tmdbId."""
    links: dict[str, str] = {}
    reader = csv.reader(io.StringIO(read_text_file(path, report)))
    header = [h.strip() for h in next(reader, [])]
    if "movieId" not in header or "tmdbId" not in header:
        raise ValueError(f"{path}: header must name movieId and tmdbId, got {header}")
    i_movie, i_tmdb = header.index("movieId"), header.index("tmdbId")
    for row in reader:
        line_no = reader.line_num
        if len(row) != len(header):
            report.bad(path, line_no, f"expected {len(header)} fields, got {len(row)}", ",".join(row))
            continue
        movie, tmdb = _int_id(row[i_movie]), _int_id(row[i_tmdb])
        if movie is None:
            report.bad(path, line_no, "non-numeric movieId", ",".join(row))
            continue
        if tmdb is None:
            report.bad(path, line_no, "missing or non-numeric tmdbId", ",".join(row))
            continue
        if movie in links:
            report.bad(path, line_no, "duplicate movieId", ",".join(row))
            continue
        links[movie] = tmdb
    return links


def load_metadata(path: Path, report: ConversionReport) -> dict[str, tuple[str, str]]:
    """tmdbId -> (title "Title (YYYY)", overview) from movies_metadata.csv."""
    text = read_text_file(path, report)
    csv.field_size_limit(1 << 24)
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    needed = ("id", "title", "overview", "release_date")
    if not set(needed) <= set(header):
        raise ValueError(f"{path}: header must name {needed}, got {header}")
    idx = {k: header.index(k) for k in (*needed, "original_title") if k in header}
    meta: dict[str, tuple[str, str]] = {}
    rows = []
    try:
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as exc:  # e.g. a NUL byte: the rest of the file cannot be parsed
        report.bad(path, reader.line_num, f"csv error, rest of file skipped: {exc}")
    if rows and not text.endswith("\n"):
        line_no, row = rows.pop()
        report.bad(path, line_no, "truncated last record (no trailing newline)", ",".join(row))
    for line_no, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            report.bad(path, line_no, f"expected {len(header)} fields, got {len(row)}", ",".join(row))
            continue
        tmdb = _int_id(row[idx["id"]])
        if tmdb is None:
            report.bad(path, line_no, f"non-numeric id {row[idx['id']]!r}", ",".join(row))
            continue
        if tmdb in meta:
            report.bad(path, line_no, "duplicate id", ",".join(row))
            continue
        title = clean_text(row[idx["title"]])
        if not title and "original_title" in idx:
            title = clean_text(row[idx["original_title"]])
        if not title:
            report.bad(path, line_no, "empty title", ",".join(row))
            continue
        year = _YEAR_RE.match(row[idx["release_date"]].strip())
        if year:
            title = f"{title} ({year.group(1)})"
        meta[tmdb] = (title, clean_text(row[idx["overview"]]))
    return meta


def load_movielens_titles(path: Path, report: ConversionReport) -> dict[str, str]:
    """movieId -> "Title (YYYY)" from a MovieLens movies file (``movies.dat`` or ``movies.csv``)."""
    titles: dict[str, str] = {}
    if path.suffix == ".csv":
        reader = csv.reader(io.StringIO(read_text_file(path, report)))
        header = next(reader, [])
        if header[:2] != ["movieId", "title"]:
            raise ValueError(f"{path}: header must start with movieId,title; got {header}")
        records = ((reader.line_num, row) for row in reader)
    else:
        records = ((n, line.split("::")) for n, line in iter_lines(path, report))
    for line_no, row in records:
        if len(row) < 2:
            report.bad(path, line_no, "expected movieId and title", str(row))
            continue
        movie, title = _int_id(row[0]), clean_text(row[1])
        if movie is None or not title:
            report.bad(path, line_no, "non-numeric movieId or empty title", str(row))
            continue
        titles.setdefault(movie, title)
    return titles


def find_movielens_titles(raw: Path) -> Path | None:
    """A MovieLens movies file in ``raw`` (``movies.dat``, ``*movies.dat``, ``movies.csv``)."""
    for name in ("movies.dat", "movies.csv"):
        if (raw / name).is_file():
            return raw / name
    found = sorted(raw.glob("*movies.dat"))
    return found[0] if found else None


def build_movie(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    ratings: str | None = None,
    movielens_titles: str | os.PathLike | None = "auto",
    **options: Unpack[ConvertOptions],
) -> dict[str, Any]:
    """Convert The Movies Dataset in ``raw_dir`` into ``out_dir``; returns the summary.

    ``movielens_titles``: a MovieLens movies file (``movies.dat`` / ``movies.csv``) whose
    titles fill items absent from movies_metadata.csv (empty overview); "auto" looks for
    one in ``raw_dir``, None disables the fallback.
    """
    raw = Path(raw_dir)
    report = ConversionReport()
    ratings_path = raw / ratings if ratings else pick_file(raw, "ratings_small.csv", "ratings.csv")
    links_path = pick_file(raw, "links.csv", "links_small.csv")
    meta_path = pick_file(raw, "movies_metadata.csv")
    logger.info("reading %s, %s, %s", ratings_path.name, links_path.name, meta_path.name)
    inter = load_ratings(ratings_path, report)
    links = load_links(links_path, report)
    meta = load_metadata(meta_path, report)
    rows = [(movie, *meta[tmdb]) for movie, tmdb in links.items() if tmdb in meta]
    report.info["items_with_metadata"] = len(rows)
    if movielens_titles == "auto":
        ml_path = find_movielens_titles(raw)
    else:
        ml_path = Path(movielens_titles) if movielens_titles else None
    if ml_path is not None:
        have = {r[0] for r in rows}
        extra_rows = [(m, t, "") for m, t in load_movielens_titles(ml_path, report).items() if m not in have]
        rows += extra_rows
        report.info["items_titled_from_movielens"] = len(extra_rows)
        report.info["movielens_titles_file"] = ml_path.name
    items = pd.DataFrame(rows, columns=["item_id", "title", "overview"])
    image_items = find_images(images, report)
    return finalize_dataset(
        inter,
        items,
        out_dir,
        image_items=image_items,
        report=report,
        extra={
            "source": str(raw),
            "ratings_file": ratings_path.name,
            "label_rule": "rating >= 4",
        },
        **finalize_options(options),
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = converter_parser(__doc__, "folder with the Kaggle csv files", "poster folder, <movieId>.jpg")
    parser.add_argument("--ratings", default=None, help="ratings file name (default ratings_small.csv, ratings.csv)")
    parser.add_argument(
        "--movielens_titles",
        default="auto",
        type=lambda value: None if value == "none" else value,
        help="MovieLens movies file for titles missing from movies_metadata.csv ('auto': look in --raw; 'none')",
    )
    return run_converter(parser, argv, build_movie, "ratings", "movielens_titles")


if __name__ == "__main__":
    sys.exit(run_main(main))
