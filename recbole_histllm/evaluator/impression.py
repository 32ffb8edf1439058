"""MIND's impression-level metrics as RecBole metrics: per-impression AUC, MRR and nDCG@k, averaged.

MIND's official scoring (``evaluate.py`` of the MIND competition) computes, for every impression, sklearn's
``roc_auc_score``, ``mrr = sum(rel_i / rank_i) / sum(rel)`` and ``nDCG@k`` with gains ``2^rel - 1`` and
discounts ``log2(rank + 1)``, and averages each over impressions. Here:

* rows are grouped by the dataset's ``IMPRESSION_FIELD`` (the collector keeps it as ``data.impression``);
  a dataset without one groups by user (then these are per-user MRR / nDCG, logged as such);
* impressions with one label only are skipped for all four metrics (MIND's AUC is undefined there and
  the official data has none), so the four averages are over the same impressions (their count is logged);
* ties: MIND's scorer ranks tied scores in ``np.argsort``'s arbitrary order; here every metric is its
  expectation over a uniformly random order of the tied rows (AUC counts a tie one half, as sklearn;
  MRR and DCG average the reciprocal rank and the discount over the ranks the tie block occupies),
  so the value does not depend on the row order. Without ties it equals MIND's numbers exactly.

Keys: ``imp_auc``, ``imp_mrr``, ``imp_ndcg@k`` for each ``k`` of the config's ``topk`` (MIND: 5, 10).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from recbole.evaluator.base_metric import AbstractMetric
from recbole.utils import EvaluatorType

from recbole_histllm.evaluator.uauc import user_auc
from recbole_histllm.utils import config_value

GROUP_KEY = "data.impression"


def _cumulative(values: np.ndarray) -> np.ndarray:
    return np.r_[0.0, np.cumsum(values)]


def impression_metrics(groups: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                       ks: Sequence[int] = (5, 10)) -> tuple[dict[str, float], int, int]:
    """``({imp_auc, imp_mrr, imp_ndcg@k...}, impressions counted, impressions skipped)``.

    Each metric is computed per group (impression) and averaged over the groups that hold both labels;
    NaN everywhere when none does. Ties are averaged over the ranks they share (module docstring).
    """
    frame = pd.DataFrame({"g": np.asarray(groups), "s": np.asarray(scores, dtype=np.float64),
                          "y": (np.asarray(labels, dtype=np.float64) > 0.5).astype(np.float64)})
    keys = ["imp_auc", "imp_mrr", *(f"imp_ndcg@{k}" for k in ks)]
    size = frame.groupby("g")["y"].transform("size").to_numpy()
    pos = frame.groupby("g")["y"].transform("sum").to_numpy()
    frame = frame[(pos > 0) & (pos < size)]
    n_groups = int(pd.unique(np.asarray(groups)).size)
    if frame.empty:
        return dict.fromkeys(keys, float("nan")), 0, n_groups
    by_score = frame.groupby("g")["s"]
    above = (by_score.rank(method="min", ascending=False).to_numpy() - 1).astype(np.int64)  # rows scored higher
    tied = (by_score.rank(method="max", ascending=False).to_numpy()).astype(np.int64) - above  # block size
    end = above + tied
    ranks = np.arange(1, int(end.max()) + 1, dtype=np.float64)
    harmonic = _cumulative(1.0 / ranks)
    discount = _cumulative(1.0 / np.log2(ranks + 1.0))
    y = frame["y"].to_numpy()
    per_row = {"imp_mrr": y * (harmonic[end] - harmonic[above]) / tied}
    for k in ks:
        per_row[f"imp_ndcg@{k}"] = y * (discount[np.minimum(end, k)] - discount[np.minimum(above, k)]) / tied
    sums = pd.DataFrame(per_row).groupby(frame["g"].to_numpy()).sum()
    n_pos = frame.groupby("g")["y"].sum().reindex(sums.index).to_numpy()
    result = {"imp_mrr": float((sums["imp_mrr"].to_numpy() / n_pos).mean())}
    for k in ks:
        ideal = discount[np.minimum(n_pos, k).astype(np.int64)]
        result[f"imp_ndcg@{k}"] = float((sums[f"imp_ndcg@{k}"].to_numpy() / ideal).mean())
    auc, counted, _ = user_auc(frame["g"].to_numpy(), frame["s"].to_numpy(), y)
    return {"imp_auc": auc, **result}, counted, n_groups - counted


class _ImpressionMetric(AbstractMetric):
    """Shared reading of the collected rows; subclasses pick their keys from :func:`impression_metrics`."""

    metric_type = EvaluatorType.VALUE
    metric_need = ["rec.score", "data.label", "data.user"]
    smaller = False

    def __init__(self, config) -> None:
        super().__init__(config)
        topk = config_value(config, "topk")
        topk = topk if topk is not None else [5, 10]
        self.topk = [int(k) for k in (topk if isinstance(topk, (list, tuple)) else [topk])]

    def compute(self, dataobject) -> dict[str, float]:
        scores = dataobject.get("rec.score").squeeze(-1).numpy()
        labels = dataobject.get("data.label").squeeze(-1).numpy()
        by = GROUP_KEY if GROUP_KEY in dataobject else "data.user"
        groups = dataobject.get(by).squeeze(-1).numpy()
        values, counted, skipped = impression_metrics(groups, scores, labels, self.topk)
        unit = "impressions" if by == GROUP_KEY else "users (no IMPRESSION_FIELD)"
        logging.getLogger().info(f"{type(self).__name__} over {counted} {unit} ({skipped} skipped: one label)")
        return {k: v if np.isnan(v) else round(v, self.decimal_place) for k, v in values.items()}


class ImpAUC(_ImpressionMetric):
    """MIND's "AUC": AUC per impression, averaged over impressions (``imp_auc``)."""

    def calculate_metric(self, dataobject) -> dict:
        return {"imp_auc": self.compute(dataobject)["imp_auc"]}


class ImpMRR(_ImpressionMetric):
    """MIND's MRR: ``sum(rel / rank) / sum(rel)`` per impression, averaged (``imp_mrr``)."""

    def calculate_metric(self, dataobject) -> dict:
        return {"imp_mrr": self.compute(dataobject)["imp_mrr"]}


class ImpNDCG(_ImpressionMetric):
    """MIND's nDCG@k per impression, averaged, for each ``k`` of ``topk`` (``imp_ndcg@5``, ``imp_ndcg@10``)."""

    def calculate_metric(self, dataobject) -> dict:
        values = self.compute(dataobject)
        return {k: v for k, v in values.items() if k.startswith("imp_ndcg@")}
