"""UAUC and AUC against independent sklearn computations."""

import warnings

import numpy as np
import pytest
import torch
from recbole.evaluator.collector import DataStruct
from sklearn.metrics import roc_auc_score

import recbole_histllm  # noqa: F401  (registers UAUC)
from recbole_histllm.evaluator import UAUC, user_auc


def sklearn_uauc(users, scores, labels):
    aucs = []
    for user in np.unique(users):
        mask = users == user
        if len(np.unique(labels[mask])) == 2:
            aucs.append(roc_auc_score(labels[mask], scores[mask]))
    return float(np.mean(aucs)), len(aucs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uauc_matches_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 50, size=2000)
    labels = rng.integers(0, 2, size=2000)
    scores = rng.random(2000) + 0.3 * labels
    value, counted, skipped = user_auc(users, scores, labels)
    expected, n = sklearn_uauc(users, scores, labels)
    assert value == pytest.approx(expected, abs=1e-12)
    assert counted == n and counted + skipped == len(np.unique(users))


def test_ties_count_one_half_like_sklearn():
    users = np.array([1, 1, 1, 1, 2, 2, 2])
    scores = np.array([0.5, 0.5, 0.5, 0.2, 0.1, 0.1, 0.9])  # ties across labels
    labels = np.array([1, 0, 1, 0, 0, 1, 1])
    value, counted, _ = user_auc(users, scores, labels)
    assert counted == 2
    assert value == pytest.approx(sklearn_uauc(users, scores, labels)[0])


def test_user_with_one_label_is_skipped():
    users = np.array([1, 1, 1, 2, 2, 3, 3])
    scores = np.array([0.9, 0.1, 0.5, 0.3, 0.4, 0.2, 0.8])
    labels = np.array([1, 0, 1, 1, 1, 0, 1])  # user 2 all positive
    value, counted, skipped = user_auc(users, scores, labels)
    assert (counted, skipped) == (2, 1)
    assert value == pytest.approx((1.0 + 1.0) / 2)


def test_single_user_equals_plain_auc():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, size=100)
    scores = rng.random(100)
    value, counted, _ = user_auc(np.zeros(100, dtype=int), scores, labels)
    assert counted == 1
    assert value == pytest.approx(roc_auc_score(labels, scores))


def test_every_user_skipped_warns_and_returns_nan():
    with pytest.warns(RuntimeWarning, match="single label"):
        value, counted, skipped = user_auc(np.array([1, 2]), np.array([0.1, 0.2]), np.array([1, 0]))
    assert np.isnan(value) and (counted, skipped) == (0, 2)


def test_metric_class_reads_collected_struct():
    rng = np.random.default_rng(3)
    users, labels, scores = rng.integers(1, 20, 500), rng.integers(0, 2, 500), rng.random(500)
    struct = DataStruct()
    struct.set("rec.score", torch.tensor(scores, dtype=torch.float32))
    struct.set("data.label", torch.tensor(labels, dtype=torch.float32))
    struct.set("data.user", torch.tensor(users))
    result = UAUC({"metric_decimal_place": 4}).calculate_metric(struct)
    expected = sklearn_uauc(users, scores.astype(np.float32), labels)[0]
    assert result["uauc"] == pytest.approx(expected, abs=5e-5)


def test_uauc_is_registered_in_recbole():
    from recbole.evaluator import register

    assert register.metrics_dict["uauc"] is UAUC
    assert "data.user" in register.metric_information["uauc"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert register.metric_types["uauc"] == register.metric_types["auc"]


@pytest.mark.parametrize("seed", [0, 7])
def test_recbole_auc_matches_sklearn_with_ties(seed):
    from recbole.evaluator import register

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 3000)
    scores = np.round(rng.random(3000) + 0.2 * labels, 2)  # many ties
    struct = DataStruct()
    struct.set("rec.score", torch.tensor(scores, dtype=torch.float64))
    struct.set("data.label", torch.tensor(labels, dtype=torch.float64))
    result = register.metrics_dict["auc"]({"metric_decimal_place": 6}).calculate_metric(struct)
    assert result["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
