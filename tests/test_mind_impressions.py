"""MIND by impressions: the split keeps impressions whole; MIND's impression metrics against its official
scoring (an independent numpy re-implementation of MIND's evaluate.py); the real excerpt end to end (slow)."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, SHARED_DATA
from recbole.data import create_dataset
from recbole.data.dataset import Dataset
from recbole.evaluator.collector import DataStruct
from sklearn.metrics import roc_auc_score

import recbole_histllm  # noqa: F401  (registers the metrics, installs the split)
from dataset_converters import mind
from dataset_converters.core import split_counts
from recbole_histllm import split as impression_split
from recbole_histllm.config import Config
from recbole_histllm.evaluator import ImpAUC, ImpMRR, ImpNDCG, impression_metrics


# ---- MIND's official scoring (evaluate.py of the MIND competition), re-written with numpy --------------
def mind_dcg(y_true: np.ndarray, y_score: np.ndarray, k: int) -> float:
    order = np.argsort(y_score, kind="stable")[::-1]
    y = np.take(y_true, order[:k])
    return float(np.sum((2**y - 1) / np.log2(np.arange(len(y)) + 2)))


def mind_ranking(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float, float]:
    """(MRR, nDCG@5, nDCG@10) of one impression, as MIND's evaluate.py."""
    order = np.argsort(y_score, kind="stable")[::-1]
    ranked = np.take(y_true, order)
    mrr = float(np.sum(ranked / (np.arange(len(ranked)) + 1)) / np.sum(y_true))
    ndcg = [mind_dcg(y_true, y_score, k) / mind_dcg(y_true, y_true, k) for k in (5, 10)]
    return mrr, ndcg[0], ndcg[1]


def mind_scores(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float, float, float]:
    """(AUC, MRR, nDCG@5, nDCG@10) of one impression, as MIND's evaluate.py (AUC: sklearn's, ties 1/2)."""
    return (float(roc_auc_score(y_true, y_score)), *mind_ranking(y_true, y_score))


def mind_scores_over_tie_orders(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """MIND's scores averaged over every order of the rows (each order breaks the score ties its own way)."""
    values = []
    for perm in itertools.permutations(range(len(y_true))):
        perm = np.array(perm)
        # rank by score, ties broken by the position in ``perm`` (a stable argsort of the permuted rows)
        values.append(mind_ranking(y_true[perm], y_score[perm]))
    return np.array([roc_auc_score(y_true, y_score), *np.mean(values, axis=0)])  # AUC: order-free


def reference(groups, scores, labels, tie_orders: bool) -> np.ndarray:
    per_impression = []
    for g in pd.unique(groups):
        y, s = labels[groups == g], scores[groups == g]
        if 0 < y.sum() < len(y):
            per_impression.append(mind_scores_over_tie_orders(y, s) if tie_orders else mind_scores(y, s))
    return np.mean(per_impression, axis=0)


def random_impressions(seed: int, n: int, max_size: int, levels: int | None):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size + 1, size=n)
    groups = np.repeat(rng.permutation(n) + 100, sizes)  # group ids unordered
    labels = (rng.random(len(groups)) < 0.3).astype(np.int64)
    scores = rng.integers(0, levels, size=len(groups)) / levels if levels else rng.random(len(groups))
    shuffle = rng.permutation(len(groups))  # rows of an impression not contiguous
    return groups[shuffle], scores[shuffle], labels[shuffle]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_impression_metrics_equal_mind_scoring_without_ties(seed):
    groups, scores, labels = random_impressions(seed, n=80, max_size=15, levels=None)
    values, counted, skipped = impression_metrics(groups, scores, labels, ks=(5, 10))
    expected = reference(groups, scores, labels, tie_orders=False)
    got = [values["imp_auc"], values["imp_mrr"], values["imp_ndcg@5"], values["imp_ndcg@10"]]
    assert got == pytest.approx(expected.tolist(), abs=1e-12)
    both = sum(0 < labels[groups == g].sum() < (groups == g).sum() for g in np.unique(groups))
    assert counted == both and counted + skipped == len(np.unique(groups)) and skipped > 0


@pytest.mark.parametrize("seed", [3, 4])
def test_impression_metrics_with_ties_equal_mind_scoring_averaged_over_tie_orders(seed):
    # three score levels: most impressions hold ties across labels; sizes <= 6 so every order is enumerated
    groups, scores, labels = random_impressions(seed, n=40, max_size=6, levels=3)
    values, _, _ = impression_metrics(groups, scores, labels, ks=(5, 10))
    expected = reference(groups, scores, labels, tie_orders=True)
    got = [values["imp_auc"], values["imp_mrr"], values["imp_ndcg@5"], values["imp_ndcg@10"]]
    assert got == pytest.approx(expected.tolist(), abs=1e-12)


def test_impression_metrics_without_usable_impression_are_nan():
    values, counted, skipped = impression_metrics(np.array([1, 1, 2]), np.array([0.1, 0.2, 0.3]),
                                                  np.array([1, 1, 0]))
    assert all(math.isnan(v) for v in values.values()) and (counted, skipped) == (0, 2)


def test_metric_classes_group_by_impression_then_by_user():
    groups, scores, labels = random_impressions(7, n=30, max_size=8, levels=None)
    users = groups % 7  # several impressions per user
    struct = DataStruct()
    struct.set("rec.score", torch.tensor(scores, dtype=torch.float64))
    struct.set("data.label", torch.tensor(labels, dtype=torch.float64))
    struct.set("data.user", torch.tensor(users))
    config = {"metric_decimal_place": 8, "topk": [5, 10]}
    by_user = {**ImpAUC(config).calculate_metric(struct), **ImpMRR(config).calculate_metric(struct)}
    struct.set("data.impression", torch.tensor(groups))
    got = {**ImpAUC(config).calculate_metric(struct), **ImpMRR(config).calculate_metric(struct),
           **ImpNDCG(config).calculate_metric(struct)}
    expected = reference(groups, scores, labels, tie_orders=False)
    assert list(got) == ["imp_auc", "imp_mrr", "imp_ndcg@5", "imp_ndcg@10"]
    assert list(got.values()) == pytest.approx(expected.tolist(), abs=1e-8)
    assert by_user["imp_auc"] == pytest.approx(reference(users, scores, labels, False)[0], abs=1e-8)


# ---- the split --------------------------------------------------------------------------------------
def write_mind_raw(raw: Path, n_users: int = 6, seed: int = 0) -> Path:
    """MIND-format files: every user 1-9 impressions of 2-5 candidates, some at the same second."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True)
    news = [f"N{i}\tnews\tnewsus\tHeadline {i}\tAbstract of story {i}. More.\turl\t[]\t[]" for i in range(1, 31)]
    (raw / "news.tsv").write_text("\n".join(news) + "\n", encoding="utf-8")
    lines, imp = [], 0
    for user in range(1, n_users + 1):
        for j in range(int(rng.integers(1, 10))):
            imp += 1
            items = rng.choice(np.arange(1, 31), size=int(rng.integers(2, 6)), replace=False)
            clicks = [int(rng.random() < 0.4) for _ in items]
            tokens = " ".join(f"N{i}-{c}" for i, c in zip(items, clicks))
            hour = 1 + min(j, 10)  # a user's impressions j >= 10 would share a time; here at most 9
            lines.append(f"{imp}\tU{user}\t11/{10 + user % 3}/2019 {hour}:00:00 PM\tN1 N2\t{tokens}")
    (raw / "behaviors.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return raw


def mind_dataset(root: Path, **overrides):
    mind.build_mind(write_mind_raw(root / "raw"), root / "data" / "mind")
    config = Config(model="MF", dataset="mind", config_dict={"data_path": str(root / "data"),
                                                             "show_progress": False, **overrides})
    return create_dataset(config)


def impressions_of(part) -> pd.DataFrame:
    feat = part.inter_feat
    return pd.DataFrame({"user": feat["user_id"].numpy(), "imp": feat["impression_id"].numpy(),
                         "time": feat["timestamp"].numpy()})


def test_split_keeps_impressions_whole_and_puts_each_users_last_ones_in_valid_and_test(tmp_path):
    dataset = mind_dataset(tmp_path)
    n_imp = dataset.inter_feat.groupby("user_id")["impression_id"].nunique()  # before build: a DataFrame
    parts = [impressions_of(p) for p in dataset.build()]
    sets = [set(p.imp) for p in parts]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])  # no impression in two splits
    assert sum(len(p) for p in parts) == len(dataset.inter_feat) and all(len(s) for s in sets)
    for user, total in n_imp.items():
        counts = [p[p.user == user].imp.nunique() for p in parts]
        assert counts == split_counts(int(total)), user  # RecBole's rounding, on impressions
        times = [p[p.user == user].time for p in parts]
        present = [t for t in times if len(t)]
        assert all(a.max() <= b.min() for a, b in zip(present[:-1], present[1:]))  # last impressions later


def test_global_split_by_impressions_and_ratio_from_config(tmp_path):
    eval_args = {"split": {"RS": [0.6, 0.2, 0.2]}, "group_by": None, "order": "TO", "mode": "labeled"}
    dataset = mind_dataset(tmp_path, eval_args=eval_args)
    total = dataset.inter_feat["impression_id"].nunique()
    parts = [impressions_of(p) for p in dataset.build()]
    assert [p.imp.nunique() for p in parts] == split_counts(total, (0.6, 0.2, 0.2))
    assert parts[0].time.max() <= parts[1].time.min() and parts[1].time.max() <= parts[2].time.min()
    assert not set(parts[1].imp) & set(parts[2].imp)


def test_split_rejects_an_impression_shared_by_two_users():
    units, users = np.array([1, 1, 2]), np.array([5, 6, 5])
    with pytest.raises(recbole_histllm.utils.UsageError, match="several users"):
        impression_split.split_units(units, users, [0.8, 0.1, 0.1], lambda tot, ratios: [tot, tot])


def test_datasets_without_impressions_keep_recboles_row_split(tiny_root, monkeypatch):
    config = Config(model="MF", dataset="tiny", config_dict={"data_path": str(tiny_root), "show_progress": False})
    ours = [p.inter_feat for p in create_dataset(config).build()]
    monkeypatch.setattr(Dataset, "split_by_ratio", impression_split._RECBOLE_SPLIT)
    recbole = [p.inter_feat for p in create_dataset(config).build()]
    for a, b in zip(ours, recbole):
        assert torch.equal(a["user_id"], b["user_id"]) and torch.equal(a["item_id"], b["item_id"])


def test_old_mind_folder_without_impression_column_is_one_clear_error(tmp_path):
    dataset = mind_dataset(tmp_path, load_col={"inter": ["user_id", "item_id", "label", "timestamp", "history"]})
    with pytest.raises(recbole_histllm.utils.UsageError, match="no impression_id column"):
        dataset.build()


def test_llm_trainer_scores_impressions_and_writes_their_ids(tmp_path):
    """ZeroShot (no training: the LLM trainer's scoring path alone) on the MIND fixture with the tiny LLM."""
    from conftest import FAST_LLM

    from recbole_histllm.quick_start import main

    mind.build_mind(write_mind_raw(tmp_path / "raw", n_users=8), tmp_path / "data" / "mind")
    out = tmp_path / "out"
    args = [f"--{k}={v}" for k, v in FAST_LLM.items() if v is not None]
    assert main(["--model=ZeroShot", "--dataset=mind", f"--data_path={tmp_path / 'data'}", f"--output_dir={out}",
                 *args]) == 0
    result = json.loads((out / "result.json").read_text())["test_result"]
    predictions = pd.read_csv(out / "test_predictions.csv", dtype={"impression_id": str})
    values, _, _ = impression_metrics(predictions.impression_id.to_numpy(), predictions.score.to_numpy(),
                                      predictions.label.to_numpy(), (5, 10))
    assert {k: result[k] for k in values} == pytest.approx(values, abs=1e-4)  # 4 decimals in result.json
    assert predictions.groupby("impression_id").user_id.nunique().max() == 1


# ---- the real excerpt, end to end ---------------------------------------------------------------------
MIND_RAW = SHARED_DATA / "mind" / "raw"


@pytest.mark.slow
@pytest.mark.skipif(not (MIND_RAW / "behaviors.tsv").is_file(), reason="no ../shared/data/mind/raw")
def test_real_mind_excerpt_end_to_end_with_finite_impression_metrics(tmp_path):
    summary = mind.build_mind(MIND_RAW, tmp_path / "data" / "mind")
    assert summary["rows"] > 5000 and summary["malformed_total"] == 0
    out = tmp_path / "run"
    cmd = [sys.executable, "run_recbole_histllm.py", "--model=MF", "--dataset=mind", f"--output_dir={out}",
           f"--data_path={tmp_path / 'data'}", "--show_progress=False", "--epochs=3"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=600)
    test = json.loads((out / "result.json").read_text())["test_result"]
    for key in ("auc", "uauc", "imp_auc", "imp_mrr", "imp_ndcg@5", "imp_ndcg@10"):
        assert math.isfinite(test[key]), key
    predictions = pd.read_csv(out / "test_predictions.csv", dtype=str)
    inter = pd.read_csv(tmp_path / "data" / "mind" / "mind.inter", sep="\t", dtype=str)
    inter.columns = [c.split(":")[0] for c in inter.columns]
    test_imps = set(predictions["impression_id"])
    # every row of a test impression is a test row: no impression was cut
    assert (inter["impression_id"].isin(test_imps)).sum() == len(predictions)
