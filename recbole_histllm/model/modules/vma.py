"""VMA, Visual Modality Alignment (HistLLM Eq. 2-3): an item's image embedding -> one LLM input token."""

from __future__ import annotations

import torch

from recbole_histllm.model.modules.mapping import MappingModule, TokenStats


class VMA(MappingModule):
    """:math:`\\mathbf e_{p_k} = M_\\phi(p_k)` over the items' image table (rows by internal item id, row 0
    padding; an item without an image has a zero row). Its inputs are standardised over that table when
    ``token_rms`` is set (:class:`MappingModule`)."""

    def __init__(self, image_table: torch.Tensor, out_dim: int, hidden: int | None = None, layers: int = 2,
                 token_rms: float | TokenStats | None = None) -> None:
        super().__init__(image_table.shape[1], out_dim, hidden, layers, token_rms=token_rms)
        self.register_buffer("table", image_table, persistent=False)  # a dataset feature, not a weight
        self.set_input_stats(image_table)

    def tokens(self, items: torch.Tensor) -> torch.Tensor:
        """Image tokens ``(*items.shape, out_dim)`` of internal item ids of any shape."""
        return self(self.table[items])
