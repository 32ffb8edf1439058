"""UAUC (CoLLM's user-averaged AUC) as a RecBole metric, plus the collector hook it needs.

UAUC = plain mean over users of the AUC computed on that user's rows; users whose rows
all carry one label are skipped (their AUC is undefined). RecBole's collector does not
pass user ids to metrics, so :func:`patch_collector` makes it collect ``data.user`` and
``data.item`` (and ``data.impression`` when the dataset has an ``IMPRESSION_FIELD``) whenever scores
are collected, and clears them after each evaluation.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from recbole.evaluator.base_metric import AbstractMetric
from recbole.evaluator.collector import Collector
from recbole.utils import EvaluatorType

from recbole_histllm.split import impression_field

logger = logging.getLogger(__name__)

# Collector keys this plugin adds; cleared after every evaluation like RecBole's own.
EXTRA_KEYS = ("data.user", "data.item", "data.impression")


def user_auc(
    users: np.ndarray, scores: np.ndarray, labels: np.ndarray
) -> tuple[float, int, int]:
    """Return (UAUC, users counted, users skipped).

    AUC per user from average ranks (ties count one half, as sklearn), mean over users
    that have both labels. NaN with a warning when no user has both.
    """
    frame = pd.DataFrame(
        {"user": np.asarray(users), "score": np.asarray(scores, dtype=np.float64),
         "label": np.asarray(labels, dtype=np.float64) > 0.5}
    )
    if frame.empty:
        warnings.warn("UAUC: no rows to evaluate; returning NaN", RuntimeWarning, stacklevel=2)
        return float("nan"), 0, 0
    frame["rank"] = frame.groupby("user")["score"].rank(method="average")
    grouped = frame.groupby("user")
    n_rows = grouped["label"].size()
    n_pos = grouped["label"].sum()
    pos_rank_sum = frame["rank"].where(frame["label"], 0.0).groupby(frame["user"]).sum()
    n_neg = n_rows - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    n_users, n_skipped = int(valid.sum()), int((~valid).sum())
    if n_users == 0:
        warnings.warn(
            f"UAUC: all {n_skipped} users have rows of a single label; UAUC is undefined (NaN)",
            RuntimeWarning,
            stacklevel=2,
        )
        return float("nan"), 0, n_skipped
    p, n, s = n_pos[valid], n_neg[valid], pos_rank_sum[valid]
    aucs = (s - p * (p + 1) / 2.0) / (p * n)
    return float(aucs.mean()), n_users, n_skipped


class UAUC(AbstractMetric):
    r"""User-averaged AUC: :math:`\frac{1}{|U'|}\sum_{u\in U'} \mathrm{AUC}_u`, where
    :math:`U'` are the users with both positive and negative rows (CoLLM's definition)."""

    metric_type = EvaluatorType.VALUE
    metric_need = ["rec.score", "data.label", "data.user"]
    smaller = False

    def calculate_metric(self, dataobject) -> dict:
        scores = dataobject.get("rec.score").squeeze(-1).numpy()
        labels = dataobject.get("data.label").squeeze(-1).numpy()
        users = dataobject.get("data.user").squeeze(-1).numpy()
        value, counted, skipped = user_auc(users, scores, labels)
        logging.getLogger().info(
            f"UAUC over {counted} users ({skipped} skipped: all rows one label)"
        )
        return {"uauc": value if np.isnan(value) else round(value, self.decimal_place)}


def register_metric(metric_cls: type) -> None:
    """Add a metric to RecBole's registry dicts in place (they are imported by reference)."""
    from recbole.config import configurator
    from recbole.evaluator import evaluator, register

    name = metric_cls.__name__.lower()
    register.metrics_dict[name] = metric_cls
    register.metric_information[name] = metric_cls.metric_need
    register.metric_types[name] = metric_cls.metric_type
    if metric_cls.smaller and name not in register.smaller_metrics:
        register.smaller_metrics.append(name)
    # Modules that did ``from ... import`` hold the same objects; assert that stays true.
    assert evaluator.metrics_dict is register.metrics_dict
    assert configurator.metric_types is register.metric_types


def patch_collector() -> None:
    """Make RecBole's Collector keep user and item ids of every scored row."""
    if getattr(Collector, "_histllm_patched", False):
        return
    batch_collect = Collector.eval_batch_collect

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        batch_collect(self, scores_tensor, interaction, positive_u, positive_i)
        if self.register.need("rec.score"):
            fields = (self.config["USER_ID_FIELD"], self.config["ITEM_ID_FIELD"],
                      impression_field(self.config, interaction.columns))
            for key, field in zip(EXTRA_KEYS, fields):
                if field is not None:
                    self.data_struct.update_tensor(key, interaction[field].to(self.device))

    data_struct = Collector.get_data_struct

    def get_data_struct(self):
        returned = data_struct(self)
        for key in EXTRA_KEYS:
            if key in self.data_struct:
                del self.data_struct[key]
        self.last_data_struct = returned
        return returned

    Collector.eval_batch_collect = eval_batch_collect
    Collector.get_data_struct = get_data_struct
    Collector._histllm_patched = True
