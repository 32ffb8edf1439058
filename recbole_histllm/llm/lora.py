"""LoRA through peft (Eq. 15-16), trainable-only checkpoints, autocast and checkpointing helpers."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Iterable[str] = ("q_proj", "v_proj"),
) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (TALLRec's defaults); returns the peft model.

    All base weights are frozen (theta_orig); only the low-rank matrices (theta_LoRA) train.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft still calls a deprecated transformers property
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def is_lora_param(name: str) -> bool:
    """True for LoRA adapter parameters (``lora_A``/``lora_B``/``lora_embedding_*``)."""
    return "lora_" in name


def lora_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Named LoRA parameters of ``model`` (frozen or not)."""
    return ((n, p) for n, p in model.named_parameters() if is_lora_param(n))


def set_lora_trainable(model: nn.Module, trainable: bool) -> int:
    """Freeze (False, stage 2 of Sec. 3.3) or unfreeze (True, stage 1) every LoRA parameter;
    returns how many tensors were changed. Non-LoRA parameters are left as they are."""
    n = 0
    for _, p in lora_parameters(model):
        p.requires_grad_(trainable)
        n += 1
    return n


def freeze_lora(model: nn.Module) -> int:
    """Freeze the LoRA weights (stage 2). See :func:`set_lora_trainable`."""
    return set_lora_trainable(model, False)


def unfreeze_lora(model: nn.Module) -> int:
    """Unfreeze the LoRA weights (stage 1). See :func:`set_lora_trainable`."""
    return set_lora_trainable(model, True)


def lora_is_identity(model: nn.Module) -> bool:
    """True when ``model`` has LoRA adapters, all frozen and all adding exactly zero (every ``lora_B`` /
    ``lora_embedding_B`` still at peft's zero init: a HistLLM whose stage 1 did not run)."""
    found = False
    for name, p in lora_parameters(model):
        if p.requires_grad:
            return False
        if "lora_B" in name or "lora_embedding_B" in name:
            if bool(p.detach().any()):
                return False
            found = True
    return found


@contextlib.contextmanager
def bypass_adapters(model: nn.Module) -> Iterator[bool]:
    """Run ``model`` without its LoRA adapters (peft's ``disable_adapter``) when they add exactly zero
    (:func:`lora_is_identity`): the same outputs without the adapters' dropout masks and matmuls, forward
    and backward. Otherwise a no-op. Yields whether the adapters were bypassed.

    peft re-enables adapters by marking them trainable; their ``requires_grad`` flags are restored here.
    """
    if not (hasattr(model, "disable_adapter") and lora_is_identity(model)):
        yield False
        return
    flags = [(p, p.requires_grad) for _, p in lora_parameters(model)]
    try:
        with model.disable_adapter():
            yield True
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters with ``requires_grad`` (detached CPU copies): small checkpoints."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA weights (whether or not they are currently trainable)."""
    return {n: p.detach().cpu().clone() for n, p in lora_parameters(model)}


def load_partial_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True) -> list[str]:
    """Copy ``state`` (from :func:`trainable_state_dict` / :func:`lora_state_dict`) into ``model``.

    Unlike ``load_state_dict(strict=False)`` a key that does not exist in ``model`` is an error
    when ``strict`` (a typo must not silently leave adapters at their init); returns keys loaded.
    """
    params = dict(model.named_parameters())
    missing = [k for k in state if k not in params]
    if missing and strict:
        raise KeyError(f"{len(missing)} checkpoint keys not in the model, e.g. {missing[:3]}")
    loaded = []
    with torch.no_grad():
        for k, v in state.items():
            if k in params:
                if params[k].shape != v.shape:
                    raise ValueError(f"shape mismatch for {k}: {tuple(v.shape)} vs {tuple(params[k].shape)}")
                params[k].copy_(v.to(params[k].device, params[k].dtype))
                loaded.append(k)
    return loaded


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls in hardware (AVX-512 or AMX; oneDNN's own check, as torch uses it).

    Without (an AVX2-only CPU), torch still accepts bf16 autocast on CPU but emulates it: SmolLM2-135M measured 5.8x
    slower for a no-grad forward and 22x slower for a training step than in float32 (see the README's "Results").
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def bf16_supported(device: str | torch.device) -> bool:
    """bf16 autocast pays off on ``device``: CUDA when the GPU has bf16, CPU when it has native bf16
    (:func:`cpu_has_native_bf16`)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return dev.type == "cpu" and cpu_has_native_bf16()


def autocast(device: str | torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` where it pays off (:func:`bf16_supported`), else a no-op context (float32).

    Weights stay in their dtype (fp32 master weights); matmuls run in bf16.
    """
    dev = torch.device(device)
    if enabled and bf16_supported(dev):
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing (non-reentrant, so inputs_embeds need no grad hook)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.config.use_cache = False
