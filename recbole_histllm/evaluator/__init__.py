"""Evaluation additions: UAUC and MIND's impression metrics registered in RecBole's metric registry."""

from recbole_histllm.evaluator.impression import ImpAUC, ImpMRR, ImpNDCG, impression_metrics
from recbole_histllm.evaluator.uauc import UAUC, patch_collector, register_metric, user_auc

__all__ = ["UAUC", "ImpAUC", "ImpMRR", "ImpNDCG", "impression_metrics", "install", "user_auc"]


def install() -> None:
    """Register UAUC, the impression metrics and the collector hook (idempotent)."""
    for metric in (UAUC, ImpAUC, ImpMRR, ImpNDCG):
        register_metric(metric)
    patch_collector()
