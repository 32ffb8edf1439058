"""LGMRec: local and global graph learning for multimodal recommendation (Guo et al., AAAI 2024).

As in MMRec (the authors' code), over the positive train graph:

- CGE, collaborative graph embedding: LightGCN (``n_ui_layers``, layer mean) over
  user and item ID embeddings (``cf_model: mf`` skips the propagation);
- MGE, modality graph embedding, per modality m: item features projected by a free
  matrix, users as the mean of their items' projected features, ``n_mm_layers``
  propagations; local embedding = CGE + sum over m of the L2-normalised MGE;
- GHE, global hypergraph embedding, per modality m: ``hyper_num`` hyperedges, item
  memberships ``softmax((f_m W_m + g) / tau)`` (Gumbel noise g while training),
  user memberships from their items; ``n_hyper_layer`` hypergraph passes over the
  CGE item embeddings (with dropout ``1 - keep_rate`` on the memberships);
  final = local + ``alpha`` * normalise(sum over m of GHE);
- loss: BPR + ``cl_weight`` * hypergraph contrastive loss (InfoNCE between the image
  and text hyperedge embeddings of the batch users and positive items, temperature
  0.2) + ``reg_weight`` * MMRec's norm regularizer.

Modalities: MMRec's code handles exactly two (with one it fails with a NameError in
``forward``). Here each available modality adds its MGE and GHE terms; the
contrastive loss needs two and is skipped, with a warning, when only one exists;
with none LGMRec is LightGCN (CGE only), also with a warning. In eval mode the
hyperedge memberships use the noiseless softmax so that scores are deterministic.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from recbole_histllm.model.multimodal import MultimodalRecommender, sparse_tensor

logger = logging.getLogger(__name__)


def hypergraph_pass(item_hyper: torch.Tensor, user_hyper: torch.Tensor, item_emb: torch.Tensor, layers: int):
    """Messages item -> hyperedge -> item/user, ``layers`` times; returns (users, items)."""
    items, users = item_emb, None
    for _ in range(layers):
        edges = item_hyper.T @ items
        items = item_hyper @ edges
        users = user_hyper @ edges
    return users, items


class LGMRec(MultimodalRecommender):
    """LGMRec (MMRec's version), trained on positive train pairs, scored pointwise."""

    tau = 0.2

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_dim = config["embedding_size"]
        self.feat_embed_dim = config["feat_embed_dim"]
        self.cf_model = config["cf_model"]
        self.n_mm_layers = config["n_mm_layers"]
        self.n_ui_layers = config["n_ui_layers"]
        self.n_hyper_layer = config["n_hyper_layer"]
        self.hyper_num = config["hyper_num"]
        self.keep_rate = config["keep_rate"]
        self.alpha = config["alpha"]
        self.cl_weight = config["cl_weight"]
        self.reg_weight = config["reg_weight"]
        if self.cf_model not in ("lightgcn", "mf"):
            raise ValueError(f"LGMRec: cf_model must be 'lightgcn' or 'mf', got {self.cf_model!r}")

        self.adj = sparse_tensor(self.interaction_matrix(), self.device)
        self.norm_adj = self.normalized_adjacency()
        user_degree = self.node_degrees()[: self.n_users]
        self.inv_user_degree = torch.tensor(1.0 / (user_degree + 1e-7), dtype=torch.float32, device=self.device)

        self.user_embedding = nn.Embedding(self.n_users, self.embedding_dim)
        self.item_id_embedding = nn.Embedding(self.n_items, self.embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        self.drop = nn.Dropout(p=1 - self.keep_rate)

        # Per modality: frozen features (kept out of the checkpoint), a projection and hyperedge
        # weights (MMRec's order: image, text).
        self.features: dict[str, torch.Tensor] = {}
        self.projections = nn.ParameterDict()
        self.hyperedges = nn.ParameterDict()
        for name, feat in (("image", self.v_feat), ("text", self.t_feat)):
            if feat is None:
                continue
            self.features[name] = feat
            dim = feat.shape[1]
            self.projections[name] = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(dim, self.feat_embed_dim)))
            self.hyperedges[name] = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(dim, self.hyper_num)))
        if not self.modalities:
            self.no_feature_warning("LGMRec runs as its collaborative part only (LightGCN, no MGE/GHE)")
        elif len(self.modalities) == 1:
            logger.warning(
                f"LGMRec: only the {self.modalities[0]} modality is available; its local (MGE) and global (GHE) "
                f"embeddings are used, the cross-modal hypergraph contrastive loss needs two and is skipped"
            )

    # ------------------------------------------------------------------ components

    def collaborative_embeddings(self) -> torch.Tensor:
        """CGE: (n_users + n_items, d)."""
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight], 0)
        if self.cf_model == "mf":
            return ego
        layers = [ego]
        for _ in range(self.n_ui_layers):
            ego = torch.sparse.mm(self.norm_adj, ego)
            layers.append(ego)
        return torch.stack(layers, 1).mean(1)

    def modality_embeddings(self, name: str) -> torch.Tensor:
        """MGE of one modality: (n_users + n_items, feat_embed_dim)."""
        item_feats = self.features[name] @ self.projections[name]
        user_feats = torch.sparse.mm(self.adj, item_feats) * self.inv_user_degree.unsqueeze(1)
        feats = torch.cat([user_feats, item_feats], 0)
        for _ in range(self.n_mm_layers):
            feats = torch.sparse.mm(self.norm_adj, feats)
        return feats

    def memberships(self, logits: torch.Tensor) -> torch.Tensor:
        """Soft hyperedge memberships: Gumbel softmax while training, plain softmax in eval."""
        if self.training:
            return F.gumbel_softmax(logits, self.tau, dim=1, hard=False)
        return torch.softmax(logits / self.tau, dim=1)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """(user table, item table, {modality: (user, item) hyperedge embeddings})."""
        cge = self.collaborative_embeddings()
        if not self.modalities:
            users, items = torch.split(cge, [self.n_users, self.n_items])
            return users, items, {}
        local, global_ = cge, 0.0
        hyper = {}
        for name in self.features:
            local = local + F.normalize(self.modality_embeddings(name))
            item_logits = self.features[name] @ self.hyperedges[name]
            user_logits = torch.sparse.mm(self.adj, item_logits)
            item_hyper, user_hyper = self.memberships(item_logits), self.memberships(user_logits)
            u_h, i_h = hypergraph_pass(
                self.drop(item_hyper), self.drop(user_hyper), cge[self.n_users :], self.n_hyper_layer
            )
            hyper[name] = (u_h, i_h)
            global_ = global_ + torch.cat([u_h, i_h], 0)
        final = local + self.alpha * F.normalize(global_)
        users, items = torch.split(final, [self.n_users, self.n_items])
        return users, items, hyper

    def compute_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items, _ = self.forward()
        return users, items

    # ------------------------------------------------------------------ loss

    def contrastive(self, anchor: torch.Tensor, positive: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """InfoNCE summed over the batch: anchor vs its positive among all ``candidates``."""
        anchor, positive, candidates = F.normalize(anchor), F.normalize(positive), F.normalize(candidates)
        pos_logit = (anchor * positive).sum(1) / self.tau
        all_logits = anchor @ candidates.T / self.tau
        return (torch.logsumexp(all_logits, 1) - pos_logit).sum()

    def calculate_loss(self, interaction) -> torch.Tensor:
        users_all, items_all, hyper = self.forward()
        user_idx, pos_idx, neg_idx = (
            interaction[self.USER_ID], interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        )
        u, pos, neg = users_all[user_idx], items_all[pos_idx], items_all[neg_idx]
        loss = self.bpr_loss((u * pos).sum(1), (u * neg).sum(1))
        if len(hyper) == 2:
            (uv, iv), (ut, it) = hyper["image"], hyper["text"]
            hcl = self.contrastive(uv[user_idx], ut[user_idx], ut) + self.contrastive(iv[pos_idx], it[pos_idx], it)
            loss = loss + self.cl_weight * hcl
        return loss + self.reg_weight * self.norm_regularizer(u, pos, neg)
