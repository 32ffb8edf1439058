"""Shared plumbing of the traditional multimodal baselines (VBPR, BM3, LGMRec, MG).

These models follow MMRec (github enoche/MMRec), the toolbox the HistLLM paper's
baselines come from: they learn from implicit feedback, pairwise (BPR) or
self-supervised, and a graph over the user-item interactions. Our datasets are
labeled CTR data, so the plugin trains them as designed on the *positive* train rows
only (``label`` 1) and scores every labeled valid/test row pointwise:

- item features: ``image`` and ``text`` float_seq columns of ``<name>.item``
  (config keys ``image_feature_field`` / ``text_feature_field``), loaded when the
  dataset YAML lists them in ``load_col``; items without a row get a zero vector;
- the user-item graph: built here from the positive rows of the dataset the model is
  constructed with, which is the train split (the harness passes
  ``train_data._dataset``), so no valid/test row and no label-0 row ever enters it;
- training batches: ``(user, positive item, sampled negative item)`` triples from
  :class:`recbole_histllm.trainer.multimodal.MultimodalTrainer`, which also applies
  the mirror-gradient option (``mirror_gradient: True``);
- scoring: :meth:`predict` returns :math:`\\sigma(\\mathbf u^\\top \\mathbf i)` of the
  model's final user and item representations (AUC needs only the order; the sigmoid
  gives LogLoss a probability). Full-graph representations are computed once per
  evaluation and cached while the model is in eval mode.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from recbole.utils import InputType

from recbole_histllm.model.abstract_recommender import LabeledRecommender
from recbole_histllm.utils import InputError

logger = logging.getLogger(__name__)


class FeatureError(InputError):
    """Item features that are present but unusable (reported before training)."""


def _feature_table(dataset, field: str | None, numerical: list[str]) -> torch.Tensor | None:
    """The (n_items, d) float table of one float_seq item field, or None when absent/empty."""
    if not field:
        return None
    if field in numerical:
        raise FeatureError(
            f"item feature '{field}' is listed in numerical_features: RecBole then turns it into "
            f"(value, index) pairs; remove it from numerical_features to use it as an embedding"
        )
    item_feat = dataset.get_item_feature()
    if field not in item_feat.columns:
        return None
    table = item_feat[field]
    if not torch.is_tensor(table) or table.dim() != 2:
        raise FeatureError(
            f"item feature '{field}' should be a float_seq column (one vector per item), "
            f"got {type(table).__name__} of shape {tuple(getattr(table, 'shape', ()))}"
        )
    if table.shape[1] == 0 or not bool(table.abs().sum() > 0):
        return None
    return table.float()


def positive_pairs(dataset, label_field: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) of the rows of ``dataset`` whose label is positive, duplicates removed."""
    inter = dataset.inter_feat
    users = inter[dataset.uid_field].numpy()
    items = inter[dataset.iid_field].numpy()
    if label_field in inter.columns:
        keep = inter[label_field].numpy() > 0.5
        users, items = users[keep], items[keep]
    pairs = np.unique(np.stack([users, items], 1), axis=0) if len(users) else np.zeros((0, 2), dtype=np.int64)
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)


def sparse_tensor(matrix: sp.spmatrix, device) -> torch.Tensor:
    """A scipy matrix as a torch sparse COO tensor on ``device``."""
    coo = matrix.tocoo()
    index = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    values = torch.from_numpy(coo.data.astype(np.float32))
    return torch.sparse_coo_tensor(index, values, coo.shape, check_invariants=True).coalesce().to(device)


class MultimodalRecommender(LabeledRecommender):
    """Base class: item features, positive train pairs, the user-item graph, pointwise scoring.

    Subclasses implement :meth:`compute_embeddings` (final user and item tables) and
    ``calculate_loss`` on ``(USER_ID, ITEM_ID, NEG_ITEM_ID)`` batches of positive train
    pairs. The RecBole model type is CONTEXT so that the harness evaluates on the
    labeled rows like the CTR models; the input type is PAIRWISE (what the model
    trains on).
    """

    trainer_class: ClassVar[str] = "MultimodalTrainer"  # recbole_histllm.trainer: positive pairs, mirror gradient

    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.dataset_name = config["dataset"]
        self.image_field, self.text_field = config["image_feature_field"], config["text_feature_field"]
        numerical = list(config["numerical_features"] or [])
        self.v_feat = _feature_table(dataset, self.image_field, numerical)
        self.t_feat = _feature_table(dataset, self.text_field, numerical)
        if self.v_feat is not None:
            self.v_feat = self.v_feat.to(self.device)
        if self.t_feat is not None:
            self.t_feat = self.t_feat.to(self.device)
        self.modalities = [name for name, feat in (("image", self.v_feat), ("text", self.t_feat)) if feat is not None]
        self.train_users, self.train_items = positive_pairs(dataset, self.LABEL)
        if len(self.train_users) == 0:
            raise InputError(f"{type(self).__name__}: the train split has no positive ({self.LABEL} = 1) rows")
        dims = ", ".join(
            f"{name} {tuple(feat.shape)}" for name, feat in (("image", self.v_feat), ("text", self.t_feat))
            if feat is not None
        )
        logger.info(
            f"{type(self).__name__}: item features [{dims or 'none'}]; "
            f"{len(self.train_users)} positive train pairs (graph and BPR pairs)"
        )
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ features

    def no_feature_warning(self, what: str) -> None:
        """Log that the dataset has no item features and what the model does instead."""
        logger.warning(
            f"{type(self).__name__}: dataset '{self.dataset_name}' has no item features "
            f"(no non-empty '{self.image_field}' or '{self.text_field}' float_seq column loaded from .item); "
            f"{what}. Add text embeddings with `python -m recbole_histllm.features.text --dataset={self.dataset_name}` "
            f"and list the columns in the dataset YAML's load_col."
        )

    # ------------------------------------------------------------------ graph

    def interaction_matrix(self) -> sp.csr_matrix:
        """(n_users, n_items) 0/1 matrix of the positive train pairs."""
        data = np.ones(len(self.train_users), dtype=np.float32)
        return sp.csr_matrix((data, (self.train_users, self.train_items)), shape=(self.n_users, self.n_items))

    def bipartite_adjacency(self) -> sp.csr_matrix:
        """The symmetric (users + items) adjacency matrix of the positive train graph."""
        r = self.interaction_matrix()
        return sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)

    def node_degrees(self) -> np.ndarray:
        """Degree of every user and item node in :meth:`bipartite_adjacency`."""
        return np.asarray(self.bipartite_adjacency().sum(axis=1)).ravel()

    def normalized_adjacency(self) -> torch.Tensor:
        """:math:`D^{-1/2} A D^{-1/2}` of the positive train graph (LightGCN's propagation)."""
        adj = self.bipartite_adjacency()
        inv_sqrt = np.power(self.node_degrees() + 1e-7, -0.5)
        d = sp.diags(inv_sqrt)
        return sparse_tensor(d @ adj @ d, self.device)

    # ------------------------------------------------------------------ scoring

    def compute_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (n_users, d) and (n_items, d) tables whose dot product scores a pair."""
        raise NotImplementedError

    def train(self, mode: bool = True):
        self._cache = None  # parameters may change (training) or be reloaded (best checkpoint)
        return super().train(mode)

    def _embeddings_for_scoring(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            return self.compute_embeddings()
        if self._cache is None:
            self._cache = tuple(t.detach() for t in self.compute_embeddings())
        return self._cache

    def logits(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Raw score :math:`\\mathbf u^\\top \\mathbf i` of each (user, item) pair."""
        user_table, item_table = self._embeddings_for_scoring()
        return (user_table[user] * item_table[item]).sum(-1)

    def predict(self, interaction) -> torch.Tensor:
        return torch.sigmoid(self.logits(interaction[self.USER_ID], interaction[self.ITEM_ID]))

    def full_sort_predict(self, interaction) -> torch.Tensor:
        user_table, item_table = self._embeddings_for_scoring()
        return (user_table[interaction[self.USER_ID]] @ item_table.T).view(-1)

    # ------------------------------------------------------------------ losses shared by the models

    @staticmethod
    def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
        """:math:`-\\text{mean}\\log\\sigma(s^+ - s^-)` (MMRec's BPRLoss, numerically stable)."""
        return -F.logsigmoid(pos_scores - neg_scores).mean()

    @staticmethod
    def norm_regularizer(*tables: torch.Tensor) -> torch.Tensor:
        """MMRec's EmbLoss: sum of the Frobenius norms, divided by the last table's row count."""
        total = sum(torch.linalg.vector_norm(t) for t in tables)
        return total / tables[-1].shape[0]
