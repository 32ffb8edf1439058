"""Evaluation additions: UAUC registered in RecBole's metric registry."""

from recbole_histllm.evaluator.uauc import UAUC, patch_collector, register_metric, user_auc

__all__ = ["UAUC", "install", "user_auc"]


def install() -> None:
    """Register UAUC and the collector hook (idempotent)."""
    register_metric(UAUC)
    patch_collector()
