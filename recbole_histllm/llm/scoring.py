"""Yes/No scoring at the answer position (Eq. 13) and the BCE loss (Eq. 14).

Rows are left padded, so the answer position is the last one of every row. Position ids are
derived from the attention mask, so a row's score does not depend on how much padding its
batch needs (the other rows of the batch).
"""

from __future__ import annotations

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
        out = model(**kwargs, logits_to_keep=1)
    except TypeError:  # older model classes without logits_to_keep
        out = model(**kwargs)
    return out.logits[:, -1, :]


def final_hidden_state(
    model: nn.Module,
    attention_mask: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    **model_inputs,
) -> torch.Tensor:
    """``(B, d)`` final hidden state (after the backbone's last norm) at the answer position."""
    kwargs = {
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "use_cache": False,
        "output_hidden_states": True,
        **model_inputs,
    }
    kwargs["inputs_embeds" if inputs_embeds is not None else "input_ids"] = (
        inputs_embeds if inputs_embeds is not None else input_ids
    )
    try:
        out = model(**kwargs, logits_to_keep=1)
    except TypeError:  # older model classes without logits_to_keep
        out = model(**kwargs)
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


def yes_probability(logits_yes_no: torch.Tensor) -> torch.Tensor:
    """P(Yes) = softmax over the two answer logits (Eq. 13's y-hat), shape ``(B,)``."""
    return torch.softmax(logits_yes_no.float(), dim=-1)[:, 0]


def yes_no_bce(logits_yes_no: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE (Eq. 14) between labels and P(Yes); computed from the logit gap for stability."""
    gap = logits_yes_no[:, 0].float() - logits_yes_no[:, 1].float()
    return F.binary_cross_entropy_with_logits(gap, labels.float())


def score_batch(
    model: nn.Module,
    batch: PromptBatch,
    answer: AnswerTokens,
    vectors: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``(B, 2)`` Yes/No logits for a :class:`PromptBatch` (slots filled from ``vectors``)."""
    if batch.slots and any(len(i) for i in batch.slots.values()):
        emb = build_inputs_embeds(model, batch, vectors)
        return yes_no_logits(model, answer, batch.attention_mask, inputs_embeds=emb)
    return yes_no_logits(model, answer, batch.attention_mask, input_ids=batch.input_ids)


__all__ = [
    "answer_logits",
    "build_inputs_embeds",
    "final_hidden_state",
    "input_embeddings",
    "last_token_logits",
    "position_ids_from_mask",
    "score_batch",
    "yes_no_bce",
    "yes_no_logits",
    "yes_probability",
]
