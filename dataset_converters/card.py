"""Dataset card: the numbers of a built dataset, read back from its atomic files, beside the paper's Table 1.

    python -m dataset_converters.card dataset/movie [dataset/netflix ...] [--format markdown|text] [--json]

One column per dataset, each followed by the matching column of the paper's Table 1 (movie, netflix,
news = mind; ``--paper`` picks it when the folder has another name).

Reads ``<name>.inter`` (rows, users, positives, history column), ``<name>.item`` (the item universe and,
after ``recbole_histllm.features.visual``, the ``has_image`` column), ``<name>.text`` (titles,
descriptions), ``<name>.image_summary.json`` (the image backbone) and the converter's ``summary.json``
(images found when converted with ``--images``). #Train/#Valid/#Test are the per-user 8:1:1 split by time
of RecBole (the split Table 1 uses); a dataset whose split is another one says so in its own notes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dataset_converters.cli import Parser, existing_dir, run_main
from dataset_converters.core import read_inter, read_text_table, summarize

# The paper's Table 1 ("Statistics of the Evaluation Datasets"); its "news" is MIND.
PAPER_TABLE1: dict[str, dict[str, int]] = {
    "movie": {"train": 16598, "valid": 2074, "test": 2076, "user": 605, "item": 2400,
              "positive": 15107, "negative": 5641, "with_image": 2381},
    "netflix": {"train": 30991, "valid": 3873, "test": 3875, "user": 803, "item": 3219,
                "positive": 21931, "negative": 16808, "with_image": 3135},
    "news": {"train": 25928, "valid": 3244, "test": 3246, "user": 7199, "item": 14599,
             "positive": 24333, "negative": 8085, "with_image": 14599},
}
PAPER_NAMES = {"movie": "movie", "netflix": "netflix", "mind": "news", "news": "news"}
ROWS = (
    ("rows", "#Rows"), ("train", "#Train"), ("valid", "#Valid"), ("test", "#Test"), ("user", "#User"),
    ("item", "#Item"), ("item_in_inter", "#Item in rows"), ("positive", "#Positive"),
    ("negative", "#Negative"), ("positive_share", "positive share"), ("with_image", "#With image"),
    ("history_mean", "history length, mean"), ("history_median", "history length, median"),
    ("rows_per_user_mean", "rows per user, mean"), ("rows_per_user_median", "rows per user, median"),
    ("first_day", "first day"), ("last_day", "last day"),
)


def _item_columns(path: Path) -> tuple[pd.Series, pd.Series | None]:
    """Item ids of ``<name>.item`` and its ``has_image`` column (None when absent), without the features."""
    with open(path, encoding="utf-8") as handle:
        header = [h.split(":")[0] for h in handle.readline().rstrip("\n").split("\t")]
    if "item_id" not in header:
        raise ValueError(f"{path}: line 1: no item_id column in the header")
    wanted = [c for c in ("item_id", "has_image") if c in header]
    frame = pd.read_csv(path, sep="\t", header=0, names=header, usecols=wanted, dtype=str,
                        keep_default_na=False, na_filter=False, quoting=3)
    has_image = frame["has_image"].astype(float) if "has_image" in frame else None
    return frame["item_id"], has_image


def dataset_card(folder: str | os.PathLike) -> dict[str, Any]:
    """The card's numbers for the built dataset in ``folder`` (``<folder>/<name>.inter`` etc.)."""
    folder = Path(folder)
    name = folder.resolve().name
    inter_path, item_path = folder / f"{name}.inter", folder / f"{name}.item"
    for path in (inter_path, item_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (build the dataset first)")
    inter = read_inter(inter_path)
    if inter.empty:
        raise ValueError(f"{inter_path}: no rows")
    for column in ("user_id", "item_id", "label"):
        if column not in inter:
            raise ValueError(f"{inter_path}: line 1: no {column} column in the header")
    inter["label"] = pd.to_numeric(inter["label"], errors="coerce")
    if inter["label"].isna().any():
        line = int(np.flatnonzero(inter["label"].isna().to_numpy())[0]) + 2
        raise ValueError(f"{inter_path}: line {line}: label is not a number")
    items, has_image = _item_columns(item_path)

    converter = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    image_source = None
    image_items: list[str] | None = None
    if has_image is not None:
        image_items = items[has_image.to_numpy() > 0].tolist()
        image_source = f"has_image column of {item_path.name}"
        visual = folder / f"{name}.image_summary.json"
        if visual.is_file():
            info = json.loads(visual.read_text())
            image_source += f" ({info.get('backbone', '?')}, {info.get('dim', '?')}-d)"
    card: dict[str, Any] = {"name": name, "rows": len(inter)}
    card.update(summarize(inter, items, image_items))
    if card["with_image"] is None and converter.get("with_image") is not None:
        card["with_image"] = converter["with_image"]
        image_source = "summary.json of the converter (--images)"
    card["image_source"] = image_source
    card["item_in_inter"] = int(inter["item_id"].nunique())
    card["positive_share"] = round(card["positive"] / len(inter), 3)

    text_path = folder / f"{name}.text"
    if text_path.is_file():
        text = read_text_table(text_path)
        card["with_text"] = {c: int((text[c].str.strip() != "").sum()) for c in text.columns if c != "item_id"}
    if "history" in inter:
        lengths = inter["history"].str.split().str.len().fillna(0)
        card["history_mean"] = round(float(lengths.mean()), 2)
        card["history_median"] = float(lengths.median())
    per_user = inter.groupby("user_id").size()
    card["rows_per_user_mean"] = round(float(per_user.mean()), 2)
    card["rows_per_user_median"] = float(per_user.median())
    if "timestamp" in inter:
        stamps = pd.to_numeric(inter["timestamp"], errors="coerce").dropna()
        if len(stamps):
            days = pd.to_datetime(stamps.agg(["min", "max"]), unit="s", utc=True).dt.strftime("%Y-%m-%d")
            card["first_day"], card["last_day"] = days.tolist()
    card["max_history"] = converter.get("max_history")
    return card


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return f"{int(value):,}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _paper_column(paper: str | None) -> dict[str, Any]:
    ref: dict[str, Any] = dict(PAPER_TABLE1.get(paper or "", {}))
    if ref:
        ref["rows"] = ref["train"] + ref["valid"] + ref["test"]
        ref["positive_share"] = round(ref["positive"] / ref["rows"], 3)
    return ref


def format_cards(cards: Sequence[Mapping[str, Any]], papers: Sequence[str | None], markdown: bool = True) -> str:
    """Cards side by side, each followed by its Table 1 column (``papers[i]``, None: no column)."""
    columns: list[tuple[str, Mapping[str, Any]]] = []
    for card, paper in zip(cards, papers):
        columns.append((card["name"], card))
        if paper in PAPER_TABLE1:
            columns.append((f"paper: {paper}", _paper_column(paper)))
    texts = sorted({c for card in cards for c in card.get("with_text", {})},
                   key=lambda c: (c != "title", c != "description", c))
    keys = [(key, label) for key, label in ROWS if any(key in col for _, col in columns)]
    at = next(i for i, (key, _) in enumerate(keys) if key == "with_image") + 1
    keys[at:at] = [(f"text:{c}", f"#With {c}") for c in texts]

    def value(col: Mapping[str, Any], key: str) -> str:
        if key.startswith("text:"):
            return _cell(col["with_text"].get(key[5:])) if "with_text" in col else ""
        return _cell(col.get(key))

    head = [""] + [name for name, _ in columns]
    rows = [[label] + [value(col, key) for _, col in columns] for key, label in keys]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        width = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip() for r in [head, *rows]]
    for card in cards:
        if card.get("image_source"):
            lines.append(f"\n{card['name']} images: {card['image_source']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=existing_dir, help="built dataset folders (dataset/<name>)")
    parser.add_argument("--paper", default=None, choices=sorted(PAPER_TABLE1),
                        help="Table 1 column to compare every folder with (default: from each folder's name)")
    parser.add_argument("--format", choices=("markdown", "text"), default="markdown")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead")
    args = parser.parse_args(argv)
    cards = [dataset_card(folder) for folder in args.folders]
    if args.json:
        print(json.dumps(cards, indent=2))
        return cards
    papers = [args.paper or PAPER_NAMES.get(card["name"]) for card in cards]
    print(format_cards(cards, papers, markdown=args.format == "markdown"))
    return cards


if __name__ == "__main__":
    sys.exit(run_main(main))
