"""MF: matrix factorisation trained pointwise with BCE on the labels.

The collaborative model of CoLLM [32] and HistLLM's CIA module (Sec. 3.2.4, Eq. 9-10):
:math:`\\hat y_{ui} = \\sigma(\\mathbf u^\\top \\mathbf i)`. Its checkpoint stores the raw user
and item tokens beside the weights, so :func:`load_mf_embeddings` can align it to another
dataset object (another model, another run) by raw id, never by internal index.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from recbole.utils import InputType
from torch import nn

from recbole_histllm.model.abstract_recommender import LabeledRecommender
from recbole_histllm.utils import InputError

logger = logging.getLogger(__name__)


class MF(LabeledRecommender):
    """Matrix factorisation with BCE on the labels, scored pointwise (a context-type model)."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        self.reg_weight = config["reg_weight"] or 0.0
        self.user_embedding = nn.Embedding(self.n_users, self.embedding_size)
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size)
        nn.init.normal_(self.user_embedding.weight, std=config["init_std"])
        nn.init.normal_(self.item_embedding.weight, std=config["init_std"])
        self.loss = nn.BCEWithLogitsLoss()
        # Raw ids, saved with the checkpoint (RecBole's other_parameter) for alignment.
        self.user_tokens = np.asarray(dataset.field2id_token[self.USER_ID])
        self.item_tokens = np.asarray(dataset.field2id_token[self.ITEM_ID])
        self.other_parameter_name = ["user_tokens", "item_tokens"]

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Logit :math:`\\mathbf u^\\top \\mathbf i` for each (user, item) pair."""
        return (self.user_embedding(user) * self.item_embedding(item)).sum(-1)

    def calculate_loss(self, interaction) -> torch.Tensor:
        user, item = interaction[self.USER_ID], interaction[self.ITEM_ID]
        loss = self.loss(self.forward(user, item), interaction[self.LABEL].float())
        if self.reg_weight:
            reg = self.user_embedding(user).pow(2).sum(-1) + self.item_embedding(item).pow(2).sum(-1)
            loss = loss + self.reg_weight * reg.mean()
        return loss

    def predict(self, interaction) -> torch.Tensor:
        return torch.sigmoid(self.forward(interaction[self.USER_ID], interaction[self.ITEM_ID]))


def load_mf_embeddings(checkpoint: str | os.PathLike, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a trained MF checkpoint and return (user, item) embedding tables for ``dataset``.

    Rows follow ``dataset``'s internal ids; they are matched to the checkpoint by raw
    token. Users or items the checkpoint never saw get zero rows (counted in a warning).
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    weights, other = state["state_dict"], state.get("other_parameter") or {}
    if "user_tokens" not in other:
        raise InputError(f"config key `mf_checkpoint`: {checkpoint} is not an MF checkpoint of recbole_histllm "
                         "(no user_tokens)")
    tables = []
    for kind, field in (("user", dataset.uid_field), ("item", dataset.iid_field)):
        source = weights[f"{kind}_embedding.weight"]
        index = {token: row for row, token in enumerate(other[f"{kind}_tokens"])}
        targets = dataset.field2id_token[field]
        table = torch.zeros(len(targets), source.shape[1], dtype=source.dtype)
        rows = [(i, index.get(token)) for i, token in enumerate(targets) if token != "[PAD]"]
        found = [(i, j) for i, j in rows if j is not None]
        if found:
            dst, src = zip(*found)
            table[list(dst)] = source[list(src)]
        missing = len(rows) - len(found)
        if rows and not found:
            raise InputError(f"MF checkpoint {checkpoint}: none of this dataset's {len(rows)} {kind}s is in it "
                             "(a checkpoint of another dataset?)")
        if missing:
            logger.warning(f"MF checkpoint {checkpoint}: {missing} of {len(rows)} {kind}s unseen, zero embeddings")
        tables.append(table)
    return tables[0], tables[1]
