"""A brute-force audit of a converted dataset, used by the converter tests (not shipped with the package)."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from dataset_converters.core import read_inter, read_text_table


def check_history(
    out_dir: str | os.PathLike,
    max_history: int = 20,
    prior_history: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Brute-force audit of a written dataset; returns a list of problems (empty = clean).

    For every row: each history item was liked (label 1) by the same user strictly
    earlier (or is in ``prior_history``), history is oldest first, at most
    ``max_history`` long and equal to the most recent earlier likes (simultaneous likes in
    file order); rows are sorted by user then time; every item (and history item) has a
    row in ``.item`` and ``.text``.
    """
    out = Path(out_dir)
    name = out.resolve().name
    df = read_inter(out / f"{name}.inter")
    problems: list[str] = []
    item_rows = (out / f"{name}.item").read_text(encoding="utf-8").splitlines()[1:]
    items = {line.split("\t")[0] for line in item_rows}
    text_items = set(read_text_table(out / f"{name}.text")["item_id"])
    if items != text_items:
        problems.append(".item and .text list different items")
    likes: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for user, item, label, ts in zip(df["user_id"], df["item_id"], df["label"], df["timestamp"]):
        if float(label) == 1:
            likes[user].append((float(ts), item))
    prev: tuple[str, float] | None = None
    for row_no, (user, item, ts_s, hist) in enumerate(
        zip(df["user_id"], df["item_id"], df["timestamp"], df["history"]), start=2
    ):
        ts = float(ts_s)
        if prev is not None and (user < prev[0] or (user == prev[0] and ts < prev[1])):
            problems.append(f"row {row_no}: not sorted by user then time")
        prev = (user, ts)
        got = hist.split(" ") if hist else []
        earlier = [("prior", it) for it in (prior_history or {}).get(user, [])]
        earlier += [(t, it) for t, it in sorted(likes[user], key=lambda x: x[0]) if t < ts]
        expected = [it for _, it in earlier][-max_history:] if max_history else []
        if len(got) > max_history:
            problems.append(f"row {row_no}: history longer than {max_history}")
        if got != expected:
            problems.append(f"row {row_no}: history {got} != expected {expected}")
        if item not in items or any(h not in items for h in got):
            problems.append(f"row {row_no}: item or history item missing from .item")
        if len(problems) > 50:
            break
    return problems


def same_dataset(out_dir: str | os.PathLike, golden_dir: str | os.PathLike) -> bool:
    """True when ``out_dir`` holds the same atomic files as ``golden_dir`` byte for byte and the same
    summary.json (keys in the same order) but its ``source`` (a path)."""
    out, golden = Path(out_dir), Path(golden_dir)
    name = golden.name
    for suffix in (".inter", ".item", ".text"):
        if (out / f"{name}{suffix}").read_bytes() != (golden / f"{name}{suffix}").read_bytes():
            return False
    got, want = (json.loads((d / "summary.json").read_text(encoding="utf-8")) for d in (out, golden))
    sources = got.pop("source", None), want.pop("source", None)
    return None not in sources and json.dumps(got) == json.dumps(want)
