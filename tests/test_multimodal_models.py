"""VBPR, BM3, LGMRec and MG on a tiny synthetic labeled dataset with item features."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.data import create_dataset, data_preparation

from recbole_histllm.config import Config
from recbole_histllm.quick_start import run
from recbole_histllm.trainer.multimodal import MultimodalTrainer, PositivePairLoader
from recbole_histllm.utils import get_model

MODELS = ["VBPR", "BM3", "LGMRec", "MG"]
N_USERS, N_ITEMS, ROWS_PER_USER, IMAGE_DIM, TEXT_DIM = 24, 60, 30, 12, 8
LOAD_COL = {"inter": ["user_id", "item_id", "label", "timestamp", "history"],
            "item": ["item_id", "image", "has_image", "text"]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_dataset(root: Path, name: str, image: bool = True, text: bool = False, seed: int = 0) -> Path:
    """<root>/<name>/<name>.inter (+ .item): each user rates distinct items, labels from a latent taste."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    taste = rng.normal(size=(N_USERS, 4))
    kind = rng.normal(size=(N_ITEMS, 4))
    lines = ["user_id:token\titem_id:token\tlabel:float\ttimestamp:float\thistory:token_seq"]
    t = 1_000_000
    for u in range(N_USERS):
        for i in rng.choice(N_ITEMS, ROWS_PER_USER, replace=False):
            t += 1
            label = int(taste[u] @ kind[i] + 0.3 * rng.normal() > 0)
            lines.append(f"u{u}\ti{i}\t{label}\t{t}\t")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    if image or text:
        header = ["item_id:token"]
        header += ["image:float_seq", "has_image:float"] if image else []
        header += ["text:float_seq"] if text else []
        rows = ["\t".join(header)]
        for i in range(N_ITEMS):
            fields = [f"i{i}"]
            if image:  # features correlated with the latent item kind (a learnable signal)
                vec = np.concatenate([kind[i], rng.normal(size=IMAGE_DIM - 4)])
                fields += [" ".join(f"{v:.5f}" for v in vec), "1"]
            if text:
                fields.append(" ".join(f"{v:.5f}" for v in rng.normal(size=TEXT_DIM)))
            rows.append("\t".join(fields))
        (folder / f"{name}.item").write_text("\n".join(rows) + "\n")
    return root


def config_dict(root: Path, **extra) -> dict:
    values = {"data_path": str(root), "load_col": LOAD_COL, "show_progress": False, "train_batch_size": 64,
              "eval_batch_size": 256, "seed": 7}
    values.update(extra)
    return values


def build(model: str, root: Path, name: str = "syn", **extra):
    config = Config(model=model, dataset=name, config_dict=config_dict(root, **extra))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    torch.manual_seed(0)
    net = get_model(model)(config, train._dataset)
    return config, net, train, valid, test


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), "syn", image=True, text=True)


@pytest.mark.parametrize("model", MODELS)
def test_loss_decreases_over_steps(model, image_root):
    config, net, train, _, _ = build(model, image_root, learning_rate=0.01)
    trainer = MultimodalTrainer(config, net)
    batch = next(iter(trainer.positive_loader(train)))
    losses = []
    for _ in range(15):
        trainer.optimizer.zero_grad()
        loss = net.calculate_loss(batch)
        loss.backward()
        trainer.optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


@pytest.mark.parametrize("model", MODELS)
def test_trains_an_epoch_and_scores_every_test_row(model, image_root, tmp_path):
    result = run(model, "syn", config_dict=config_dict(image_root, epochs=1), output_dir=tmp_path / "out")
    written = json.loads((tmp_path / "out" / "result.json").read_text())
    assert written["test_rows"] == result["test_rows"] > 0
    assert np.isfinite(result["test_result"]["auc"])
    lines = (tmp_path / "out" / "test_predictions.csv").read_text().splitlines()
    assert len(lines) == result["test_rows"] + 1
    scores = np.array([float(line.rsplit(",", 1)[1]) for line in lines[1:]])
    assert ((scores > 0) & (scores < 1)).all()  # sigmoid of the score: a probability for LogLoss


def pairs_of(interaction, uid="user_id", iid="item_id", label=None) -> set[tuple[int, int]]:
    users, items = interaction[uid].numpy(), interaction[iid].numpy()
    if label is not None:
        keep = interaction["label"].numpy() == label
        users, items = users[keep], items[keep]
    return set(zip(users.tolist(), items.tolist()))


@pytest.mark.parametrize("model", ["BM3", "LGMRec"])
def test_graph_holds_only_positive_train_rows(model, image_root):
    _, net, train, valid, test = build(model, image_root)
    adj = net.norm_adj.coalesce()
    rows, cols = adj.indices().numpy()
    upper = rows < net.n_users
    edges = set(zip(rows[upper].tolist(), (cols[upper] - net.n_users).tolist()))
    train_feat = train._dataset.inter_feat
    assert edges == pairs_of(train_feat, label=1)
    assert not edges & pairs_of(train_feat, label=0)
    held_out = pairs_of(valid._dataset.inter_feat) | pairs_of(test._dataset.inter_feat)
    assert held_out and not edges & held_out
    # symmetric: every item -> user edge mirrors a user -> item edge
    assert set(zip((rows[~upper] - net.n_users).tolist(), cols[~upper].tolist())) == {(i, u) for u, i in edges}
    if model == "LGMRec":
        users, items = net.adj.coalesce().indices().numpy()
        assert set(zip(users.tolist(), items.tolist())) == edges


def test_negatives_avoid_the_users_positives(image_root):
    config, net, train, _, _ = build("VBPR", image_root)
    loader = PositivePairLoader(config, train._dataset, batch_size=50, seed=1)
    positives = pairs_of(train._dataset.inter_feat, label=1)
    seen = set()
    for batch in loader:
        users, pos, neg = (batch[k].numpy() for k in ("user_id", "item_id", "neg_item_id"))
        seen |= set(zip(users.tolist(), pos.tolist()))
        assert not set(zip(users.tolist(), neg.tolist())) & positives
        assert (neg >= 1).all() and (neg < train._dataset.item_num).all()
    assert seen == positives and len(loader) == -(-len(positives) // 50)


@pytest.mark.parametrize("model", ["VBPR", "BM3", "LGMRec"])
def test_without_item_features_runs_with_a_warning(model, tmp_path, caplog):
    root = write_dataset(tmp_path / "data", "bare", image=False, text=False)
    with caplog.at_level(logging.WARNING):
        result = run(model, "bare", config_dict=config_dict(root, epochs=1), output_dir=tmp_path / "out")
    assert "has no item features" in caplog.text
    assert np.isfinite(result["test_result"]["auc"])


def test_lgmrec_with_one_modality_runs(tmp_path, caplog):
    """MMRec's LGMRec fails with a NameError with a single modality; here it runs and says what it skips."""
    root = write_dataset(tmp_path / "data", "imgonly", image=True, text=False)
    with caplog.at_level(logging.WARNING):
        result = run("LGMRec", "imgonly", config_dict=config_dict(root, epochs=1), output_dir=tmp_path / "out")
    assert "only the image modality" in caplog.text
    assert np.isfinite(result["test_result"]["auc"])


def test_feature_in_numerical_features_fails_before_training(image_root):
    from recbole_histllm.model.multimodal import FeatureError

    with pytest.raises(FeatureError, match="numerical_features"):
        build("VBPR", image_root, numerical_features=["image"])


def _after_one_epoch(root: Path, mirror: bool, learner: str = "sgd", lr: float = 0.05) -> dict[str, torch.Tensor]:
    config, net, train, _, _ = build("VBPR", root, mirror_gradient=mirror, learner=learner, learning_rate=lr)
    trainer = MultimodalTrainer(config, net)
    trainer._train_epoch(trainer.positive_loader(train), 0)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_mirror_gradient_changes_the_update(image_root):
    plain = _after_one_epoch(image_root, mirror=False)
    mirrored = _after_one_epoch(image_root, mirror=True)
    assert any(not torch.allclose(plain[k], mirrored[k]) for k in plain)


def test_mirror_gradient_step_is_alpha1_then_minus_alpha2(image_root):
    """With SGD, MG's first batch is theta1 = theta0 - lr a1 g(theta0), theta2 = theta1 + lr a2 g(theta1)."""
    lr, a1, a2 = 0.05, 1.3, 0.4
    config, net, train, _, _ = build("VBPR", image_root, mirror_gradient=True, learner="sgd", learning_rate=lr,
                                     alpha1=a1, alpha2=a2, beta=1000)
    trainer = MultimodalTrainer(config, net)
    loader = trainer.positive_loader(train)
    batch = next(iter(PositivePairLoader(config, train._dataset, loader.batch_size, config["seed"])))
    params = dict(net.named_parameters())
    theta0 = {k: p.detach().clone() for k, p in params.items()}
    grads0 = torch.autograd.grad(net.calculate_loss(batch), list(params.values()))
    with torch.no_grad():
        for (k, p), g in zip(params.items(), grads0):
            p.copy_(theta0[k] - lr * a1 * g)
    grads1 = torch.autograd.grad(net.calculate_loss(batch), list(params.values()))
    expected = {k: p.detach() + lr * a2 * g for (k, p), g in zip(params.items(), grads1)}
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(theta0[k])
    trainer._train_epoch([batch], 0)
    for k, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=1e-5, atol=1e-6)


def test_mg_model_is_bm3_with_mirror_gradient(image_root):
    config, net, _, _, _ = build("MG", image_root)
    from recbole_histllm.model.bm3 import BM3

    assert isinstance(net, BM3) and config["mirror_gradient"] is True
    assert MultimodalTrainer(config, net).mirror_gradient
    config, net, _, _, _ = build("BM3", image_root)
    assert not MultimodalTrainer(config, net).mirror_gradient
