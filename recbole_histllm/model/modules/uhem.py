"""UHEM, the User History Encoding Module (Sec. 3.2.3, Eq. 4-8).

For each history item k: its description token embeddings :math:`\\mathbf e_{d_k}` (the LLM's
own input embedding table over the tokenized description, Eq. 4-5) concatenated with its
projected image token :math:`\\mathbf e_{p_k}` (Eq. 6); the items of a user concatenated
oldest first (Eq. 7); a history encoder :math:`H_\\beta` compresses the sequence into ONE token
:math:`\\mathbf h` (Eq. 8): a GRU's last state or a Transformer's CLS output.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from recbole_histllm.model.modules.mapping import TokenScale, TokenStats


class UHEM(nn.Module):
    """Compress a batch of multimodal histories into one token each.

    Args:
        dim: the LLM hidden size (input token size and output size, :math:`d_3`).
        encoder: ``"gru"`` (last hidden state) or ``"transformer"`` (CLS output).
        layers, heads, dropout: encoder shape (heads for the Transformer only).
        token_rms: scale the output token to the LLM's token-embedding RMS (:class:`TokenScale`);
            None keeps the plain linear output.
    """

    def __init__(self, dim: int, encoder: str = "gru", layers: int = 1, heads: int = 4, dropout: float = 0.0,
                 token_rms: float | TokenStats | None = None) -> None:
        super().__init__()
        if encoder not in ("gru", "transformer"):
            raise ValueError(f"history_encoder must be 'gru' or 'transformer', got {encoder!r}")
        self.encoder_type = encoder
        self.in_norm = nn.LayerNorm(dim)
        # The single input of a user without history (the sequence must not be empty).
        self.empty = nn.Parameter(torch.zeros(dim))
        if encoder == "gru":
            self.encoder = nn.GRU(dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0)
        else:
            self.cls = nn.Parameter(torch.randn(dim) * 0.02)
            layer = nn.TransformerEncoderLayer(
                dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, dim)
        self.out_scale = TokenScale(dim, token_rms) if token_rms is not None else None

    def set_descriptions(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        """Every item's tokenized description (:func:`~recbole_histllm.llm.encode_item_texts`, Eq. 4), rows by
        internal item id: what :meth:`encode` looks history items up in (buffers, not weights)."""
        self.register_buffer("desc_ids", ids, persistent=False)
        self.register_buffer("desc_mask", mask.bool(), persistent=False)

    def encode(self, hist_ids: torch.Tensor, hist_mask: torch.Tensor, embedding: nn.Embedding,
               image_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """One token per row from history item ids ``(B, n)``: their description tokens through the LLM's
        own frozen input ``embedding`` (Eq. 5), with their image tokens ``(B, n, d)`` when given (Eq. 6)."""
        desc = embedding(self.desc_ids[hist_ids]).detach().to(self.in_norm.weight.dtype)  # bf16 table, fp32 UHEM
        return self(desc, self.desc_mask[hist_ids], image_tokens, hist_mask)

    @staticmethod
    def assemble(
        desc_embeds: torch.Tensor, desc_mask: torch.Tensor, image_tokens: torch.Tensor | None, item_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 6-7: per item ``[e_dk ; e_pk]``, items concatenated, padding squeezed out.

        ``desc_embeds (B, n, L, d)``, ``desc_mask (B, n, L)``, ``image_tokens (B, n, d)`` or None,
        ``item_mask (B, n)``. Returns ``seq (B, T, d)`` with each row's real tokens first, in order,
        and ``lengths (B,)``.
        """
        bsz, n, length, dim = desc_embeds.shape
        tokens, mask = desc_embeds, desc_mask & item_mask.unsqueeze(-1)
        if image_tokens is not None:
            tokens = torch.cat([tokens, image_tokens.unsqueeze(2).to(tokens.dtype)], dim=2)
            mask = torch.cat([mask, item_mask.unsqueeze(-1)], dim=2)
        tokens = tokens.reshape(bsz, -1, dim)
        mask = mask.reshape(bsz, -1)
        lengths = mask.sum(1)
        width = max(int(lengths.max()) if bsz else 0, 1)
        # Stable sort puts the real tokens first without changing their order.
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
        seq = tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, dim))
        seq = seq * (torch.arange(width, device=seq.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        return seq, lengths

    def forward(
        self,
        desc_embeds: torch.Tensor,
        desc_mask: torch.Tensor,
        image_tokens: torch.Tensor | None,
        item_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Return ``h`` of shape ``(B, d)`` (Eq. 8), one token per user."""
        seq, lengths = self.assemble(desc_embeds, desc_mask, image_tokens, item_mask)
        seq = self.in_norm(seq)
        empty = lengths == 0
        if empty.any():
            seq = seq.clone()
            seq[empty, 0] = self.empty.to(seq.dtype)
            lengths = lengths.clamp(min=1)
        if self.encoder_type == "gru":
            packed = pack_padded_sequence(seq, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, last = self.encoder(packed)
            h = last[-1]
        else:
            bsz = seq.shape[0]
            seq = torch.cat([self.cls.to(seq.dtype).expand(bsz, 1, -1), seq], dim=1)
            pad = torch.arange(seq.shape[1], device=seq.device)[None, :] > lengths[:, None]
            h = self.encoder(seq, src_key_padding_mask=pad)[:, 0]
        h = self.out(h)
        return self.out_scale(h) if self.out_scale is not None else h
