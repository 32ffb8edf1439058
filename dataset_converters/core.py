"""Shared core of the dataset converters: labels in, RecBole atomic files out.

Every converter parses its raw files into one interaction frame with the columns
``user_id``, ``item_id``, ``label`` (0/1), ``timestamp`` (seconds, float) and one item
frame with ``item_id``, ``title`` (plus optional extra text columns), then calls
:func:`finalize_dataset`, which

1. drops or keeps rows whose item has no metadata (``missing_meta``),
2. drops duplicated interactions,
3. samples items and users with a seed, applies k-core filtering,
4. builds the ``history`` column (previously liked items, strictly earlier, oldest first),
5. computes the Table-1 summary (per-user 8:1:1 split by time, RecBole semantics),
6. writes ``<name>.inter``, ``<name>.item``, ``<name>.text`` and ``summary.json``
   atomically (temporary sibling directory, then rename).

Malformed or dropped lines are counted in a :class:`ConversionReport`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dataset_converters.cli import Parser, existing_dir, int_at_least
from dataset_converters.errors import InputError

logger = logging.getLogger("dataset_converters")

LIKE_THRESHOLD = 4  # label = rating >= 4 (movie ratings on a 1..5 scale)
INT_RE = re.compile(r"^\d+$")  # an id of ASCII digits
INTER_COLUMNS = ("user_id", "item_id", "label", "timestamp", "history")
INTER_HEADER = "user_id:token\titem_id:token\tlabel:float\ttimestamp:float\thistory:token_seq"
#: Optional interaction columns a converter may add (written after :data:`INTER_COLUMNS` when present).
EXTRA_INTER_COLUMNS = {"impression_id": "token"}
ITEM_HEADER = "item_id:token"
TEXT_BASE_COLUMNS = ("item_id", "title", "description")
DEFAULT_RATIOS = (0.8, 0.1, 0.1)
SUMMARY_KEYS = ("train", "valid", "test", "user", "item", "positive", "negative", "with_image")
SUMMARY_LABELS = {
    "train": "#Train",
    "valid": "#Valid",
    "test": "#Test",
    "user": "#User",
    "item": "#Item",
    "positive": "#Positive",
    "negative": "#Negative",
    "with_image": "#With image",
}
MISSING_META_CHOICES = ("keep", "drop")

_TEXT_TRANSLATION = str.maketrans({"\t": " ", "\n": " ", "\r": " ", "\x0b": " ", "\x0c": " "})


class ConversionReport:
    """Counts malformed raw lines and dropped rows; logs the first few of each kind.

    Malformed lines are keyed by (file, reason) and each one is counted; the first
    ``show`` lines per file are logged with file, line number and reason.
    """

    def __init__(self, show: int = 5) -> None:
        self.show = show
        self.malformed: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.dropped: dict[str, int] = defaultdict(int)
        self.info: dict[str, Any] = {}
        self.notes: dict[str, int] = defaultdict(int)
        self._shown: dict[str, int] = defaultdict(int)

    def bad(self, file: str | os.PathLike, line_no: int, reason: str, text: str = "") -> None:
        """Count one malformed/unusable raw line (logged for the first ``show`` per file)."""
        name = Path(file).name
        self.malformed[name][reason] += 1
        if self.show <= 0:
            return
        if self._shown[name] < self.show:
            self._shown[name] += 1
            snippet = text.rstrip("\r\n")
            if len(snippet) > 120:
                snippet = snippet[:117] + "..."
            logger.warning("%s:%d: %s%s", name, line_no, reason, f" | {snippet!r}" if snippet else "")
        elif self._shown[name] == self.show:
            self._shown[name] += 1
            logger.warning("%s: further malformed lines are counted but not shown", name)

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` rows dropped (or kept-but-flagged) for ``reason``."""
        if n:
            self.dropped[reason] += int(n)

    def note(self, key: str, n: int = 1) -> None:
        """Count something noteworthy that is not a drop (e.g. a line decoded as latin-1)."""
        if self.notes[key] == 0:
            logger.warning("%s", key)
        self.notes[key] += n

    @property
    def malformed_total(self) -> int:
        return sum(sum(r.values()) for r in self.malformed.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "malformed": {f: dict(r) for f, r in self.malformed.items()},
            "malformed_total": self.malformed_total,
            "dropped": dict(self.dropped),
            "notes": dict(self.notes),
            **self.info,
        }


# ----------------------------------------------------------------------------- text


def clean_text(value: Any) -> str:
    """Text safe for a TSV cell: tabs, newlines and carriage returns become spaces."""
    if value is None:
        return ""
    if isinstance(value, float) and np.isnan(value):
        return ""
    return str(value).translate(_TEXT_TRANSLATION).strip()


def valid_token(token: str) -> bool:
    """True when ``token`` can be a RecBole token (non-empty, no whitespace or quotes)."""
    return bool(token) and not any(c.isspace() or c in "\"'" for c in token)


def read_text_rows(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    """The one parser of a ``<name>.text`` side file: ``(header, rows)``, every cell the string as written.

    UTF-8 (a BOM dropped), tab separated, no quoting; ``\r\n`` endings and blank lines are tolerated and a
    short row is padded with empty cells. InputError (a ValueError) naming the file (and line) for an empty file or
    a row with more cells than the header."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        lines = handle.read().split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not lines or not lines[0]:
        raise InputError(f"{path}: empty file, expected a header line 'item_id\ttitle\tdescription'")
    header = lines[0].split("\t")
    rows = []
    for line_no, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        cells = line.split("\t")
        if len(cells) > len(header):
            raise InputError(f"{path}:{line_no}: {len(cells)} tab-separated cells, the header has {len(header)}")
        rows.append(cells + [""] * (len(header) - len(cells)))
    return header, rows


def read_text_table(path: str | os.PathLike) -> pd.DataFrame:
    """A ``<name>.text`` side file as a frame (:func:`read_text_rows`: all columns str, no NaN)."""
    header, rows = read_text_rows(path)
    return pd.DataFrame(rows, columns=header, dtype=object)


def iter_lines(
    path: str | os.PathLike,
    report: ConversionReport,
    encoding: str = "utf-8",
    fallback: str = "latin-1",
    desc: str | None = None,
) -> Iterator[tuple[int, str]]:
    """Yield ``(line_no, text)`` for each complete line of a text file (1-based numbers).

    Lines are decoded with ``encoding`` (a UTF-8 BOM is dropped); a line that does not
    decode is decoded with ``fallback`` and counted in ``report.notes``. A last line
    without a newline is a truncated write: it is reported as malformed and not yielded.
    Trailing CR/LF characters are stripped.
    """
    path = Path(path)
    size = path.stat().st_size
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=desc or path.name, disable=size < 50_000_000)
    with open(path, "rb") as f, bar:
        for line_no, raw in enumerate(f, start=1):
            bar.update(len(raw))
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            complete = raw.endswith(b"\n")
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError:
                text = raw.decode(fallback, errors="replace")
                report.note(f"{path.name}: lines decoded as {fallback}")
            if not complete:
                if text.strip():
                    report.bad(path, line_no, "truncated last line (no trailing newline)", text)
                continue
            yield line_no, text.rstrip("\r\n")


BLOCK_BYTES = 1 << 22  # bytes parsed at a time by the block parsers: memory is bounded by the block, not the file
MAX_LINE_BYTES = 1 << 20  # a longer line is counted and skipped by read_blocks, never held whole


def decode_line(raw: bytes, fallback: str = "latin-1") -> tuple[str, bool]:
    """``(text, fell_back)``: ``raw`` decoded as UTF-8, else as ``fallback`` (as :func:`iter_lines` does)."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode(fallback, errors="replace"), True


def line_bounds(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(starts, ends, has_cr, stops)`` of the lines of the bytes ``a`` (uint8, ending with a newline):
    first byte, the newline's offset, whether one ``\\r`` precedes it, and the end without it."""
    ends = np.flatnonzero(a == 10)
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    has_cr = (ends > starts) & (a[ends - 1] == 13)
    return starts, ends, has_cr, ends - has_cr


def read_blocks(
    path: str | os.PathLike,
    report: ConversionReport | None = None,
    block_bytes: int = BLOCK_BYTES,
    max_line_bytes: int | None = MAX_LINE_BYTES,
) -> Iterator[tuple[int, bytes]]:
    """``(number of the first line, whole lines)`` for each block of about ``block_bytes`` of ``path``.

    A UTF-8 BOM at the start is dropped. Lines that are not yielded are counted in ``report`` (when
    given) with the reasons of :func:`iter_lines`: the unterminated last line (``truncated last line``)
    and, unless ``max_line_bytes`` is None, a line over ``max_line_bytes`` (skipped while it is read, so
    memory stays bounded whatever the file holds).
    """
    line_no = 1
    tail = b""
    skipping = False  # inside a line over max_line_bytes
    with open(path, "rb") as f:
        first = True
        while chunk := f.read(max(block_bytes, 3) if first else block_bytes):
            if first and chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
            first = False
            data = tail + chunk
            if skipping:
                end = data.find(b"\n")
                if end < 0:
                    tail = b""
                    continue
                data, skipping, line_no = data[end + 1 :], False, line_no + 1
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            if cut:
                yield line_no, data[:cut]
                line_no += data.count(b"\n", 0, cut)
            if max_line_bytes is not None and len(tail) > max_line_bytes:
                if report is not None:
                    report.bad(path, line_no, f"line longer than {max_line_bytes} bytes (skipped)",
                               tail[:200].decode("latin-1"))
                tail, skipping = b"", True
    if tail and not skipping and report is not None:
        text, fell_back = decode_line(tail)
        if fell_back:
            report.note(f"{Path(path).name}: lines decoded as latin-1")
        if text.strip():
            report.bad(path, line_no, "truncated last line (no trailing newline)", text)


def read_text_file(path: str | os.PathLike, report: ConversionReport, fallback: str = "cp1252") -> str:
    """Whole file as str: UTF-8 (BOM dropped), else ``fallback`` (latin-1 as last resort)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        report.note(f"{Path(path).name}: not UTF-8, decoded as {fallback}")
        try:
            return data.decode(fallback)
        except UnicodeDecodeError:
            return data.decode("latin-1")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def image_files(folder: str | os.PathLike) -> tuple[dict[str, Path], int]:
    """``({stem: path}, empty)``: the non-empty image files ``<stem>.<jpg|jpeg|png|...>`` of ``folder``
    (suffix case-insensitive; a stem with several files takes the first suffix of ``IMAGE_SUFFIXES``) and
    the number of empty image files left out. The one image lookup of the converters, the visual feature
    tool and ZeroShot's posters. Raises FileNotFoundError when ``folder`` is not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    rank = {suffix: i for i, suffix in enumerate(IMAGE_SUFFIXES)}
    best: dict[str, tuple[int, Path]] = {}
    empty = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() not in rank or not entry.is_file():
                continue
            if entry.stat().st_size == 0:
                empty += 1
            elif stem not in best or rank[suffix.lower()] < best[stem][0]:
                best[stem] = (rank[suffix.lower()], Path(entry.path))
    return {stem: path for stem, (_, path) in best.items()}, empty


def find_images(image_dir: str | os.PathLike | None, report: ConversionReport | None = None) -> set[str] | None:
    """Ids (file stems) of the non-empty images ``<id>.<jpg|png|...>`` in ``image_dir`` (:func:`image_files`)."""
    if image_dir is None:
        return None
    files, empty = image_files(image_dir)
    found = set(files)
    if report is not None:
        report.drop("empty_image_files", empty)
        report.info["images_found"] = len(found)
    return found


# ----------------------------------------------------------------------------- split


def split_counts(tot: int, ratios: Sequence[float] = DEFAULT_RATIOS) -> list[int]:
    """Sizes of each part when ``tot`` rows are split by ``ratios``.

    Same arithmetic as RecBole 1.2.1 ``Dataset.split_by_ratio`` + ``_calcu_split_ids``:
    ratios normalised, every part but the first rounded down, the first takes the rest,
    then parts whose exact share is in (0, 1) get one row while the first keeps > 1.
    """
    tot_ratio = sum(ratios)
    ratios = [r / tot_ratio for r in ratios]
    cnt = [int(ratios[i] * tot) for i in range(len(ratios))]
    cnt[0] = tot - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * tot < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt


# ----------------------------------------------------------------------------- filtering


def sort_interactions(df: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by user then timestamp (stable: ties keep their input order)."""
    return df.sort_values(["user_id", "timestamp"], kind="mergesort").reset_index(drop=True)


def _row_key(df: pd.DataFrame, keys: Sequence[str]) -> np.ndarray | None:
    """One int64 per row, equal where the rows' ``keys`` are equal (codes of categorical columns, else
    ``pd.factorize`` codes with NaN a value); None when the codes' product overflows int64."""
    key = np.zeros(len(df), np.int64)
    span = 1
    for column in keys:
        values = df[column]
        if isinstance(values.dtype, pd.CategoricalDtype) and not values.hasnans:
            codes, n = values.cat.codes.to_numpy(), len(values.cat.categories)
        else:
            codes, distinct = pd.factorize(values, use_na_sentinel=False)
            n = len(distinct)
        span *= max(n, 1)
        if span >= 2**62:
            return None
        key = key * max(n, 1) + codes
    return key


def drop_duplicates(
    df: pd.DataFrame,
    keys: Sequence[str] = ("user_id", "item_id"),
    report: ConversionReport | None = None,
    reason: str = "duplicate_interaction",
) -> pd.DataFrame:
    """Drop rows repeating ``keys``; the latest one (by timestamp, then input order) is kept."""
    key = _row_key(df, keys)
    in_order = df.index.is_monotonic_increasing and df.index.is_unique  # sort_index() would restore df's order
    if key is not None and in_order:
        distinct = np.sort(key)
        if not np.any(distinct[1:] == distinct[:-1]):  # no repeated key: nothing to drop, no time order needed
            if report is not None:
                report.drop(reason, 0)
            return df
        del distinct
    order = np.argsort(df["timestamp"].to_numpy(), kind="stable")  # as sort_values(kind="mergesort"), NaN last
    if key is None:
        dup = df[list(keys)].iloc[order].duplicated(keep="last").to_numpy()  # only the keys, in time order
    else:  # the last of each key in time order is kept: a stable sort of the keys groups them in that order
        key = key[order]
        by_key = np.argsort(key, kind="stable")
        dup = np.zeros(len(df), bool)
        dup[by_key[:-1]] = key[by_key[:-1]] == key[by_key[1:]]
    n = int(dup.sum())
    if report is not None:
        report.drop(reason, n)
    if n:
        logger.info("dropped %d duplicated rows (%s)", n, ", ".join(keys))
    if in_order:
        keep = np.ones(len(df), bool)
        keep[order[dup]] = False
        return df[keep]
    return df.iloc[order][~dup].sort_index()


def apply_missing_meta(
    df: pd.DataFrame,
    known_items: Iterable[str],
    policy: str = "drop",
    report: ConversionReport | None = None,
) -> pd.DataFrame:
    """Keep or drop rows whose item has no metadata; counted either way."""
    if policy not in MISSING_META_CHOICES:
        raise ValueError(f"missing_meta must be one of {MISSING_META_CHOICES}, got {policy!r}")
    known = set(known_items)
    missing = ~df["item_id"].isin(known)
    n_rows = int(missing.sum())
    n_items = int(df.loc[missing, "item_id"].nunique())
    if report is not None and n_rows:
        report.drop(f"missing_meta_rows_{'dropped' if policy == 'drop' else 'kept'}", n_rows)
        report.drop(f"missing_meta_items_{'dropped' if policy == 'drop' else 'kept'}", n_items)
    if n_rows:
        logger.warning(
            "%d rows (%d items) have no item metadata: %s (--missing_meta=%s)",
            n_rows,
            n_items,
            "dropped" if policy == "drop" else "kept with empty title",
            policy,
        )
    if policy == "drop":
        if not n_rows and df.index.equals(pd.RangeIndex(len(df))):
            return df  # what reset_index would give, without a copy
        kept = df[~missing.to_numpy()]
        kept.index = pd.RangeIndex(len(kept))  # reset_index(drop=True) without copying the rows again
        return kept
    return df


def sample_ids(ids: Iterable[str], n: int | None, seed: int) -> set[str] | None:
    """``n`` ids drawn uniformly without replacement (None when no sampling is needed)."""
    uniq = np.array(sorted(set(ids)), dtype=object)
    if n is None or n <= 0 or n >= len(uniq):
        return None
    rng = np.random.default_rng(seed)
    return set(rng.choice(uniq, size=n, replace=False).tolist())


def sample_interactions(
    df: pd.DataFrame,
    n_users: int | None = None,
    n_items: int | None = None,
    seed: int = 2024,
    report: ConversionReport | None = None,
) -> pd.DataFrame:
    """Keep the rows of ``n_items`` sampled items, then of ``n_users`` sampled users."""
    before = len(df)
    keep_items = sample_ids(df["item_id"].unique(), n_items, seed)
    if keep_items is not None:
        df = df[df["item_id"].isin(keep_items)]
    keep_users = sample_ids(df["user_id"].unique(), n_users, seed + 1)
    if keep_users is not None:
        df = df[df["user_id"].isin(keep_users)]
    if report is not None:
        report.drop("sampling", before - len(df))
    return df.reset_index(drop=True)


def kcore_filter(
    df: pd.DataFrame,
    user_core: int = 0,
    item_core: int = 0,
    report: ConversionReport | None = None,
) -> pd.DataFrame:
    """Iteratively keep users with >= ``user_core`` rows and items with >= ``item_core`` rows."""
    if user_core <= 1 and item_core <= 1:
        return df
    before = len(df)
    while True:
        n = len(df)
        if item_core > 1:
            counts = df["item_id"].map(df["item_id"].value_counts())
            df = df[counts >= item_core]
        if user_core > 1:
            counts = df["user_id"].map(df["user_id"].value_counts())
            df = df[counts >= user_core]
        if len(df) == n:
            break
    if report is not None:
        report.drop("kcore", before - len(df))
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------- history


def build_history(
    df: pd.DataFrame,
    max_history: int = 20,
    prior_history: Mapping[str, Sequence[str]] | None = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Return ``df`` sorted by user then time with a ``history`` column.

    ``history`` lists the user's liked (label 1) items whose timestamp is strictly
    earlier than the row's, oldest first, at most the ``max_history`` most recent,
    space separated ('' when none). ``prior_history`` (user -> items, oldest first)
    counts as likes earlier than any of the user's rows (MIND's behaviors history).
    """
    if max_history < 0:
        raise ValueError("max_history must be >= 0")
    df = sort_interactions(df)
    users = df["user_id"].to_numpy()
    items = df["item_id"].to_numpy()
    labels = df["label"].to_numpy()
    stamps = df["timestamp"].to_numpy(dtype=np.float64)
    history = np.empty(len(df), dtype=object)
    if len(df) == 0:
        df["history"] = pd.Series([], dtype=object)
        return df
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(df)]
    bounds = zip(starts.tolist(), ends.tolist())
    if show_progress and len(starts) > 1000:
        bounds = tqdm(bounds, total=len(starts), desc="history", unit="user")
    for start, end in bounds:
        prior = list(prior_history.get(users[start], ())) if prior_history else []
        pos = np.flatnonzero(labels[start:end] == 1)
        liked = prior + items[start:end][pos].tolist()
        pos_ts = stamps[start:end][pos]
        n_prior = len(prior)
        # number of likes strictly earlier than each row (rows are time-sorted)
        k = n_prior + np.searchsorted(pos_ts, stamps[start:end], side="left")
        text, last = "", 0  # rows with the same likes before them (e.g. one impression) share one string
        for j, kk in enumerate(k.tolist()):
            if kk != last:
                text, last = " ".join(liked[max(0, kk - max_history) : kk]) if max_history else "", kk
            history[start + j] = text
    df["history"] = history
    return df


# ----------------------------------------------------------------------------- summary


def summarize(
    df: pd.DataFrame,
    item_ids: Iterable[str] | None = None,
    image_items: Iterable[str] | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    unit: str | None = None,
) -> dict[str, Any]:
    """Table-1 numbers: per-user split sizes, #user, #item, #positive, #negative, #with image.

    ``item`` counts the items of ``item_ids`` (the rows of ``.item``; default: the items
    of ``df``); ``with_image`` counts those in ``image_items`` (None when no images given).
    ``unit`` (a column, e.g. MIND's impression_id; ``df`` sorted by user then time): the split
    counts whole units per user, as the plugin's impression split (rows still reported).
    """
    if unit:
        firsts = df.drop_duplicates(["user_id", unit])
        position = firsts.groupby("user_id", sort=False).cumcount().to_numpy()
        total = firsts.groupby("user_id", sort=False)[unit].transform("size").to_numpy()
        cuts = {t: np.cumsum(split_counts(int(t), ratios)) for t in np.unique(total)}
        part = np.array([np.searchsorted(cuts[t], p, side="right") for p, t in zip(position, total)], dtype=int)
        rows = df.groupby(["user_id", unit], sort=False).size().reindex(
            pd.MultiIndex.from_frame(firsts[["user_id", unit]])).to_numpy()
        train, valid, test = (int(rows[part == k].sum()) for k in range(3))
    else:
        train = valid = test = 0
        for tot in df.groupby("user_id", sort=False).size().tolist():
            c = split_counts(int(tot), ratios)
            train, valid, test = train + c[0], valid + c[1], test + c[2]
    items = set(df["item_id"]) if item_ids is None else set(item_ids)
    pos = int((df["label"] == 1).sum())
    return {
        "train": train,
        "valid": valid,
        "test": test,
        "user": int(df["user_id"].nunique()),
        "item": len(items),
        "positive": pos,
        "negative": int(len(df) - pos),
        "with_image": None if image_items is None else len(items & set(image_items)),
    }


def format_summary(summary: Mapping[str, Any], name: str = "dataset") -> str:
    """Summary as a two-column table in the shape of the paper's Table 1."""
    width = max(len(v) for v in SUMMARY_LABELS.values())
    lines = [f"{'dataset':<{width}}  {name}"]
    for key in SUMMARY_KEYS:
        value = summary.get(key)
        lines.append(f"{SUMMARY_LABELS[key]:<{width}}  {'-' if value is None else value}")
    if "malformed_total" in summary:
        lines.append(f"{'#Malformed':<{width}}  {summary['malformed_total']}")
    dropped = summary.get("dropped") or {}
    for reason, n in dropped.items():
        lines.append(f"  dropped/{reason}: {n}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``out_dir`` on success.

    The temporary directory's name differs from ``out_dir``, so a run killed while
    writing leaves no directory RecBole would load; an existing ``out_dir`` is replaced
    only after the new one is complete. On error the temporary directory is removed.
    """
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        yield tmp
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_lines(path: Path, header: str, rows: Iterable[Sequence[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(header + "\n")
        for row in rows:
            f.write("\t".join(row) + "\n")


def _all_whole(values: np.ndarray) -> bool:
    """True when every value is a finite integer."""
    return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))


def _format_number(values: np.ndarray, whole: bool | None = None) -> list[str]:
    """``values`` as text: integers when ``whole`` (default: when every value is a finite integer), else repr."""
    values = np.asarray(values, dtype=np.float64)
    if whole is None:
        whole = _all_whole(values)
    if whole:
        return [str(v) for v in values.astype(np.int64).tolist()]
    return [repr(float(v)) for v in values.tolist()]


WRITE_ROWS = 100_000  # rows of ``.inter`` turned into text at a time


def _inter_rows(inter: pd.DataFrame, extra: Sequence[str]) -> Iterator[tuple[str, ...]]:
    """The ``.inter`` cells of each row, made :data:`WRITE_ROWS` rows at a time (so the text of every row is
    never held at once); timestamps are integers when all of them are."""
    stamps = inter["timestamp"].to_numpy(dtype=np.float64)
    whole = _all_whole(stamps)
    for start in range(0, len(inter), WRITE_ROWS):
        part = inter.iloc[start : start + WRITE_ROWS]
        yield from zip(
            part["user_id"].astype(str).tolist(),
            part["item_id"].astype(str).tolist(),
            [str(int(v)) for v in part["label"].tolist()],
            _format_number(stamps[start : start + WRITE_ROWS], whole),
            part["history"].astype(str).tolist(),
            *(part[c].astype(str).tolist() for c in extra),
        )


def write_dataset(
    out_dir: str | os.PathLike,
    inter: pd.DataFrame,
    text: pd.DataFrame,
    summary: Mapping[str, Any],
) -> Path:
    """Write ``<name>.inter``, ``<name>.item``, ``<name>.text`` and ``summary.json`` atomically.

    ``inter`` has :data:`INTER_COLUMNS` (sorted by user then time) and optionally those of
    :data:`EXTRA_INTER_COLUMNS`; ``text`` has one row
    per item of ``.item`` with at least ``item_id`` and ``title`` (``description`` and any
    extra text columns optional). Returns the output directory.
    """
    out = Path(out_dir)
    name = out.resolve().name
    text = text.copy()
    if "description" not in text.columns:
        text["description"] = ""
    columns = list(TEXT_BASE_COLUMNS) + [c for c in text.columns if c not in TEXT_BASE_COLUMNS]
    text = text[columns].sort_values("item_id", kind="mergesort")
    extra = [c for c in EXTRA_INTER_COLUMNS if c in inter.columns]
    header = "\t".join([INTER_HEADER] + [f"{c}:{EXTRA_INTER_COLUMNS[c]}" for c in extra])
    with atomic_output_dir(out) as tmp:
        _write_lines(tmp / f"{name}.inter", header, _inter_rows(inter, extra))
        _write_lines(tmp / f"{name}.item", ITEM_HEADER, ((i,) for i in text["item_id"].tolist()))
        cells = [text["item_id"].astype(str).tolist()] + [
            [clean_text(v) for v in text[c].tolist()] for c in columns[1:]
        ]
        _write_lines(tmp / f"{name}.text", "\t".join(columns), zip(*cells))
        with open(tmp / "summary.json", "w", encoding="utf-8") as f:
            json.dump(dict(summary), f, indent=2, ensure_ascii=False)
            f.write("\n")
    return out


# ----------------------------------------------------------------------------- pipeline


def _str_ids(column: pd.Series) -> pd.Series:
    """An id column as str; a categorical of str ids (e.g. MIND's parser codes) stays one (codes, no string
    per row) until :func:`finalize_dataset` has dropped, de-duplicated and sampled the rows."""
    if isinstance(column.dtype, pd.CategoricalDtype) and column.cat.categories.dtype == object and all(
            isinstance(v, str) for v in column.cat.categories):
        return column
    return column.astype(str)


def finalize_dataset(
    inter: pd.DataFrame,
    items: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    max_history: int = 20,
    user_core: int = 0,
    item_core: int = 0,
    n_users: int | None = None,
    n_items: int | None = None,
    seed: int = 2024,
    missing_meta: str = "drop",
    dedupe_keys: Sequence[str] | None = ("user_id", "item_id"),
    prior_history: Mapping[str, Sequence[str]] | None = None,
    image_items: Iterable[str] | None = None,
    require_image: bool = False,
    report: ConversionReport | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Filter, build history, summarise and write one dataset; returns the summary.

    ``inter``: columns user_id, item_id (str, or categoricals of str ids: kept as codes until the rows are
    sampled), label (0/1), timestamp (float seconds), optionally
    :data:`EXTRA_INTER_COLUMNS` (e.g. MIND's impression_id), carried through to ``.inter``.
    ``summary["target_in_history"]`` counts rows whose own item is in their history (kept).
    ``items``: item metadata, columns item_id, title (+ extra text columns); items absent
    from it are handled by ``missing_meta`` ('keep': empty title, 'drop': rows removed),
    for interaction rows and for ``prior_history`` items alike.
    ``dedupe_keys``: rows repeating these keys are dropped (latest kept); None disables.
    ``require_image``: drop rows whose item is not in ``image_items`` (counted).
    """
    report = report or ConversionReport()
    # a new frame of the caller's columns (no copy: columns are replaced, never written into)
    columns = ["user_id", "item_id", "label", "timestamp", *(c for c in EXTRA_INTER_COLUMNS if c in inter)]
    inter = pd.DataFrame({c: inter[c] for c in columns}, copy=False)
    for column in ("user_id", "item_id"):
        inter[column] = _str_ids(inter[column])
    inter["timestamp"] = inter["timestamp"].astype(np.float64, copy=False)
    items = items.copy()
    items["item_id"] = items["item_id"].astype(str)
    items = items.drop_duplicates("item_id", keep="first")
    known = set(items["item_id"])

    inter = apply_missing_meta(inter, known, missing_meta, report)
    if image_items is not None:
        image_items = set(image_items)
    if require_image:
        if image_items is None:
            raise ValueError("require_image needs an image folder")
        no_image = ~inter["item_id"].isin(image_items)
        report.drop("no_image_rows", int(no_image.sum()))
        inter = inter[~no_image].reset_index(drop=True)
    if dedupe_keys:
        inter = drop_duplicates(inter, dedupe_keys, report)
    inter = sample_interactions(inter, n_users, n_items, seed, report)
    for column in inter.columns:  # categorical ids (see _str_ids) become strings for the kept rows only
        if isinstance(inter[column].dtype, pd.CategoricalDtype):
            inter[column] = inter[column].astype(object)
    inter["label"] = inter["label"].astype(np.int64)
    inter = kcore_filter(inter, user_core, item_core, report)
    if inter.empty:
        raise ValueError("no interactions left after filtering; check the raw files and options")

    if prior_history:
        users = set(inter["user_id"])
        cleaned: dict[str, list[str]] = {}
        n_missing = 0
        for user, hist in prior_history.items():
            if user not in users:
                continue
            keep = []
            for it in hist:
                if it not in known:
                    n_missing += 1
                    if missing_meta == "drop":
                        continue
                keep.append(it)
            cleaned[user] = keep
        report.drop(
            f"prior_history_missing_meta_{'dropped' if missing_meta == 'drop' else 'kept'}",
            n_missing,
        )
        prior_history = cleaned

    inter = build_history(inter, max_history, prior_history)

    used = set(inter["item_id"])
    if prior_history:  # otherwise every history item is an earlier row's item: already in ``used``
        for hist in inter["history"].tolist():
            if hist:
                used.update(hist.split(" "))
    text = items[items["item_id"].isin(used)]
    missing = sorted(used - set(text["item_id"]))
    if missing:
        filler = pd.DataFrame({"item_id": missing})
        for col in text.columns:
            if col != "item_id":
                filler[col] = ""
        text = pd.concat([text, filler], ignore_index=True)
    text = text.fillna("")

    summary = summarize(inter, text["item_id"], image_items, unit="impression_id" if "impression_id" in inter else None)
    summary["item_in_inter"] = int(inter["item_id"].nunique())
    summary["rows"] = int(len(inter))
    summary["target_in_history"] = int(sum(
        item in hist.split(" ") for item, hist in zip(inter["item_id"].tolist(), inter["history"].tolist()) if hist
    ))
    summary["max_history"] = int(max_history)
    summary.update(report.to_dict())
    summary["options"] = {
        "max_history": max_history,
        "user_core": user_core,
        "item_core": item_core,
        "sample_users": n_users,
        "sample_items": n_items,
        "seed": seed,
        "missing_meta": missing_meta,
        "require_image": require_image,
    }
    if extra:
        summary.update(extra)
    write_dataset(out_dir, inter, text, summary)
    return summary


def configure_logging(verbose: bool = False) -> None:
    """Plain console logging for the command-line entry points."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


def add_common_args(parser: Any, default_core: int = 0) -> None:
    """Options shared by every converter's command line."""
    parser.add_argument("--output_dir", "--out", dest="out", required=True,
                        help="output folder, e.g. dataset/movie (--out: the former name)")
    parser.add_argument("--max_history", type=int_at_least(1), default=20, help="liked items kept per row")
    parser.add_argument("--user_core", type=int_at_least(0), default=default_core, help="k-core on users (rows)")
    parser.add_argument("--item_core", type=int_at_least(0), default=default_core, help="k-core on items (rows)")
    parser.add_argument("--sample_users", type=int_at_least(1), default=None, help="keep N random users")
    parser.add_argument("--sample_items", type=int_at_least(1), default=None, help="keep N random items")
    parser.add_argument("--seed", type=int_at_least(0), default=2024, help="sampling seed")
    parser.add_argument(
        "--missing_meta",
        choices=MISSING_META_CHOICES,
        default="drop",
        help="rows whose item has no metadata: keep (empty title) or drop; counted either way",
    )
    parser.add_argument(
        "--require_image", action="store_true", help="drop rows whose item has no image (needs --images)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")


class ConvertOptions(TypedDict, total=False):
    """Options every converter's ``build_*`` function takes by name (:func:`add_common_args` on the command line);
    :func:`finalize_options` fills the defaults."""

    max_history: int  # liked items kept per row (20)
    user_core: int  # k-core on users (0: off)
    item_core: int  # k-core on items (0: off)
    sample_users: int | None  # keep N random users (None: all)
    sample_items: int | None  # keep N random items (None: all)
    seed: int  # sampling seed (2024)
    missing_meta: str  # rows whose item has no metadata: "keep" or "drop" (default)
    require_image: bool  # drop rows whose item has no image (False)


#: The defaults of :class:`ConvertOptions` (those of :func:`finalize_dataset`).
CONVERT_DEFAULTS: ConvertOptions = {"max_history": 20, "user_core": 0, "item_core": 0, "sample_users": None,
                                    "sample_items": None, "seed": 2024, "missing_meta": "drop", "require_image": False}
COMMON_OPTIONS = tuple(CONVERT_DEFAULTS)


def finalize_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`finalize_dataset`'s keyword arguments for a converter's :class:`ConvertOptions` (defaults filled,
    ``sample_users``/``sample_items`` as ``n_users``/``n_items``); an unknown option raises TypeError."""
    unknown = sorted(set(options) - set(CONVERT_DEFAULTS))
    if unknown:
        raise TypeError(f"unexpected option(s): {', '.join(unknown)}")
    renamed = {"sample_users": "n_users", "sample_items": "n_items"}
    return {renamed.get(k, k): v for k, v in {**CONVERT_DEFAULTS, **options}.items()}


def converter_parser(doc: str | None, raw_help: str, images_help: str, several_raw: bool = False) -> Parser:
    """Command line of a converter of raw folders: ``--raw`` (``several_raw``: one or more) and ``--images``;
    the converter adds its own options, then :func:`run_converter` the common ones."""
    parser = Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", required=True, type=existing_dir, nargs="+" if several_raw else None, help=raw_help)
    parser.add_argument("--images", type=existing_dir, default=None, help=images_help)
    return parser


def run_converter(parser: Parser, argv: list[str] | None, build: Callable[..., dict[str, Any]],
                  *options: str) -> dict[str, Any]:
    """Parse ``argv`` (the common options added to ``parser``), run ``build(raw, out, images, **common options,
    **options)`` and print its summary table; returns the summary. ``options``: the converter's own option names."""
    add_common_args(parser)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    kwargs = {name: getattr(args, name) for name in (*COMMON_OPTIONS, *options)}
    summary = build(args.raw, args.out, args.images, **kwargs)
    print(format_summary(summary, Path(args.out).resolve().name))
    return summary


def read_inter(path: str | os.PathLike) -> pd.DataFrame:
    """A written ``.inter`` file as str columns (history '' when empty)."""
    df = pd.read_csv(path, sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False, na_filter=False)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def hold_out_items(source: str | os.PathLike, items: Sequence[str], out: str | os.PathLike,
                   max_history: int = 20) -> pd.DataFrame:
    """Copy the dataset folder ``source`` (``<name>/<name>.*``) to ``out`` (``<new>/<new>.*``) without any
    interaction of ``items``: their rows leave ``.inter`` (histories rebuilt, so no held-out item is in a
    history either) while ``.item``, ``.text`` and every other side file keep them, so a model that reads
    item text or images can still score them. Returns the removed rows (``history`` column dropped)."""
    source, out = Path(source), Path(out)
    full = read_inter(source / f"{source.name}.inter")
    unknown = sorted(set(items) - set(full.item_id))
    if unknown:
        raise ValueError(f"{source}: items without any interaction cannot be held out: {unknown}")
    held = full.item_id.isin(set(items))
    kept = full[~held].drop(columns="history")
    kept = build_history(kept.assign(label=kept.label.astype(float), timestamp=kept.timestamp.astype(float)),
                         max_history, show_progress=False)
    out.mkdir(parents=True, exist_ok=True)
    for path in source.glob(f"{source.name}.*"):
        if path.suffix != ".inter":
            shutil.copy(path, out / f"{out.name}{path.suffix}")
    _write_lines(out / f"{out.name}.inter", INTER_HEADER,
                 ([r.user_id, r.item_id, f"{r.label:g}", f"{r.timestamp:.0f}", r.history] for r in kept.itertuples()))
    return full[held].drop(columns="history")
