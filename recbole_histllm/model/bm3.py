"""BM3: bootstrap latent representations for multimodal recommendation (Zhou et al., WWW 2023).

As in MMRec: LightGCN over the positive train graph gives user and item
representations (the item ID embedding is added back to the propagated item
vector); each modality's features pass through a trainable feature table and a
linear projection. One shared predictor maps the "online" views; "target" views
are detached dropout copies. The loss needs no negatives:

- :math:`1 - \\cos(p(u), \\text{sg}(\\tilde i)) + 1 - \\cos(p(i), \\text{sg}(\\tilde u))` (graph
  reconstruction, user/item alignment),
- ``cl_weight`` times, for each modality m, :math:`1 - \\cos(p(m_i), \\text{sg}(\\tilde i))`
  (inter-modality alignment) + :math:`1 - \\cos(p(m_i), \\text{sg}(\\tilde m_i))` (intra-modality
  masked feature reconstruction),
- ``reg_weight`` times MMRec's norm regularizer of the (pre-predictor) tables.

Scores: dot product of the predictor outputs. Without item features only the
user/item terms remain (logged warning); with one modality its two terms remain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recbole_histllm.model.multimodal import MultimodalRecommender


def cosine_distance(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of :math:`1 - \\cos` between online rows and the detached target rows."""
    return 1.0 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


class BM3(MultimodalRecommender):
    """BM3 (MMRec's version), trained on positive train pairs, scored pointwise."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_dim = config["embedding_size"]
        self.feat_embed_dim = config["embedding_size"]  # MMRec: BM3 projects features to embedding_size
        self.n_layers = config["n_layers"]
        self.reg_weight = config["reg_weight"]
        self.cl_weight = config["cl_weight"]
        self.dropout = config["dropout"]
        self.norm_adj = self.normalized_adjacency()

        self.user_embedding = nn.Embedding(self.n_users, self.embedding_dim)
        self.item_id_embedding = nn.Embedding(self.n_items, self.embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        self.predictor = nn.Linear(self.embedding_dim, self.embedding_dim)
        nn.init.xavier_normal_(self.predictor.weight)

        # One trainable feature table + projection per modality (MMRec: from_pretrained, freeze=False).
        self.feature_tables = nn.ModuleDict()
        self.feature_projections = nn.ModuleDict()
        for name, feat in (("text", self.t_feat), ("image", self.v_feat)):
            if feat is None:
                continue
            self.feature_tables[name] = nn.Embedding.from_pretrained(feat.clone(), freeze=False)
            projection = nn.Linear(feat.shape[1], self.feat_embed_dim)
            nn.init.xavier_normal_(projection.weight)
            self.feature_projections[name] = projection
        if not self.modalities:
            self.no_feature_warning("BM3 trains on its user/item bootstrap losses only")

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """LightGCN layer mean over the positive train graph; the item ID embedding is added back."""
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight], 0)
        layers = [ego]
        for _ in range(self.n_layers):
            ego = torch.sparse.mm(self.norm_adj, ego)
            layers.append(ego)
        mean = torch.stack(layers, 1).mean(1)
        users, items = torch.split(mean, [self.n_users, self.n_items])
        return users, items + self.item_id_embedding.weight

    def compute_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self.propagate()
        return self.predictor(users), self.predictor(items)

    def calculate_loss(self, interaction) -> torch.Tensor:
        users_all, items_all = self.propagate()
        with torch.no_grad():
            users_target = F.dropout(users_all.detach(), self.dropout)
            items_target = F.dropout(items_all.detach(), self.dropout)
        user_idx, item_idx = interaction[self.USER_ID], interaction[self.ITEM_ID]
        u_online, i_online = self.predictor(users_all[user_idx]), self.predictor(items_all[item_idx])
        u_target, i_target = users_target[user_idx], items_target[item_idx]
        loss = cosine_distance(u_online, i_target) + cosine_distance(i_online, u_target)

        modal_loss = 0.0
        for name, table in self.feature_tables.items():
            feats = self.feature_projections[name](table.weight[item_idx])
            with torch.no_grad():
                feats_target = F.dropout(feats.detach(), self.dropout)
            feats_online = self.predictor(feats)
            inter_modal = cosine_distance(feats_online, i_target)  # modality vs item (alignment)
            intra_modal = cosine_distance(feats_online, feats_target)  # masked feature reconstruction
            modal_loss = modal_loss + inter_modal + intra_modal
        reg = self.norm_regularizer(users_all, items_all)
        return loss + self.reg_weight * reg + self.cl_weight * modal_loss
