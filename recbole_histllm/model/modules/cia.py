"""CIA, Collaborative Information Alignment (HistLLM Eq. 9-12): MF user and item embeddings -> LLM tokens."""

from __future__ import annotations

import torch

from recbole_histllm.model.modules.mapping import MappingModule, TokenStats


class CIA(MappingModule):
    """One mapping :math:`M_\\omega` shared by users and items (Eq. 11-12) over the MF tables :math:`\\mathbf u`,
    :math:`\\mathbf i` (Eq. 9-10) that stage 0 trains (:meth:`load`). The tables are buffers (saved with the
    checkpoint, never trained): only the mapping learns."""

    def __init__(self, n_users: int, n_items: int, dim: int, out_dim: int, hidden: int | None = None,
                 layers: int = 2, token_rms: float | TokenStats | None = None) -> None:
        super().__init__(dim, out_dim, hidden, layers, token_rms=token_rms)
        self.register_buffer("user_table", torch.zeros(n_users, dim))
        self.register_buffer("item_table", torch.zeros(n_items, dim))

    @torch.no_grad()
    def load(self, user: torch.Tensor, item: torch.Tensor) -> None:
        """Take MF's user and item tables (rows by this dataset's internal ids) and standardise the mapping's
        inputs over both (row 0, padding, left out)."""
        self.user_table.copy_(user.to(self.user_table))
        self.item_table.copy_(item.to(self.item_table))
        self.set_input_stats(torch.cat([self.user_table[1:], self.item_table[1:]]))

    def user_tokens(self, users: torch.Tensor) -> torch.Tensor:
        return self(self.user_table[users])

    def item_tokens(self, items: torch.Tensor) -> torch.Tensor:
        return self(self.item_table[items])
