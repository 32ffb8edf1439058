"""Mapping modules: project an external embedding into the LLM's input space.

VMA's :math:`\\mathbf e_{p_k} = M_\\phi(p_k)` (Eq. 3) maps a visual embedding; CIA's
:math:`\\mathbf e_u = M_\\omega(\\mathbf u)`, :math:`\\mathbf e_i = M_\\omega(\\mathbf i)` (Eq. 11-12)
map the MF user and item embeddings with one shared module.
"""

from __future__ import annotations

import torch
from torch import nn


class MappingModule(nn.Module):
    """MLP ``in_dim -> hidden -> out_dim`` (GELU), or a single linear layer when ``layers == 1``.

    ``k`` > 1 produces k tokens per input (output ``(..., k, out_dim)``); k == 1 gives ``(..., out_dim)``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int | None = None,
        layers: int = 2,
        k: int = 1,
        dropout: float = 0.0,
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if self.k > 1:
            return y.reshape(*x.shape[:-1], self.k, self.out_dim)
        return y
