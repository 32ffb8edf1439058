"""Mapping modules: project an external embedding into the LLM's input space.

VMA's :math:`\\mathbf e_{p_k} = M_\\phi(p_k)` (Eq. 3) maps a visual embedding; CIA's
:math:`\\mathbf e_u = M_\\omega(\\mathbf u)`, :math:`\\mathbf e_i = M_\\omega(\\mathbf i)` (Eq. 11-12)
map the MF user and item embeddings with one shared module.

The paper does not specify the modules' internals. With ``token_rms`` set (the default in the
plugin, config ``token_scale: True``), inputs are standardised per feature over their table
(:meth:`MappingModule.set_input_stats`) and outputs are RMS-normalised and scaled by a learnable
gain initialised to the RMS of the LLM's token embeddings (:class:`TokenScale`): without it an
MF embedding (std ~0.01-0.1) maps to a near-constant token (varying by ~0.02 per dimension across
users, against ~0.136 for a token embedding) and the LLM cannot tell users apart.

With :class:`TokenStats` carrying the embedding table's per-dimension mean and std (config ``token_moments``),
the output starts where real tokens live instead: ``mean + x / rms(x) * std``, both learnable. A real token is
mostly that shared mean (SmolLM2-135M: norm 2.18 of a row norm ~3.15), which an RMS-normalised output in a
random direction lacks; prompt tuning likewise starts soft prompts from the vocabulary (Lester et al., 2021).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def token_embedding_rms(embedding: nn.Embedding) -> float:
    """Root mean square of an LLM's input embedding table (the scale of a real token)."""
    weight = embedding.weight.detach().float()
    return float(weight.pow(2).mean().sqrt())


@dataclass(frozen=True)
class TokenStats:
    """The scale a mapped token starts at: the token-embedding ``rms``, and with ``mean``/``std`` (one value per
    dimension) the table's moments (:func:`token_embedding_stats`)."""

    rms: float
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None


def token_embedding_stats(embedding: nn.Embedding, moments: bool = False) -> TokenStats:
    """RMS of an LLM's input embedding table, and with ``moments`` its per-dimension mean and std."""
    if not moments:
        return TokenStats(token_embedding_rms(embedding))
    weight = embedding.weight.detach().float()
    return TokenStats(token_embedding_rms(embedding), weight.mean(0).cpu(), weight.std(0).cpu())


class TokenScale(nn.Module):
    """``x / rms(x) * gain (+ bias)``: an output at the scale of the LLM's token embeddings.

    ``gain`` (one per dimension) starts at ``rms``, the token-embedding RMS, or, when ``rms`` is a
    :class:`TokenStats` with moments, at the table's per-dimension std; then ``bias`` starts at the table's mean.
    Both are learned.
    """

    def __init__(self, dim: int, rms: float | TokenStats, eps: float = 1e-6) -> None:
        super().__init__()
        stats = rms if isinstance(rms, TokenStats) else TokenStats(float(rms))
        self.eps = eps
        if stats.std is None:
            self.gain = nn.Parameter(torch.full((dim,), float(stats.rms)))
            self.bias = None
        else:
            self.gain = nn.Parameter(stats.std.detach().float().clone().reshape(dim))
            self.bias = nn.Parameter(stats.mean.detach().float().clone().reshape(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.gain.float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


class MappingModule(nn.Module):
    """MLP ``in_dim -> hidden -> out_dim`` (GELU), or a single linear layer when ``layers == 1``.

    ``k`` > 1 produces k tokens per input (output ``(..., k, out_dim)``); k == 1 gives ``(..., out_dim)``.
    ``token_rms``: standardise inputs (:meth:`set_input_stats`) and scale outputs to the token RMS, or the
    token moments of a :class:`TokenStats` (:class:`TokenScale`); None keeps the plain MLP.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int | None = None,
        layers: int = 2,
        k: int = 1,
        dropout: float = 0.0,
        token_rms: float | TokenStats | None = None,
    ) -> None:
        super().__init__()
        self.k, self.out_dim = k, out_dim
        hidden = hidden or out_dim
        if layers == 1:
            self.net = nn.Linear(in_dim, out_dim * k)
        else:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim * k)
            )
        self.scale = TokenScale(out_dim, token_rms) if token_rms is not None else None
        if self.scale is not None:
            self.register_buffer("in_mean", torch.zeros(in_dim))
            self.register_buffer("in_std", torch.ones(in_dim))

    @torch.no_grad()
    def set_input_stats(self, table: torch.Tensor) -> None:
        """Per-feature mean and std of the inputs this module will see (rows of ``table``)."""
        if self.scale is None:
            return
        table = table.detach().float().reshape(-1, table.shape[-1])
        table = table[table.abs().sum(-1) > 0]  # padding rows and missing images are all zero
        if len(table) < 2:
            return
        self.in_mean.copy_(table.mean(0))
        self.in_std.copy_(table.std(0).clamp(min=1e-6))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP on the (standardised) input, before :meth:`emit` scales it to a token."""
        if self.scale is not None:
            x = (x - self.in_mean.to(x.dtype)) / self.in_std.to(x.dtype)
        return self.net(x)

    def emit(self, y: torch.Tensor) -> torch.Tensor:
        """``k`` tokens per row at the token scale (:class:`TokenScale`) from :meth:`project`'s output."""
        if self.k > 1:
            y = y.reshape(*y.shape[:-1], self.k, self.out_dim)
        return self.scale(y) if self.scale is not None else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emit(self.project(x))
