"""Netflix Prize -> RecBole CTR dataset ("netflix" in the paper).

Raw folder: ``combined_data_*.txt`` (a ``<movie_id>:`` line, then
``customer_id,rating,YYYY-MM-DD`` lines) and ``movie_titles.csv`` (latin-1,
``id,year,title``; the title may contain unquoted commas, the year may be ``NULL``).
label = rating >= 4; timestamp = the date (UTC midnight); title "Title (YYYY)".

    python -m dataset_converters.netflix --raw DIR --output_dir dataset/netflix [--images DIR]

The rating files are parsed in blocks of 4 MiB with numpy (:func:`parse_ratings`): plain lines
(``id:``, ``id,r,YYYY-MM-DD``) are checked and decoded by array operations, any other line by the
reference rules of :func:`_parse_line` (stripped fields, Unicode digits, the same reasons), so memory
is bounded by the block plus the ratings kept. Bad lines are counted with file, line number and reason
(a rating before any ``<movie_id>:`` header, a bad date, a rating outside 1..5, an empty file, a line
over 1 MiB, which is skipped while it is read, ...).
With ``--sample_users N`` the users are sampled in a first pass over the rating files, so
only the sampled users' ratings are held in memory (the full data has 100M ratings).
"""

from __future__ import annotations

import calendar
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple, Unpack

import numpy as np
import pandas as pd

from dataset_converters.cli import existing_file, run_main
from dataset_converters.core import (
    BLOCK_BYTES,
    INT_RE,
    LIKE_THRESHOLD,
    MAX_LINE_BYTES,
    ConversionReport,
    ConvertOptions,
    clean_text,
    converter_parser,
    decode_line,
    finalize_dataset,
    finalize_options,
    find_images,
    iter_lines,
    line_bounds,
    read_blocks,
    run_converter,
    sample_ids,
)

logger = logging.getLogger("dataset_converters.netflix")

_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


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


# Line kinds of the parser (one int8 per raw line).
_BLANK, _HEADER, _BAD_HEADER, _RATING, _BAD_RATING, _BAD = range(6)
_NO_MOVIE = "rating without a valid movie header"
_INT64_MAX = 2**63 - 1
_DAYS_BEFORE_MONTH = np.array([0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334], dtype=np.int64)
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


class Ratings(NamedTuple):
    """Parsed rating lines, in file order: ids as int64, rating 1..5, timestamp in seconds (UTC midnight)."""

    user: np.ndarray
    movie: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray

    @classmethod
    def concat(cls, parts: list[Ratings]) -> Ratings:
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.float64))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls._fields))


def _parse_line(text: str) -> tuple[int, Any]:
    """(kind, value) of one raw line, the reference rules: fields stripped, ``\\d`` digits, a valid date.

    value: the movie id (``_HEADER``), (user, rating, timestamp) (``_RATING``) or the reason (bad kinds).
    The vectorised scan sends here only the lines that are not plain ASCII ``id:`` or ``id,r,YYYY-MM-DD``.
    """
    line = text.strip()
    if not line:
        return _BLANK, None
    if line.endswith(":"):
        head = line[:-1].strip()
        if not INT_RE.match(head):
            return _BAD_HEADER, "invalid movie header"
        return (_HEADER, int(head)) if int(head) <= _INT64_MAX else (_BAD_HEADER, "movie id out of range")
    fields = line.split(",")
    if len(fields) != 3:
        return _BAD, f"expected 3 fields, got {len(fields)}"
    user, rating, date = (f.strip() for f in fields)
    if not INT_RE.match(user):
        return _BAD_RATING, "non-numeric customer id"
    if rating not in ("1", "2", "3", "4", "5"):
        return _BAD_RATING, "rating not in 1..5"
    ts = date_to_timestamp(date)
    if ts is None:
        return _BAD_RATING, "invalid date"
    if int(user) > _INT64_MAX:
        return _BAD_RATING, "customer id out of range"
    return _RATING, (int(user), int(rating), ts)


def _digits(a: np.ndarray, last: np.ndarray, count: np.ndarray | int) -> np.ndarray:
    """int64 values of the ASCII digit runs ending at byte ``last`` (inclusive), ``count`` (<= 18) each."""
    value = np.zeros(len(last), np.int64)
    for k in range(int(np.max(count, initial=0))):
        digit = a[np.maximum(last - k, 0)].astype(np.int64) - 48
        value += (np.where(count > k, digit, 0) if k else digit) * 10**k
    return value


# Byte classes of the plain-line check, one radix-32 digit each: a line of at most 31 bytes has
# counts < 32, so the per-line sum of the codes gives every count exactly.
_COMMA, _DASH, _COLON, _OTHER = 1, 32, 32**2, 32**3
_CODE = np.full(256, _OTHER, np.int64)
_CODE[ord("0") : ord("9") + 1] = 0
_CODE[ord(",")], _CODE[ord("-")], _CODE[ord(":")] = _COMMA, _DASH, _COLON
_CODE = _CODE.astype(np.uint16)
_PLAIN_RATING = 2 * _COMMA + 2 * _DASH  # digits,r,YYYY-MM-DD
_PLAIN_HEADER = _COLON  # digits:


def _scan_block(buf: bytes, carry_movie: int) -> tuple[Ratings, list[tuple[int, str, str]], int, list[int]]:
    """Parse whole lines ``buf`` (ends with a newline) of one rating file.

    Returns the valid ratings, the bad lines as (index in block, reason, text) in line order, the movie
    in force after the block (-1: none) and the indices of lines decoded as latin-1.
    """
    a = np.frombuffer(buf, np.uint8)
    starts, ends, has_cr, stop = line_bounds(a)  # stop: one trailing \r dropped
    length = stop - starts
    n = len(ends)
    # the class counts of each line without its \r\n (meaningful for lines up to 31 bytes)
    code = np.add.reduceat(_CODE[a], starts, dtype=np.int64) - _OTHER * (1 + has_cr)
    short = length <= 31

    kind = np.full(n, -1, np.int8)  # -1: not plain, parsed by _parse_line
    value = np.zeros(n, np.int64)  # movie id of header lines
    # plain header: 1-18 digits then ':'
    head = np.flatnonzero((code == _PLAIN_HEADER) & (length >= 2) & (length <= 19) & (a[stop - 1] == 58))
    kind[head] = _HEADER
    value[head] = _digits(a, stop[head] - 2, length[head] - 1)

    # plain rating: <1-18 digits>,<1-5>,YYYY-MM-DD; byte offsets from the end of the line
    cand = np.flatnonzero(short & (code == _PLAIN_RATING) & (length >= 14))
    e = stop[cand]
    r = a[e - 12]
    ok = (a[e - 13] == 44) & (a[e - 11] == 44) & (a[e - 6] == 45) & (a[e - 3] == 45) & (r >= 49) & (r <= 53)
    cand, e = cand[ok], e[ok]
    year = _digits(a, e - 7, 4)
    month = _digits(a, e - 4, 2)
    day = _digits(a, e - 1, 2)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_ok = (month >= 1) & (month <= 12)
    mdays = _DAYS_IN_MONTH[np.where(month_ok, month, 0)] + (leap & (month == 2))
    ok = month_ok & (day >= 1) & (day <= mdays) & (year >= 1970) & (year <= 2099)
    cand, e, year, month, day, leap = cand[ok], e[ok], year[ok], month[ok], day[ok], leap[ok]
    y1 = year - 1
    days = (y1 * 365 + y1 // 4 - y1 // 100 + y1 // 400 - 719162  # days from 1970-01-01 to Jan 1st of year
            + _DAYS_BEFORE_MONTH[month] + (leap & (month > 2)) + day - 1)
    kind[cand] = _RATING
    user = np.zeros(n, np.int64)
    rating = np.zeros(n, np.int8)
    stamp = np.zeros(n, np.float64)
    user[cand] = _digits(a, e - 14, length[cand] - 13)
    rating[cand] = a[e - 12] - 48
    stamp[cand] = days * 86400.0

    # everything else: the reference rules, line by line
    reasons: dict[int, str] = {}
    texts: dict[int, str] = {}
    latin1: list[int] = []
    for i in np.flatnonzero(kind == -1).tolist():
        text, fell_back = decode_line(buf[starts[i] : ends[i] + 1])
        if fell_back:
            latin1.append(i)
        texts[i] = text.rstrip("\r\n").strip()
        k, v = _parse_line(text.rstrip("\r\n"))
        kind[i] = k
        if k == _HEADER:
            value[i] = v
        elif k == _RATING:
            user[i], rating[i], stamp[i] = v
        elif k != _BLANK:
            reasons[i] = v

    # the movie of each line: the last header at or before it (an invalid header: none)
    header = (kind == _HEADER) | (kind == _BAD_HEADER)
    last = np.maximum.accumulate(np.where(header, np.arange(n), -1))
    movie_of_header = np.where(kind == _HEADER, value, -1)
    movie = np.where(last >= 0, movie_of_header[np.maximum(last, 0)], carry_movie)
    rating_line = (kind == _RATING) | (kind == _BAD_RATING)
    no_movie = rating_line & (movie < 0)
    for i in np.flatnonzero(no_movie).tolist():
        reasons[i] = _NO_MOVIE
    good = (kind == _RATING) & ~no_movie
    bad = []
    for i in sorted(reasons):
        if i not in texts:
            texts[i] = buf[starts[i] : stop[i]].decode("ascii").strip()
        bad.append((i, reasons[i], texts[i]))
    ratings = Ratings(user[good], movie[good], rating[good], stamp[good])
    return ratings, bad, int(movie[-1]), latin1


def parse_ratings(
    files: list[Path],
    report: ConversionReport,
    keep_users: np.ndarray | None = None,
    block_bytes: int | None = None,
) -> Ratings:
    """Every valid rating line of ``files`` (``keep_users``: only those users' ratings, sorted int64 ids).

    The files are parsed in blocks of ``block_bytes`` with numpy (bounded memory); bad lines are counted
    in ``report`` with file, line number and reason, in line order.
    """
    parts: list[Ratings] = []
    for path in files:
        if path.stat().st_size == 0:
            report.bad(path, 0, "empty file")
            continue
        movie = -1  # each file starts without a movie
        for line_no, buf in read_blocks(path, report, block_bytes or BLOCK_BYTES, MAX_LINE_BYTES):
            got, bad, movie, latin1_lines = _scan_block(buf, movie)
            bad_at = {i: (reason, text) for i, reason, text in bad}
            latin1 = set(latin1_lines)
            for i in sorted(set(bad_at) | latin1):
                if i in latin1:
                    report.note(f"{path.name}: lines decoded as latin-1")
                if i in bad_at:
                    report.bad(path, line_no + i, *bad_at[i])
            if keep_users is not None:
                at = np.minimum(np.searchsorted(keep_users, got.user), len(keep_users) - 1)
                keep = keep_users[at] == got.user
                report.drop("sampling_users", int((~keep).sum()))  # valid ratings of users not sampled
                got = Ratings(*(col[keep] for col in got))
            parts.append(got)
    return Ratings.concat(parts)


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort and a diff: faster here than ``np.unique``'s hash path)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def _unique_users(files: list[Path], block_bytes: int | None = None) -> np.ndarray:
    """Sorted distinct customer ids of the valid rating lines (a first pass; errors not counted).

    Each block's distinct ids are kept and merged once they outgrow the merged set 4 times, so memory
    stays a few times the number of users.
    """
    parts: list[np.ndarray] = []
    merged = pending = 0
    for path in files:
        if path.stat().st_size == 0:
            continue
        movie = -1
        for _, buf in read_blocks(path, None, block_bytes or BLOCK_BYTES, MAX_LINE_BYTES):
            got, _, movie, _ = _scan_block(buf, movie)
            parts.append(_distinct(got.user))
            pending += len(parts[-1])
            if pending > 4 * merged + 1_000_000:
                parts = [_distinct(np.concatenate(parts))]
                merged = pending = len(parts[0])
    return _distinct(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


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
        if not INT_RE.match(movie):
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
        if INT_RE.match(year):
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
    **options: Unpack[ConvertOptions],
) -> dict[str, Any]:
    """Convert the Netflix Prize files in ``raw_dir`` into ``out_dir``; returns the summary."""
    kwargs = finalize_options(options)
    sample_users, seed, missing_meta = kwargs.pop("n_users"), kwargs["seed"], kwargs["missing_meta"]
    raw = Path(raw_dir)
    report = ConversionReport()
    files = rating_files(raw)
    titles_path = Path(titles) if titles else (raw if raw.is_dir() else raw.parent) / "movie_titles.csv"
    items = load_titles(titles_path, report)
    if items.empty and missing_meta == "drop":
        raise ValueError(f"{titles_path}: no valid 'id,year,title' line (--missing_meta keep converts without titles)")

    keep_users = None
    if sample_users:
        all_users = _unique_users(files)
        report.info["users_before_sampling"] = len(all_users)
        keep = sample_ids(all_users.astype(str).tolist(), sample_users, seed + 1)
        if keep is not None:
            keep_users = np.sort(np.array([int(u) for u in keep], dtype=np.int64))
    got = parse_ratings(files, report, keep_users)
    if not len(got.user):
        names = ", ".join(p.name for p in files)
        raise ValueError(f"{raw}: no valid rating line in {names} ({report.malformed_total} malformed lines)")
    inter = pd.DataFrame({
        "user_id": got.user.astype(str),
        "item_id": got.movie.astype(str),
        "label": (got.rating >= LIKE_THRESHOLD).astype(np.int64),
        "timestamp": got.timestamp,
    })
    image_items = find_images(images, report)
    return finalize_dataset(
        inter,
        items,
        out_dir,
        image_items=image_items,
        report=report,
        extra={
            "source": str(raw),
            "label_rule": "rating >= 4",
        },
        **kwargs,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = converter_parser(__doc__, "folder with combined_data_*.txt and movie_titles.csv",
                              "poster folder, <movie_id>.jpg")
    parser.add_argument("--titles", type=existing_file, default=None, help="movie_titles.csv (default: in --raw)")
    return run_converter(parser, argv, build_netflix, "titles")


if __name__ == "__main__":
    sys.exit(run_main(main))
