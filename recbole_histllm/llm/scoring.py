"""Yes/No scoring at the answer position (Eq. 13) and the BCE loss (Eq. 14).

Rows are left padded, so the answer position is the last one of every row. Position ids are
derived from the attention mask, so a row's score does not depend on how much padding its
batch needs (the other rows of the batch).
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .prompt import AnswerTokens, PromptBatch, inject_embeddings


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0-based positions counted over real tokens only (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def input_embeddings(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The backbone's own input embeddings of ``input_ids`` (also works through peft)."""
    return model.get_input_embeddings()(input_ids)


def build_inputs_embeds(
    model: nn.Module, batch: PromptBatch, vectors: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """Input embeddings of ``batch`` with every slot named in ``vectors`` replaced (Sec. 3.2.5 E').

    ``vectors[name]`` shapes as in :func:`inject_embeddings`; a slot present in the batch but
    missing from ``vectors`` raises (so a forgotten injection never reads filler tokens).
    """
    emb = input_embeddings(model, batch.input_ids)
    vectors = vectors or {}
    for name, index in batch.slots.items():
        if len(index) == 0:
            continue
        if name not in vectors:
            raise KeyError(f"no vectors given for prompt slot <{name}>")
        emb = inject_embeddings(emb, index, vectors[name])
    return emb


def _forward_last(model: nn.Module, attention_mask: torch.Tensor, input_ids: torch.Tensor | None,
                  inputs_embeds: torch.Tensor | None, **model_inputs):
    """The model's output for a left-padded batch, logits kept for the last position only."""
    kwargs = {
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "use_cache": False,
        **model_inputs,
    }
    if inputs_embeds is not None:
        kwargs["inputs_embeds"] = inputs_embeds
    else:
        kwargs["input_ids"] = input_ids
    try:
        return model(**kwargs, logits_to_keep=1)
    except TypeError:  # older model classes without logits_to_keep
        return model(**kwargs)


def last_token_logits(
    model: nn.Module,
    attention_mask: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    **model_inputs,
) -> torch.Tensor:
    """Vocabulary logits ``(B, V)`` at the last (answer) position of a left-padded batch.

    ``model_inputs``: further model arguments (a vision-language model's ``pixel_values`` ...);
    ``position_ids=None`` there leaves the positions to a model that computes its own (M-RoPE).
    """
    return _forward_last(model, attention_mask, input_ids, inputs_embeds, **model_inputs).logits[:, -1, :]


def final_hidden_state(
    model: nn.Module,
    attention_mask: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    **model_inputs,
) -> torch.Tensor:
    """``(B, d)`` final hidden state (after the backbone's last norm) at the answer position."""
    out = _forward_last(model, attention_mask, input_ids, inputs_embeds, output_hidden_states=True,
                        **model_inputs)
    return out.hidden_states[-1][:, -1, :]


def answer_logits(model: nn.Module, hidden: torch.Tensor, answer: AnswerTokens) -> torch.Tensor:
    """``(B, 2)`` Yes/No logits from the final hidden state, computed in float32 outside autocast.

    Only the two LM-head rows are used. Under bf16 autocast the LM head's output is bf16: with
    logits of 13-16 the Yes-No gap then moves in steps of 0.0625-0.125 and most rows tie (57
    distinct scores for 9,596 ml-100k test rows); here it keeps float32 precision. A final logit
    soft-cap (Gemma 2) is applied when the backbone's config has one.
    """
    head = model.get_output_embeddings()
    rows = torch.tensor([answer.yes, answer.no], device=hidden.device)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        logits = hidden.float() @ head.weight.index_select(0, rows).float().T
        bias = getattr(head, "bias", None)
        if bias is not None:
            logits = logits + bias.index_select(0, rows).float()
        config = getattr(model, "config", None)
        cap = getattr(getattr(config, "get_text_config", lambda: config)(), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
    return logits


def yes_no_logits(
    model: nn.Module,
    answer: AnswerTokens,
    attention_mask: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    **model_inputs,
) -> torch.Tensor:
    """``(B, 2)`` float32 logits of the Yes and No tokens at the answer position (Eq. 13).

    The backbone's body may run under bf16 autocast; the readout is exact (:func:`answer_logits`).
    """
    hidden = final_hidden_state(model, attention_mask, input_ids=input_ids, inputs_embeds=inputs_embeds,
                                **model_inputs)
    return answer_logits(model, hidden, answer)


def attention_kernel(device: str | torch.device, choice: str | None,
                     llm: torch.nn.Module | None = None) -> contextlib.AbstractContextManager:
    """The attention implementation of a forward whose backward will run (``cpu_train_attention``).

    On CPU with autograd on: ``"math"`` selects torch's plain math SDPA kernel; ``"eager"`` switches ``llm``'s
    transformers attention to its explicit ``eager`` implementation (bf16 matmuls, float32 softmax). For
    SmolLM2-135M at ~100-token prompts both backwards measured ~2x faster than the fused flash kernel torch picks
    by default (whose backward took half of a stage-2 step); but the default HistLLM trained worse with the math
    kernel and not reliably with eager (README, "Two more fast kernels"), so both are opt-in. ``None`` (the
    default), scoring under ``no_grad`` and other devices keep torch's choice.
    """
    if choice is None or not torch.is_grad_enabled() or torch.device(device).type != "cpu":
        return contextlib.nullcontext()
    if choice == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    if choice == "eager":
        if llm is None:
            raise ValueError("cpu_train_attention: eager needs the LLM whose attention it switches")
        return _attention_implementation(llm.config, "eager")
    raise ValueError(f"cpu_train_attention: {choice!r} is not one of ~, math, eager")


@contextlib.contextmanager
def _attention_implementation(config, name: str):
    """transformers' attention implementation ``name`` for the duration (read per forward from the config)."""
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


def yes_probability(logits_yes_no: torch.Tensor) -> torch.Tensor:
    """P(Yes) = softmax over the two answer logits (Eq. 13's y-hat), shape ``(B,)``."""
    return torch.softmax(logits_yes_no.float(), dim=-1)[:, 0]


def yes_no_bce(logits_yes_no: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE (Eq. 14) between labels and P(Yes); computed from the logit gap for stability."""
    gap = logits_yes_no[:, 0].float() - logits_yes_no[:, 1].float()
    return F.binary_cross_entropy_with_logits(gap, labels.float())


# ---- prefix key/value cache ---------------------------------------------------------------------
@dataclass
class PrefixKV:
    """Key/value states of a prompt prefix shared by every row, batch size 1: ``layers[i] = (keys,
    values)`` of shape ``(1, heads, length, head_dim)``; with autograd history when LoRA trains."""

    length: int
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]


def _base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _cache_argument(model: nn.Module) -> str | None:
    """Name of the forward argument that takes a Cache (``cache`` from transformers 5.x, earlier
    ``past_key_values``); None when the model takes neither."""
    params = inspect.signature(_base_model(model).forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def prefix_cache_supported(model: nn.Module) -> bool:
    """Whether :func:`score_batch` can run ``model`` after cached prefix states: a decoder whose
    forward takes a transformers ``DynamicCache``, every layer full attention (a sliding window
    would see another context), no activation checkpointing while gradients are on (the recomputed
    forward would append the keys twice). Otherwise the plain path runs."""
    try:
        from transformers.cache_utils import DynamicCache  # noqa: F401
    except ImportError:  # pragma: no cover - transformers without the Cache API
        return False
    base = _base_model(model)
    if _cache_argument(model) is None:
        return False
    config = getattr(base, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is None or getattr(text, "is_encoder_decoder", False):
        return False
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None:
        if any(t != "full_attention" for t in layer_types):
            return False
    elif getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return False
    if torch.is_grad_enabled() and base.training:
        with warnings.catch_warnings():  # the older property name is deprecated in transformers 5
            warnings.simplefilter("ignore", FutureWarning)
            checkpointing = getattr(base, "is_activation_checkpointing", None)
            if checkpointing is None:
                checkpointing = getattr(base, "is_gradient_checkpointing", False)
        if checkpointing:
            return False
    return True


def compute_prefix_kv(model: nn.Module, prefix_ids: torch.Tensor | list[int]) -> PrefixKV:
    """Run the shared prefix (token ids, batch size 1, positions ``0..P-1``) and keep its key/value
    states. Gradients flow into them when autograd is on (LoRA training)."""
    device = model.get_input_embeddings().weight.device
    ids = torch.as_tensor(prefix_ids, dtype=torch.long, device=device).reshape(1, -1)
    from transformers.cache_utils import DynamicCache

    name = _cache_argument(model)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "position_ids": torch.arange(ids.shape[1], device=device)[None], "use_cache": True,
              name: DynamicCache()}
    try:
        out = model(**kwargs, logits_to_keep=1)
    except TypeError:  # older model classes without logits_to_keep
        out = model(**kwargs)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if hasattr(cache, "layers"):
        layers = tuple((layer.keys, layer.values) for layer in cache.layers)
    else:  # legacy tuple of (keys, values) per layer
        layers = tuple((k, v) for k, v, *_ in cache)
    return PrefixKV(length=int(ids.shape[1]), layers=layers)


def expand_prefix_kv(prefix: PrefixKV, batch_size: int):
    """A fresh ``DynamicCache`` holding ``prefix`` for every row (a forward appends to its cache, so
    each call needs its own copy)."""
    from transformers.cache_utils import DynamicCache

    data = [(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in prefix.layers]
    return DynamicCache(data)


def score_batch(
    model: nn.Module,
    batch: PromptBatch,
    answer: AnswerTokens,
    vectors: dict[str, torch.Tensor] | None = None,
    prefix: PrefixKV | None = None,
) -> torch.Tensor:
    """``(B, 2)`` Yes/No logits for a :class:`PromptBatch` (slots filled from ``vectors``).

    ``prefix``: key/value states of the first ``prefix.length`` tokens that every row shares
    (:func:`compute_prefix_kv`); the rest of each row is then run after them: layout
    ``[prefix][left pad][rest]``, mask ``[1] * P + the rest's mask``, positions continuing at P, so a
    row's score equals the plain path's and still does not depend on its batch's padding.
    """
    model_inputs = {}
    mask = batch.attention_mask
    if prefix is not None:
        batch = batch.without_prefix(prefix.length)
        rows = batch.input_ids.shape[0]
        ones = torch.ones((rows, prefix.length), dtype=batch.attention_mask.dtype, device=mask.device)
        mask = torch.cat([ones, batch.attention_mask], dim=1)
        model_inputs = {"position_ids": prefix.length + position_ids_from_mask(batch.attention_mask),
                        _cache_argument(model): expand_prefix_kv(prefix, rows)}
    if batch.slots and any(len(i) for i in batch.slots.values()):
        emb = build_inputs_embeds(model, batch, vectors)
        return yes_no_logits(model, answer, mask, inputs_embeds=emb, **model_inputs)
    return yes_no_logits(model, answer, mask, input_ids=batch.input_ids, **model_inputs)


__all__ = [
    "PrefixKV",
    "answer_logits",
    "attention_kernel",
    "build_inputs_embeds",
    "compute_prefix_kv",
    "expand_prefix_kv",
    "final_hidden_state",
    "input_embeddings",
    "last_token_logits",
    "position_ids_from_mask",
    "prefix_cache_supported",
    "score_batch",
    "yes_no_bce",
    "yes_no_logits",
    "yes_probability",
]
