"""HashMF: BinLLM's [31] hashing model, binary user/item codes learned on the labels.

MF-style embeddings are projected (one linear map for users, one for items) and squashed by
``tanh``; ``sign`` binarizes them into ``binllm_bits`` codes in {-1, +1}, with a straight-through
gradient (identity backward, as BinLLM's ``my_sign``), so BCE on the codes' inner product trains
projections and embeddings. BinLLM writes the codes into its prompt as text (Fig. 11).
The checkpoint keeps MF's raw user/item tokens, so codes align to any dataset object by raw id.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from recbole_histllm.model.mf import MF, load_mf_embeddings
from recbole_histllm.utils import InputError


class _SignSTE(torch.autograd.Function):
    """``sign`` with ties to +1 in the forward pass, the identity in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def binarize(x: torch.Tensor) -> torch.Tensor:
    """Codes in {-1, +1} from real values, straight-through gradient."""
    return _SignSTE.apply(x)


class HashMF(MF):
    """MF whose score is the inner product of binary codes ``sign(tanh(W e + b))`` (BinLLM)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.bits = int(config["binllm_bits"])
        self.user_hash = nn.Linear(self.embedding_size, self.bits)
        self.item_hash = nn.Linear(self.embedding_size, self.bits)

    def user_codes(self, user: torch.Tensor) -> torch.Tensor:
        """``(B, bits)`` codes of users in {-1, +1}."""
        return binarize(torch.tanh(self.user_hash(self.user_embedding(user))))

    def item_codes(self, item: torch.Tensor) -> torch.Tensor:
        """``(B, bits)`` codes of items in {-1, +1}."""
        return binarize(torch.tanh(self.item_hash(self.item_embedding(item))))

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Logit: the codes' inner product (Hamming similarity up to an affine map)."""
        return (self.user_codes(user) * self.item_codes(item)).sum(-1)


def load_hash_codes(checkpoint: str | os.PathLike, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """``(user_codes, item_codes)`` in {-1, +1} of a trained HashMF, rows in ``dataset``'s ids."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    if "user_hash.weight" not in state:
        raise InputError(f"{checkpoint}: not a HashMF checkpoint (no hashing layers); hash_checkpoint "
                         "must name a checkpoint of --model=HashMF")
    user, item = load_mf_embeddings(checkpoint, dataset)  # aligned by raw id; unseen ids -> zero rows
    codes = []
    for emb, kind in ((user, "user"), (item, "item")):
        z = torch.tanh(emb.float() @ state[f"{kind}_hash.weight"].float().T + state[f"{kind}_hash.bias"].float())
        codes.append(binarize(z))
    return codes[0], codes[1]
