"""Visual embeddings of item images (HistLLM Sec. 3.2.2, Visual Modality Alignment).

``python -m recbole_histllm.features.visual --dataset=movie --images=DIR`` embeds each
item's image with a timm backbone (default ``vit_small_patch16_224.dino``, 384-d, as the
paper) and writes ``image:float_seq`` and ``has_image:float`` into ``<name>.item``.

Weights are never downloaded: a local file or folder (``--weights`` or the config key
``visual_weights``) or the offline preset ``--backbone efficientnet_lite0``; the backbones,
presets and weight lookup live in :mod:`recbole_histllm.features.visual_backbones`. This
module reads the images, computes the embeddings, writes them and holds the command line.

Missing images give a zero vector and ``has_image`` 0; unreadable ones are counted and
logged, never fatal. Finished embeddings are cached in ``<name>.image_cache.npz`` beside
the item file, so a killed run resumes where it stopped; the item file is replaced
atomically at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from dataset_converters.cli import existing_dir, existing_file, existing_path, int_at_least, run_main
from dataset_converters.core import image_files
from recbole_histllm.features.files import atomic_write, feature_parser, read_item_file, rewrite_item_file
from recbole_histllm.features.visual_backbones import DEFAULT_BACKBONE, PRESETS, build_backbone
from recbole_histllm.utils import PROPERTIES_DIR, UsageError

logger = logging.getLogger(__name__)

IMAGE_FIELD = "image"
HAS_IMAGE_FIELD = "has_image"
MAX_NAMED_FAILURES = 5


# --------------------------------------------------------------------------- images


def read_mapping(path: str | os.PathLike) -> dict[str, str]:
    """``item_id,filename`` CSV (header optional) -> {item_id: filename}."""
    mapping: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for n, row in enumerate(csv.reader(handle)):
            if len(row) < 2:
                continue
            if n == 0 and row[0].strip().lower() in ("item_id", "id", "item"):
                continue
            mapping[row[0].strip()] = row[1].strip()
    return mapping


def find_images(
    item_ids: Iterable[str], images_dir: str | os.PathLike, mapping: dict[str, str] | None = None
) -> dict[str, Path]:
    """Locate ``<dir>/<item_id>.<jpg|jpeg|png|...>`` (extension case-insensitive) per item.

    With ``mapping`` an item's file is ``mapping[item_id]`` (relative to ``images_dir`` or
    absolute). Items without a file are absent from the result.
    """
    images_dir = Path(images_dir)
    try:
        by_stem, _ = image_files(images_dir)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    found: dict[str, Path] = {}
    for item in item_ids:
        if mapping is not None:
            name = mapping.get(item)
            if name:
                path = Path(name) if os.path.isabs(name) else images_dir / name
                if path.is_file():
                    found[item] = path
        elif item in by_stem:
            found[item] = by_stem[item]
    return found


def _file_signature(path: Path) -> str:
    stat = path.stat()
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def _load_image(path: Path, transform: Callable) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return transform(image.convert("RGB"))


class _ImageSet(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[tuple[str, Path]], transform: Callable) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        path = self.items[index][1]
        try:
            return index, _load_image(path, self.transform), ""
        except Exception as err:  # noqa: BLE001 - any decoder failure means "unreadable"
            return index, None, f"{type(err).__name__}: {err}"


def _collate(batch: list) -> list:
    return batch


# --------------------------------------------------------------------------- cache


class EmbeddingCache:
    """Finished embeddings keyed by item id, valid for one backbone fingerprint."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.entries: dict[str, tuple[str, np.ndarray]] = {}
        self.dirty = False

    def load(self) -> int:
        """Read the cache file if it belongs to this backbone; returns entries loaded."""
        if not self.path.is_file():
            return 0
        try:
            with np.load(self.path, allow_pickle=False) as data:
                if str(data["meta"]) != self.fingerprint:
                    logger.info("cache %s was made with another backbone or weights: not reused", self.path)
                    return 0
                for item, sig, emb in zip(data["ids"], data["sigs"], data["emb"], strict=True):
                    self.entries[str(item)] = (str(sig), emb.astype(np.float32))
        except (OSError, ValueError, KeyError) as err:
            logger.warning("cache %s unreadable (%s): starting afresh", self.path, err)
            self.entries.clear()
        return len(self.entries)

    def get(self, item: str, signature: str) -> np.ndarray | None:
        """The cached embedding if the image file is unchanged, else None."""
        entry = self.entries.get(item)
        return entry[1] if entry is not None and entry[0] == signature else None

    def put(self, item: str, signature: str, embedding: np.ndarray) -> None:
        """Record a finished embedding (written at the next flush)."""
        self.entries[item] = (signature, embedding)
        self.dirty = True

    def flush(self) -> None:
        """Write the cache atomically (temp file + rename) when it has new entries."""
        if not self.dirty:
            return
        ids = list(self.entries)
        sigs = [self.entries[i][0] for i in ids]
        emb = np.stack([self.entries[i][1] for i in ids]).astype(np.float32)
        with atomic_write(self.path, binary=True) as handle:
            np.savez(handle, meta=np.array(self.fingerprint), ids=np.array(ids), sigs=np.array(sigs), emb=emb)
        self.dirty = False


# --------------------------------------------------------------------------- item file


def format_vector(vector: np.ndarray) -> str:
    """Space separated floats (6 significant digits), RecBole's float_seq format."""
    return " ".join(f"{v:.6g}" for v in vector.tolist())


def write_item_file(
    path: Path,
    header: list[str],
    rows: list[list[str]],
    item_col: int,
    embeddings: dict[str, np.ndarray],
    dim: int,
) -> None:
    """Rewrite ``path`` with fresh image columns (old ones dropped), atomically."""
    zero = " ".join(["0"] * dim)
    formatted: dict[str, str] = {}

    def image_fields(row: list[str]) -> list[str]:
        item = row[item_col]
        vector = embeddings.get(item)
        if vector is None:
            return [zero, "0"]
        if item not in formatted:
            formatted[item] = format_vector(vector)
        return [formatted[item], "1"]

    rewrite_item_file(path, header, rows, {IMAGE_FIELD, HAS_IMAGE_FIELD},
                      [f"{IMAGE_FIELD}:float_seq", f"{HAS_IMAGE_FIELD}:float"], image_fields)


# --------------------------------------------------------------------------- extraction


@dataclass
class VisualSummary:
    """What one extraction run did (also written as ``<name>.image_summary.json``)."""

    dataset: str
    item_file: str
    backbone: str
    timm_model: str
    weights: str
    dim: int
    items: int
    with_image: int
    missing: int
    unreadable: int
    from_cache: int
    extracted: int
    seconds: float
    extract_seconds: float
    seconds_per_1000: float | None
    unreadable_files: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The printed summary."""
        per = "n/a" if self.seconds_per_1000 is None else f"{self.seconds_per_1000:.1f} s"
        return [
            f"visual features for '{self.dataset}' ({self.backbone} -> {self.timm_model}, {self.dim}-d)",
            f"  items           {self.items}",
            f"  with image      {self.with_image}  (from cache {self.from_cache}, extracted {self.extracted})",
            f"  missing         {self.missing}",
            f"  unreadable      {self.unreadable}",
            f"  seconds         {self.seconds:.1f}  (extraction {self.extract_seconds:.1f})",
            f"  per 1000 images {per}",
            f"  written to      {self.item_file}",
        ]


def extract_visual_features(
    dataset: str,
    images: str | os.PathLike,
    data_path: str | os.PathLike = "dataset",
    backbone: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = None,
    batch_size: int = 32,
    mapping: str | os.PathLike | None = None,
    item_field: str = "item_id",
    device: str | None = None,
    num_workers: int = 0,
    flush_every: int = 5,
    use_cache: bool = True,
    progress: bool = True,
) -> VisualSummary:
    """Embed every item's image and write ``image``/``has_image`` into ``<name>.item``."""
    start = time.perf_counter()
    item_path = Path(data_path) / dataset / f"{dataset}.item"
    header, rows = read_item_file(item_path)
    names = [h.split(":")[0] for h in header]
    if item_field not in names:
        raise UsageError(f"{item_path}: no '{item_field}' column in header {header}")
    item_col = names.index(item_field)
    item_ids = list(dict.fromkeys(row[item_col] for row in rows if len(row) > item_col))

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder = build_backbone(backbone, weights, num_classes=0, device=device)
    found = find_images(item_ids, images, read_mapping(mapping) if mapping else None)

    cache = EmbeddingCache(item_path.with_name(f"{dataset}.image_cache.npz"), encoder.fingerprint)
    if use_cache:
        cache.load()
    embeddings: dict[str, np.ndarray] = {}
    todo: list[tuple[str, Path]] = []
    signatures: dict[str, str] = {}
    for item in item_ids:
        path = found.get(item)
        if path is None:
            continue
        signatures[item] = _file_signature(path)
        cached = cache.get(item, signatures[item]) if use_cache else None
        if cached is not None and cached.shape == (encoder.dim,):
            embeddings[item] = cached
        else:
            todo.append((item, path))
    from_cache = len(embeddings)

    failures: list[tuple[str, str]] = []
    loader = torch.utils.data.DataLoader(
        _ImageSet(todo, encoder.transform),
        batch_size=max(1, batch_size),
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    from tqdm.auto import tqdm

    extract_start = time.perf_counter()
    bar = tqdm(total=len(todo), desc="visual features", unit="img", disable=not progress or not todo)
    try:
        for n_batch, batch in enumerate(loader, start=1):
            good = [(i, x) for i, x, _ in batch if x is not None]
            for i, x, error in batch:
                if x is None:
                    failures.append((str(todo[i][1]), error))
                    if len(failures) <= MAX_NAMED_FAILURES:
                        logger.warning("unreadable image %s (%s)", todo[i][1], error)
            if good:
                with torch.inference_mode():
                    feats = encoder.model(torch.stack([x for _, x in good]).to(device))
                feats = feats.float().cpu().numpy()
                for (i, _), vector in zip(good, feats, strict=True):
                    item = todo[i][0]
                    embeddings[item] = vector
                    if use_cache:
                        cache.put(item, signatures[item], vector)
            bar.update(len(batch))
            if use_cache and n_batch % max(1, flush_every) == 0:
                cache.flush()
    finally:
        bar.close()
        if use_cache:
            cache.flush()
    extract_seconds = time.perf_counter() - extract_start
    extracted = len(embeddings) - from_cache
    if len(failures) > MAX_NAMED_FAILURES:
        logger.warning("%d unreadable images in all (first %d named above)", len(failures), MAX_NAMED_FAILURES)

    write_item_file(item_path, header, rows, item_col, embeddings, encoder.dim)
    seconds = time.perf_counter() - start
    summary = VisualSummary(
        dataset=dataset,
        item_file=str(item_path),
        backbone=backbone,
        timm_model=encoder.timm_model,
        weights=encoder.weights,
        dim=encoder.dim,
        items=len(item_ids),
        with_image=len(embeddings),
        missing=len(item_ids) - len(found),
        unreadable=len(failures),
        from_cache=from_cache,
        extracted=extracted,
        seconds=round(seconds, 3),
        extract_seconds=round(extract_seconds, 3),
        seconds_per_1000=round(1000 * extract_seconds / len(todo), 3) if todo else None,
        unreadable_files=[path for path, _ in failures],
    )
    summary_path = item_path.with_name(f"{dataset}.image_summary.json")
    summary_path.write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    return summary


# --------------------------------------------------------------------------- CLI


def _config_values(dataset: str, config_files: Sequence[str]) -> dict:
    """``visual_*`` / ``data_path`` keys from the plugin property files, then user YAML files."""
    values: dict = {}
    paths = [PROPERTIES_DIR / "overall.yaml", PROPERTIES_DIR / "dataset" / f"{dataset}.yaml"]
    paths += [Path(p) for p in config_files]
    for path in paths:
        if not path.is_file():
            if path in paths[2:]:
                raise UsageError(f"config file not found: {path}")
            continue
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
        if isinstance(data, dict):
            values.update(data)
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = feature_parser(
        "recbole_histllm.features.visual",
        "Embed item images with a timm backbone into <data_path>/<dataset>/<dataset>.item.",
        data_path=None,
        data_path_help="datasets root (default: config data_path or dataset/)",
    )
    parser.add_argument("--images", required=True, type=existing_dir, help="folder of <item_id>.jpg|jpeg|png images")
    parser.add_argument(
        "--backbone",
        default=None,
        help=f"timm model name or preset ({', '.join(sorted(PRESETS))}); default {DEFAULT_BACKBONE}",
    )
    parser.add_argument(
        "--weights",
        "--visual_weights",
        dest="weights",
        type=existing_path,
        default=None,
        help="local weights file or folder (config key visual_weights)",
    )
    parser.add_argument("--batch_size", type=int_at_least(1), default=None, help="images per forward pass (default 32)")
    parser.add_argument("--mapping", type=existing_file, default=None,
                        help="CSV item_id,filename (relative to --images)")
    parser.add_argument("--item_field", default="item_id", help="item id column of the .item file")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--num_workers", type=int_at_least(0), default=0, help="DataLoader workers decoding images")
    parser.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads")
    parser.add_argument("--flush_every", type=int_at_least(1), default=5, help="write the resume cache every N batches")
    parser.add_argument("--no_cache", action="store_true", help="neither read nor write the resume cache")
    parser.add_argument("--config_files", default="", help="space separated YAML files (visual_* keys)")
    return parser


def main(argv: Sequence[str] | None = None) -> VisualSummary:
    """Command-line entry point; returns the run's summary."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = _config_values(args.dataset, args.config_files.split())
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = extract_visual_features(
        dataset=args.dataset,
        images=args.images,
        data_path=args.data_path or config.get("data_path") or "dataset",
        backbone=args.backbone or config.get("visual_backbone") or DEFAULT_BACKBONE,
        weights=args.weights or config.get("visual_weights"),
        batch_size=args.batch_size or int(config.get("visual_batch_size") or 32),
        mapping=args.mapping,
        item_field=args.item_field,
        device=args.device,
        num_workers=args.num_workers,
        flush_every=args.flush_every,
        use_cache=not args.no_cache,
    )
    print("\n".join(summary.lines()))
    return summary


if __name__ == "__main__":
    sys.exit(run_main(main, errors=()))
