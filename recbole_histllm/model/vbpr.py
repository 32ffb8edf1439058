"""VBPR: visual Bayesian personalized ranking (He and McAuley, AAAI 2016), as MMRec runs it.

The item representation is ``[item ID embedding ; W f_i]`` with ``f_i`` the item's
content features (text and image concatenated, as MMRec's "recommended version"),
the user representation one embedding of twice the size; the score is their dot
product. Loss: BPR on (user, positive, sampled negative) plus ``reg_weight`` times
MMRec's embedding norm regularizer. Without item features VBPR is BPR: the content
half of the item vector becomes a second ID embedding (with a logged warning).
"""

from __future__ import annotations

import torch
from torch import nn

from recbole_histllm.model.multimodal import MultimodalRecommender


class VBPR(MultimodalRecommender):
    """VBPR (MMRec's version), trained on positive train pairs, scored pointwise."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        self.reg_weight = config["reg_weight"] or 0.0
        self.u_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, 2 * self.embedding_size)))
        self.i_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, self.embedding_size)))
        features = [f for f in (self.t_feat, self.v_feat) if f is not None]
        if features:
            self.item_raw_features = torch.cat(features, -1)
            self.item_linear = nn.Linear(self.item_raw_features.shape[1], self.embedding_size)
            nn.init.xavier_normal_(self.item_linear.weight)
            nn.init.zeros_(self.item_linear.bias)
        else:
            self.no_feature_warning("VBPR runs as BPR (the content half of each item vector is a free ID embedding)")
            self.item_raw_features = None
            self.i_content = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, self.embedding_size)))

    def compute_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        content = self.item_linear(self.item_raw_features) if self.item_raw_features is not None else self.i_content
        return self.u_embedding, torch.cat([self.i_embedding, content], -1)

    def calculate_loss(self, interaction) -> torch.Tensor:
        users, items = self.compute_embeddings()
        u = users[interaction[self.USER_ID]]
        pos = items[interaction[self.ITEM_ID]]
        neg = items[interaction[self.NEG_ITEM_ID]]
        loss = self.bpr_loss((u * pos).sum(-1), (u * neg).sum(-1))
        return loss + self.reg_weight * self.norm_regularizer(u, pos, neg)
