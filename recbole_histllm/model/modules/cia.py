"""CIA, Collaborative Information Alignment (HistLLM Eq. 9-12): MF user and item embeddings -> LLM tokens."""

from __future__ import annotations

import torch
from torch import nn

from recbole_histllm.model.modules.mapping import MappingModule, TokenStats


class CIA(MappingModule):
    """One mapping :math:`M_\\omega` shared by users and items (Eq. 11-12) over the MF tables :math:`\\mathbf u`,
    :math:`\\mathbf i` (Eq. 9-10) that stage 0 trains (:meth:`load`). The tables are buffers (saved with the
    checkpoint, never trained): only the mapping learns.

    ``interaction`` (config ``cia_interaction``, beyond the paper's text): the item token also carries the pair's
    product :math:`\\mathbf u \\odot \\mathbf i` (whose sum is MF's logit) through a linear branch added before the
    token scale, ``emit(M(i) + W (u * i) / s)`` with ``s`` the product's RMS over sampled pairs. ``W`` starts at
    zero, so at initialisation the token is the paper's :math:`M_\\omega(\\mathbf i)`. Without it the frozen LLM
    has to compare two separately mapped tokens through attention to see whether they match.

    ``residual`` (config ``cia_residual``, beyond the paper's text): MF's own logit :math:`\\mathbf u^\\top
    \\mathbf i`, times a trained weight :math:`w` (starting at 1), is added to the Yes logit (:meth:`mf_logit`), so
    the LLM's Yes/No gap learns what MF misses instead of re-deriving MF's score from tokens.
    """

    def __init__(self, n_users: int, n_items: int, dim: int, out_dim: int, hidden: int | None = None,
                 layers: int = 2, token_rms: float | TokenStats | None = None, interaction: bool = False,
                 residual: bool = False) -> None:
        super().__init__(dim, out_dim, hidden, layers, token_rms=token_rms)
        self.register_buffer("user_table", torch.zeros(n_users, dim))
        self.register_buffer("item_table", torch.zeros(n_items, dim))
        self.cross = None
        if interaction:
            self.cross = nn.Linear(dim, out_dim)
            nn.init.zeros_(self.cross.weight)
            nn.init.zeros_(self.cross.bias)
            self.register_buffer("cross_scale", torch.ones(()))
        self.residual_weight = nn.Parameter(torch.ones(())) if residual else None

    @torch.no_grad()
    def load(self, user: torch.Tensor, item: torch.Tensor, pairs: int = 8192) -> None:
        """Take MF's user and item tables (rows by this dataset's internal ids) and standardise the mapping's
        inputs over both (row 0, padding, left out); with ``interaction``, the product's RMS over ``pairs``
        random (user, item) pairs (a fixed generator: the same scale on every run)."""
        self.user_table.copy_(user.to(self.user_table))
        self.item_table.copy_(item.to(self.item_table))
        self.set_input_stats(torch.cat([self.user_table[1:], self.item_table[1:]]))
        if self.cross is not None and len(self.user_table) > 1 and len(self.item_table) > 1:
            generator = torch.Generator().manual_seed(0)
            u = torch.randint(1, len(self.user_table), (pairs,), generator=generator)
            i = torch.randint(1, len(self.item_table), (pairs,), generator=generator)
            product = self.user_table[u.to(self.user_table.device)] * self.item_table[i.to(self.item_table.device)]
            self.cross_scale.copy_(product.float().pow(2).mean().sqrt().clamp(min=1e-8))

    def user_tokens(self, users: torch.Tensor) -> torch.Tensor:
        return self(self.user_table[users])

    def item_tokens(self, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """The item token; with ``interaction`` (and ``users``, one per item) it also carries ``u * i``."""
        item = self.item_table[items]
        if self.cross is None or users is None:
            return self(item)
        product = self.user_table[users] * item / self.cross_scale.to(item.dtype)
        return self.emit(self.project(item) + self.cross(product))

    def mf_logit(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor | None:
        """``w * u.i`` per (user, item) pair in float32 (``residual``), or None without ``residual``."""
        if self.residual_weight is None:
            return None
        dot = (self.user_table[users].float() * self.item_table[items].float()).sum(-1)
        return self.residual_weight.float() * dot
