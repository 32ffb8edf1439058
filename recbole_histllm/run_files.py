"""Finished runs as the table runner reads them: ``result.json``, the test predictions (plain or gzipped),
the metrics recomputed on them (sklearn AUC, UAUC, MIND's impression metrics), the rows every run of a
seed scored, and the table cells (mean ± std, best bold, second underlined). Used by :mod:`.table` and
:mod:`.cold_start`."""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.metrics import roc_auc_score

from recbole_histllm.evaluator import impression_metrics, user_auc


@functools.lru_cache(maxsize=4096)
def _read_result(path: str, stamp: int) -> dict[str, Any] | None:
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return result if isinstance(result, dict) else None


def read_result(path: Path) -> dict[str, Any] | None:
    """A ``result.json`` (parsed once per version of the file), None when unreadable."""
    try:
        return _read_result(str(path), path.stat().st_mtime_ns)
    except OSError:
        return None


@dataclass
class Row:
    """One table row: a label, a model and its overrides (plus a column value for backbone/history)."""

    label: str
    model: str
    overrides: dict[str, Any] = field(default_factory=dict)
    column: str = ""

    def run_dir(self, root: Path, extra: dict[str, Any]) -> Path:
        spec = json.dumps([self.model, self.overrides, extra], sort_keys=True, default=str)
        slug = "".join(c if c.isalnum() or c in "-_()" else "_" for c in self.label)
        return root / f"{slug}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"


PREDICTIONS = ("test_predictions.csv", "test_predictions.csv.gz")


def predictions_file(run: Path) -> Path | None:
    """A run's test predictions: ``test_predictions.csv`` or (exported) ``test_predictions.csv.gz``."""
    return next((run / name for name in PREDICTIONS if (run / name).is_file()), None)


def read_predictions(run: Path) -> pd.DataFrame:
    path = predictions_file(run)
    if path is None:
        raise FileNotFoundError(f"{run}: no {' or '.join(PREDICTIONS)}")
    frame = pd.read_csv(path, dtype={"user_id": str, "item_id": str, "impression_id": str})  # gzip: by the suffix
    return frame.set_index(["user_id", "item_id", *(["impression_id"] if "impression_id" in frame else [])])


def metrics_on(frame: pd.DataFrame) -> dict[str, float]:
    """AUC and UAUC; with an ``impression_id`` column (MIND) also MIND's impression metrics
    (:data:`IMPRESSION_METRICS`)."""
    labels = frame["label"].to_numpy() > 0.5
    auc = float(roc_auc_score(labels, frame["score"])) if 0 < labels.sum() < len(labels) else math.nan
    users = frame.index.get_level_values("user_id").to_numpy()
    uauc, counted, _ = user_auc(users, frame["score"].to_numpy(), labels)
    result = {"auc": auc, "uauc": uauc, "uauc_users": counted}
    if "impression_id" in frame.index.names:
        groups = frame.index.get_level_values("impression_id").to_numpy()
        result.update(impression_metrics(groups, frame["score"].to_numpy(), labels, (5, 10))[0])
    return result


def common_rows(frames: dict[tuple[int, int], pd.DataFrame]) -> dict[int, pd.Index]:
    """Per seed, the (user_id, item_id) rows that every run of that seed scored."""
    common: dict[int, pd.Index] = {}
    for (_, seed), frame in frames.items():
        common[seed] = frame.index if seed not in common else common[seed].intersection(frame.index)
    return common


def cell(mean: float, std: float, rank: int) -> str:
    text = "n/a" if math.isnan(mean) else f"{mean:.4f}" + ("" if math.isnan(std) else f" ± {std:.4f}")
    return f"**{text}**" if rank == 0 else f"<u>{text}</u>" if rank == 1 else text


def ranks(values: pd.Series) -> list[int]:
    order = sorted({v for v in values if not math.isnan(v)}, reverse=True)
    return [order.index(v) if not math.isnan(v) else -1 for v in values]
