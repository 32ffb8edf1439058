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

behaviors.tsv is read in blocks of 4 MiB and parsed with numpy (:func:`load_behaviors`): a plain line
(printable ASCII, 5 tab-separated fields, impressions ``<id>-<0|1>`` separated by single spaces) has its
impressions cut by array operations, any other line goes through the reference rules of
:func:`_parse_line` (stripped fields, the same reasons, in line order). Rows are held as codes into the
distinct news, users and impressions, so memory is the block plus a few bytes per row (and the longest line);
they reach :func:`~dataset_converters.core.finalize_dataset` as categoricals, which makes strings of the rows
kept after ``--sample_users``/``--sample_items`` only.

    python -m dataset_converters.mind --raw DIR [DIR ...] --output_dir dataset/mind [--images DIR]
"""

from __future__ import annotations

import array
import calendar
import logging
import os
import re
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Unpack

import numpy as np
import pandas as pd

from dataset_converters.cli import run_main
from dataset_converters.core import (
    BLOCK_BYTES,
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


_PLAIN_TIME = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4}) (\d{1,2}):(\d\d):(\d\d) ([AP])M", re.ASCII)


def _time_of(value: str) -> float | None:
    """:func:`parse_time` (same results), without strptime for the plain form ``11/15/2019 8:55:22 AM``."""
    m = _PLAIN_TIME.fullmatch(value)
    if m:
        month, day, year, hour, minute, second = (int(g) for g in m.groups()[:6])
        if (1 <= month <= 12 and 1 <= hour <= 12 and minute < 60 and second < 60 and year >= 1
                and 1 <= day <= calendar.monthrange(year, month)[1]):
            hour = hour % 12 + (12 if m[7] == "P" else 0)
            return float(calendar.timegm((year, month, day, hour, minute, second)))
    return parse_time(value)


def _require_rows(path: Path, usable: int, what: str, report: ConversionReport) -> None:
    """A file without one usable line stops the conversion (one line naming the file and why)."""
    if usable:
        return
    with open(path, "rb") as f:  # only whitespace bytes? read in blocks: the file may be large
        blank = all(not chunk.strip() for chunk in iter(lambda: f.read(BLOCK_BYTES), b""))
    if blank:
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


def _check_ids(imp_id: str, user: str) -> str | None:
    """The reason an impression line fails before the duplicate check (stripped fields), None if it does not."""
    if not valid_token(imp_id):
        return "impression id: missing or invalid"
    if not USER_ID.fullmatch(user):
        return "user id: not U<digits>"
    return None


def _check_time_history(time_s: str, history_s: str, plain: bool = False) -> tuple[str | None, float]:
    """(reason or None, timestamp) of a line's time and history fields (stripped). ``plain``: the line is
    printable ASCII without quotes, so every whitespace-separated history id is a valid token."""
    ts = _time_of(time_s)
    if ts is None:
        return ("missing time" if not time_s else "invalid time"), 0.0
    if not plain and not all(valid_token(h) for h in history_s.split()):
        return "invalid news id in history", 0.0
    return None, ts


def _parse_impressions(impressions_s: str) -> tuple[str | None, list[tuple[str, int]]]:
    """(reason or None, [(news id, click), ...]) of an impressions field (stripped)."""
    tokens = impressions_s.split()
    if not tokens:
        return "no impressions", []
    parsed = []
    for tok in tokens:
        news_id, sep, click = tok.rpartition("-")
        if not sep or click not in ("0", "1") or not valid_token(news_id):
            return ("impressions without click labels" if "-" not in impressions_s
                    else "impressions: a token without -0/-1 click label"), []
        parsed.append((news_id, int(click)))
    return None, parsed


def _parse_line(text: str) -> tuple[str | None, str | None, Any]:
    """One behaviors line by the reference rules (fields stripped, checks in this order).

    ``(None, None, None)``: a blank line; ``(None, reason, None)``: a line that fails before the duplicate
    check (field count, impression id, user id); else ``(impression id, reason or None, (user, timestamp,
    history field, [(news id, click), ...]))``. The block scan sends here the lines that are not plain.
    """
    if not text.strip():
        return None, None, None
    fields = text.split("\t")
    if len(fields) != 5:
        return None, f"expected 5 fields, got {len(fields)}", None
    imp_id, user, time_s, history_s, impressions_s = (f.strip() for f in fields)
    reason = _check_ids(imp_id, user)
    if reason:
        return None, reason, None
    reason, ts = _check_time_history(time_s, history_s)
    parsed: list[tuple[str, int]] = []
    if reason is None:
        reason, parsed = _parse_impressions(impressions_s)
    return imp_id, reason, (user, ts, history_s, parsed)


# Bytes of a plain line: printable ASCII but the quotes, and the tab (whitespace is then only space and tab).
_ODD_BYTE = np.ones(256, bool)
_ODD_BYTE[32:127] = False
_ODD_BYTE[[9, 10]] = False
_ODD_BYTE[[34, 39]] = True


class _Scan(NamedTuple):
    """A block's lines: bounds, which are plain (``fast``), and the tokens of the plain ones."""

    starts: np.ndarray
    ends: np.ndarray  # offset of each line's newline
    impressions: np.ndarray  # first byte of the impressions field (plain lines)
    fast: np.ndarray  # bool: a plain line whose impressions field is checked and split here
    news: list[str]  # the news id of each token of the fast lines, in order
    clicks: np.ndarray  # int8 click label of each of those tokens
    first_token: np.ndarray  # index in ``news`` of each line's first token (fast lines)
    n_tokens: np.ndarray  # tokens of each line (fast lines; 0 for the others)


def _scan_block(buf: bytes) -> _Scan:
    """Find the plain lines of ``buf`` (whole lines, ends with a newline) and split their impressions.

    A plain line is printable ASCII without quotes, with exactly 4 tabs (one trailing \\r allowed), whose
    impressions field is ``<id>-<0|1>`` tokens separated by single spaces, not padded: such a line's
    impressions field passes the reference rules, whose news ids and clicks are cut here by array
    operations. Every other line (blank, bad, padded, non-ASCII) goes to :func:`_parse_line`.
    """
    a = np.frombuffer(buf, np.uint8)
    starts, ends, has_cr, stops = line_bounds(a)
    n = len(ends)
    odd = np.bincount(np.searchsorted(ends, np.flatnonzero(_ODD_BYTE[a])), minlength=n) - has_cr
    tabs = np.flatnonzero(a == 9)
    n_tabs = np.bincount(np.searchsorted(ends, tabs), minlength=n)
    plain = (odd == 0) & (n_tabs == 4)
    lines = np.flatnonzero(plain)
    lo = np.zeros(n, np.int64)  # the impressions field is [lo, stops) on plain lines
    lo[lines] = tabs[(np.cumsum(n_tabs) - n_tabs)[lines] + 3] + 1
    spaces = np.flatnonzero(a == 32)
    space_line = np.searchsorted(ends, spaces)
    inside = plain[space_line] & (spaces >= lo[space_line])
    spaces, space_line = spaces[inside], space_line[inside]
    # non-empty, not padded, single spaces
    bad = plain & (lo >= stops)
    double = np.r_[False, spaces[1:] == spaces[:-1] + 1]
    ragged = (spaces == lo[space_line]) | (spaces == stops[space_line] - 1) | double
    bad[space_line[ragged]] = True
    cand = plain & ~bad
    mark = np.zeros(len(a) + 1, bool)
    keep = cand[space_line]
    mark[spaces[keep] + 1] = True
    mark[lo[cand]] = True
    tok_start = np.flatnonzero(mark)
    mark[:] = False
    mark[spaces[keep]] = True
    mark[stops[cand]] = True
    tok_stop = np.flatnonzero(mark)
    tok_line = np.searchsorted(ends, tok_start)
    ok = (tok_stop - tok_start >= 3) & (a[tok_stop - 2] == 45) & ((a[tok_stop - 1] == 48) | (a[tok_stop - 1] == 49))
    fast = cand & (np.bincount(tok_line[~ok], minlength=n) == 0)
    keep = fast[tok_line]
    tok_start, tok_stop, tok_line = tok_start[keep], tok_stop[keep], tok_line[keep]
    # the news ids: the bytes before each token's "-c", each followed by a newline, decoded and split at once
    inside = np.zeros(len(a) + 1, np.int8)
    inside[tok_start] = 1
    inside[tok_stop - 2] = -1
    inside = np.cumsum(inside[:-1], dtype=np.int8).astype(bool)
    inside[tok_stop - 2] = True
    marked = a.copy()
    marked[tok_stop - 2] = 10
    news = marked[inside].tobytes().decode("ascii").split("\n")[:-1]
    n_tokens = np.bincount(tok_line, minlength=n)
    return _Scan(starts, ends, lo, fast, news, (a[tok_stop - 1] - 48).astype(np.int8),
                 np.cumsum(n_tokens) - n_tokens, n_tokens)


class _Behaviors:
    """Accumulates the impression rows of behaviors files block by block: per row a news code, the click and
    an impression code (9 bytes); per impression its id, user code and time; so memory is a few bytes per row
    plus the distinct ids."""

    def __init__(self) -> None:
        self.news: dict[str, int] = {}
        self.users: dict[str, int] = {}
        self.impressions: list[str] = []
        self.impression_user = array.array("i")
        self.impression_time = array.array("d")
        self.prior: dict[str, tuple[float, str]] = {}
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add_block(self, path: Path, line_no: int, buf: bytes, seen: set[str], prefix: str,
                  report: ConversionReport) -> None:
        """Parse the whole lines ``buf`` (the first is line ``line_no`` of ``path``); ``seen``: the file's
        impression ids so far; ``prefix``: put before the impression ids (several folders)."""
        scan = _scan_block(buf)
        news = scan.news
        clicks = [scan.clicks]
        first, count = scan.first_token.tolist(), scan.n_tokens.tolist()
        starts, ends, fields_end = scan.starts.tolist(), scan.ends.tolist(), (scan.impressions - 1).tolist()
        # per kept line: its first token (in news + the reference lines' tokens), count, impression
        lo: list[int] = []
        n: list[int] = []
        imp_codes: list[int] = []
        extra: list[str] = []
        for i, fast in enumerate(scan.fast.tolist()):
            if fast:
                imp_id, user, time_s, history_s = (
                    f.strip() for f in buf[starts[i] : fields_end[i]].decode("ascii").split("\t"))
                reason = _check_ids(imp_id, user)
                if reason:
                    imp_id = None
                elif imp_id not in seen:
                    reason, ts = _check_time_history(time_s, history_s, plain=True)
            else:
                text, fell_back = decode_line(buf[starts[i] : ends[i] + 1])
                if fell_back:
                    report.note(f"{path.name}: lines decoded as latin-1")
                imp_id, reason, value = _parse_line(text.rstrip("\r\n"))
                if imp_id is None and reason is None:
                    continue  # blank
                if value:
                    user, ts, history_s, parsed = value
            if imp_id is not None and imp_id in seen:
                reason = "duplicate impression id"
            if reason:
                text = decode_line(buf[starts[i] : ends[i] + 1])[0].rstrip("\r\n")
                report.bad(path, line_no + i, reason, text)
                continue
            seen.add(imp_id)
            if user not in self.prior or ts < self.prior[user][0]:
                self.prior[user] = (ts, history_s)  # split at the end
            if fast:
                lo.append(first[i])
                n.append(count[i])
            else:
                lo.append(len(news) + len(extra))
                n.append(len(parsed))
                extra.extend(news_id for news_id, _ in parsed)
                clicks.append(np.array([click for _, click in parsed], np.int8))
            imp_codes.append(len(self.impressions))
            self.impressions.append(prefix + imp_id)
            self.impression_user.append(self.users.setdefault(user, len(self.users)))
            self.impression_time.append(ts)
        if not lo:
            return
        lens = np.array(n, np.int64)
        take = np.repeat(np.array(lo, np.int64) - (np.cumsum(lens) - lens), lens) + np.arange(lens.sum())
        codes, distinct = pd.factorize(np.array(news + extra, dtype=object)[take])
        vocab = np.array([self.news.setdefault(v, len(self.news)) for v in distinct.tolist()], np.int32)
        self.parts.append((vocab[codes], np.concatenate(clicks)[take], np.repeat(np.array(imp_codes, np.int32), lens)))

    def frame(self) -> pd.DataFrame:
        """The rows in file order: user_id, item_id, label, timestamp, impression_id; the ids as categoricals
        (int32 codes into the distinct ids), so the rows hold no string object until
        :func:`~dataset_converters.core.finalize_dataset` has sampled and filtered them."""
        parts, self.parts = self.parts, []

        def pop(k: int) -> np.ndarray:  # column k of the parts, dropped from them
            column = np.concatenate([part[k] for part in parts]) if parts else np.zeros(0, np.int32)
            parts[:] = [(*part[:k], None, *part[k + 1 :]) for part in parts]
            return column

        def series(values: np.ndarray) -> pd.Series:
            return pd.Series(values, dtype=values.dtype, copy=False)  # a given dtype: no inference pass

        def ids(codes: np.ndarray, distinct: Sequence[str]) -> pd.Series:
            return pd.Series(pd.Categorical.from_codes(codes, pd.Index(list(distinct), dtype=object)), copy=False)

        items, labels, imps = pop(0), pop(1), pop(2)
        columns = {
            "user_id": ids(np.frombuffer(self.impression_user, np.int32)[imps], self.users),
            "item_id": ids(items, self.news),
            "label": series(labels),
            "timestamp": series(np.frombuffer(self.impression_time, np.float64)[imps]),
            "impression_id": ids(imps, self.impressions),
        }
        return pd.DataFrame(columns, copy=False)


def load_behaviors(
    paths: Sequence[Path], report: ConversionReport, block_bytes: int | None = None
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Impression rows (user_id, item_id, label, timestamp, impression_id) and each user's prior history.

    The files are read in blocks of ``block_bytes`` (default 4 MiB) and parsed with numpy (:func:`_scan_block`);
    bad lines are counted in ``report`` in line order with file, line number and reason.
    """
    rows = _Behaviors()
    for k, path in enumerate(paths):
        seen: set[str] = set()
        prefix = "" if len(paths) == 1 else f"{k}_"
        for line_no, buf in read_blocks(path, report, block_bytes or BLOCK_BYTES, max_line_bytes=None):
            rows.add_block(path, line_no, buf, seen, prefix, report)
        _require_rows(path, len(seen), "impression lines of 5 tab-separated fields", report)
    return rows.frame(), {u: h.split() for u, (_, h) in rows.prior.items()}


def build_mind(
    raw_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    images: str | os.PathLike | None = None,
    **options: Unpack[ConvertOptions],
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
        dedupe_keys=("impression_id", "item_id"),
        prior_history=prior,
        image_items=image_items,
        report=report,
        extra={
            "source": [str(r) for r in raws],
            "label_rule": "click",
        },
        **finalize_options(options),
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = converter_parser(__doc__, "folder(s) with behaviors.tsv and news.tsv", "image folder, <news_id>.jpg",
                              several_raw=True)
    return run_converter(parser, argv, build_mind)


if __name__ == "__main__":
    sys.exit(run_main(main))
