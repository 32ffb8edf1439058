"""What makes the LLM stages learn at small budgets: token-scaled mapping modules, the optimiser's
parameter groups and schedule, and a stage-1 LoRA shared between runs (``lora_checkpoint``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from recbole.trainer import Trainer
from test_histllm import build, lora_tensors

from recbole_histllm.model.modules import MappingModule, TokenScale, TokenStats
from recbole_histllm.trainer import LLMTrainer
from recbole_histllm.utils import UsageError


def test_token_scale_starts_at_the_token_rms_and_learns():
    scale = TokenScale(16, rms=0.136)
    y = scale(torch.randn(5, 16) * 40)
    assert torch.allclose(y.pow(2).mean(-1).sqrt(), torch.full((5,), 0.136), atol=1e-4)
    assert scale.gain.requires_grad


def test_token_moments_start_tokens_at_the_tables_mean_and_spread():
    torch.manual_seed(0)
    table = torch.randn(5000, 16) * torch.linspace(0.05, 0.3, 16) + torch.linspace(-0.5, 0.5, 16)
    stats = TokenStats(float(table.pow(2).mean().sqrt()), table.mean(0), table.std(0))
    scale = TokenScale(16, stats)
    with torch.no_grad():
        y = scale(torch.randn(20000, 16))  # a standard input: its RMS-normalised form has unit spread per dimension
    assert torch.allclose(y.mean(0), table.mean(0), atol=0.01)
    assert torch.allclose(y.std(0), table.std(0), rtol=0.05)
    assert y.pow(2).mean().sqrt() == pytest.approx(stats.rms, rel=0.05)  # where real rows are, not just their RMS
    assert scale.gain.requires_grad and scale.bias.requires_grad
    assert TokenScale(16, 0.136).bias is None  # the RMS alone: no bias, as before


def test_token_moments_key_gives_every_mapping_the_embedding_moments(tiny_root, tmp_path):
    _, model, _, _, _ = build(tiny_root, tmp_path)  # HistLLM's default
    weight = model.llm.get_input_embeddings().weight.detach().float()
    for scale in (model.cia.scale, model.vma.scale, model.uhem.out_scale):
        assert torch.allclose(scale.bias, weight.mean(0)) and torch.allclose(scale.gain, weight.std(0))
    _, plain, _, _, _ = build(tiny_root, tmp_path / "plain", token_moments=False)
    assert plain.cia.scale.bias is None and plain.uhem.out_scale.bias is None


def test_mapping_standardises_inputs_so_small_embeddings_give_distinct_tokens():
    torch.manual_seed(0)
    table = torch.randn(200, 32) * 0.01 + 0.05  # MF-like: small, with a shared offset
    plain = MappingModule(32, 64)
    scaled = MappingModule(32, 64, token_rms=0.136)
    scaled.set_input_stats(table)
    with torch.no_grad():
        spread_plain = plain(table).std(0).mean()
        spread_scaled = scaled(table).std(0).mean()
        rms = scaled(table).pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, 0.136), atol=1e-3)
    assert spread_plain < 0.02 < 0.05 < spread_scaled  # users told apart only after standardising


def test_cia_tokens_follow_the_loaded_mf_embeddings(tiny_root, tmp_path):
    _, model, _, _, _ = build(tiny_root, tmp_path)
    user = torch.randn(model.n_users, 256) * 0.01
    item = torch.randn(model.n_items, 256) * 0.01
    model.set_collaborative_embeddings(user, item)
    stats = torch.cat([user[1:], item[1:]])
    assert torch.allclose(model.cia.in_mean, stats.mean(0)) and torch.allclose(model.cia.in_std, stats.std(0))
    with torch.no_grad():
        tokens = model.cia.user_tokens(torch.arange(1, model.n_users))
    assert torch.equal(model.cia.user_table, user) and torch.equal(model.cia.item_table, item)
    rms = model.llm.get_input_embeddings().weight.pow(2).mean().sqrt()
    assert torch.allclose(tokens.pow(2).mean(-1).sqrt().mean(), rms, rtol=1e-3)
    assert tokens.std(0).mean() > 0.3 * rms


def test_cia_interaction_starts_as_the_paper_token_then_carries_the_pairs_mf_product(tiny_root, tmp_path):
    config, model, _, _, _ = build(tiny_root, tmp_path)  # HistLLM's default since the three-seed tables
    assert config["cia_interaction"] and config["mf_holdout"]
    _, plain, _, _, _ = build(tiny_root, tmp_path / "plain", cia_interaction=False)
    assert plain.cia.cross is None
    torch.manual_seed(0)
    user, item = torch.randn(model.n_users, 256) * 0.05, torch.randn(model.n_items, 256) * 0.05
    model.set_collaborative_embeddings(user, item)
    generator = torch.Generator().manual_seed(0)  # the scale: the product's RMS over the same sampled pairs
    u = torch.randint(1, model.n_users, (8192,), generator=generator)
    i = torch.randint(1, model.n_items, (8192,), generator=generator)
    assert torch.allclose(model.cia.cross_scale, (user[u] * item[i]).pow(2).mean().sqrt())
    items, users_a, users_b = torch.tensor([1, 2, 3]), torch.tensor([1, 1, 1]), torch.tensor([2, 3, 4])
    with torch.no_grad():
        start = model.cia.item_tokens(items, users_a)
        assert torch.equal(start, model.cia(item[items]))  # zero branch: the paper's M(i)
        assert torch.equal(start, model.cia.item_tokens(items, users_b))
    model.set_stage(2)
    assert model.cia.cross.weight.requires_grad and "cia.cross.weight" in model.checkpoint_state()
    model.cia.item_tokens(items, users_a).pow(2).sum().backward()
    assert model.cia.cross.weight.grad.abs().sum() > 0  # the zero branch gets a gradient, so it learns
    with torch.no_grad():
        model.cia.cross.weight.normal_()
        assert not torch.allclose(model.cia.item_tokens(items, users_a), model.cia.item_tokens(items, users_b))


def test_cia_residual_adds_the_weighted_mf_logit_to_yes_and_learns_its_weight(tiny_root, tmp_path):
    _, model, train, _, _ = build(tiny_root, tmp_path, cia_residual=True)
    _, plain, _, _, _ = build(tiny_root, tmp_path / "plain")  # the default: off
    assert plain.cia.residual_weight is None and "cia.residual_weight" not in plain.checkpoint_state()
    torch.manual_seed(0)
    user, item = torch.randn(model.n_users, 256) * 0.1, torch.randn(model.n_items, 256) * 0.1
    model.set_collaborative_embeddings(user, item)
    inter = train._dataset[torch.arange(6)]
    dot = (user[inter["user_id"]] * item[inter["item_id"]]).sum(-1)
    model.eval()
    with torch.no_grad():
        with_mf = model.forward(inter)
        model.cia.residual_weight.fill_(0.0)
        without = model.forward(inter)  # weight 0: the LLM's logits alone
        model.cia.residual_weight.fill_(1.0)
    assert torch.allclose(with_mf[:, 0] - without[:, 0], dot, atol=1e-5)
    assert torch.equal(with_mf[:, 1], without[:, 1])  # only the Yes logit moves
    model.train()
    model.set_stage(2)
    assert model.cia.residual_weight.requires_grad and "cia.residual_weight" in model.checkpoint_state()
    model.calculate_loss(inter).backward()
    assert model.cia.residual_weight.grad.abs() > 0
    model.set_stage(1)  # the TALLRec prompt has no CIA slot: no MF logit there (stage 1 stays TALLRec's)
    model.eval()
    with torch.no_grad():
        stage1 = model.forward(inter)
        model.cia.residual_weight.fill_(0.0)
        assert torch.equal(stage1, model.forward(inter))


def test_token_scale_off_keeps_the_plain_modules(tiny_root, tmp_path):
    _, model, _, _, _ = build(tiny_root, tmp_path, token_scale=False)
    assert model.cia.scale is None and model.vma.scale is None and model.uhem.out_scale is None


def test_module_learning_rate_and_warmup_cosine_schedule(tiny_root, tmp_path):
    config, model, _, _, _ = build(tiny_root, tmp_path, stage2_learning_rate=1e-3, module_learning_rate=5e-3,
                                   lr_schedule="cosine", warmup_ratio=0.2)
    trainer = LLMTrainer(config, model)
    model.set_stage(2)
    optimizer = trainer._optimizer("stage2")
    assert [g["lr"] for g in optimizer.param_groups] == [5e-3]  # stage 2: modules only
    model.set_stage(1)
    assert [g["lr"] for g in trainer._optimizer("stage1").param_groups] == [1e-3]  # stage 1: LoRA only
    scheduler = trainer._scheduler(optimizer, total_steps=10)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] < rates[1] < rates[2] == pytest.approx(5e-3)  # 2 warmup steps, then the peak
    assert all(a >= b for a, b in zip(rates[2:], rates[3:])) and rates[-1] < 0.1 * 5e-3
    assert rates[5] == pytest.approx(5e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 8)))


def test_lora_checkpoint_skips_stage1_with_another_runs_lora(tiny_root, tmp_path):
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    config, model, train, valid, _ = build(tiny_root, first_dir, stage2_epochs=1)
    LLMTrainer(config, model).fit(train, valid)
    trained = lora_tensors(model)
    stage1 = first_dir / "HistLLM-stage1.pth"
    config, model, train, valid, _ = build(tiny_root, second_dir, stage2_epochs=1, lora_checkpoint=str(stage1),
                                           mf_checkpoint=str(first_dir / "MF-stage0.pth"))
    trainer = LLMTrainer(config, model)
    calls = []
    original = trainer.valid_metrics
    trainer.valid_metrics = lambda *a, **k: calls.append(k.get("desc")) or original(*a, **k)
    trainer.fit(train, valid)
    assert calls == ["stage2 valid"]  # stage 1 was not trained again
    summary = trainer.stage_summaries["stage1"]
    assert summary["source"] == "given" and summary["checkpoint"] == str(stage1) and "best_valid_auc" in summary
    assert all(torch.equal(v, lora_tensors(model)[k]) for k, v in trained.items())
    assert not (second_dir / "HistLLM-stage1.pth").exists()


def test_mf_holdout_fits_stage0_without_the_rows_stage2_trains_on(tiny_root, tmp_path, monkeypatch):
    config, model, train, valid, _ = build(tiny_root, tmp_path, stage1_epochs=0, stage2_epochs=2,
                                           stage2_train_rows=6, mf_holdout=True)
    trainer = LLMTrainer(config, model)
    n = len(train._dataset)
    trained_rows, fitted = [], []
    original_order = trainer._epoch_order
    monkeypatch.setattr(trainer, "_epoch_order",
                        lambda *a: trained_rows.append(original_order(*a)) or trained_rows[-1])
    original_fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit",
                        lambda self, data, *a, **k: fitted.append(data) or original_fit(self, data, *a, **k))
    held = trainer.holdout_rows(n)
    trained_rows.clear()
    trainer.fit(train, valid)
    stage2 = np.unique(torch.cat(trained_rows[-2:]).numpy())  # the two epochs stage 2 trained
    assert np.array_equal(held, stage2) and 6 <= len(held) <= 12
    (data,) = fitted  # stage 0 saw every other train row and none of these
    assert len(data._dataset) == n - len(held) == n - trainer.stage_summaries["stage0"]["holdout_rows"]
    kept = set(zip(data._dataset.inter_feat["user_id"].tolist(), data._dataset.inter_feat["item_id"].tolist()))
    rows = train._dataset.inter_feat
    pairs = set(zip(rows["user_id"][torch.from_numpy(held)].tolist(), rows["item_id"][torch.from_numpy(held)].tolist()))
    assert not kept & pairs
    config, model, train, valid, _ = build(tiny_root, tmp_path / "all", stage2_train_rows=None, mf_holdout=True)
    with pytest.raises(UsageError, match="mf_holdout"):
        LLMTrainer(config, model).fit(train, valid)


def test_repeat_rows_retrains_the_first_epochs_rows_so_the_holdout_is_one_epoch(tiny_root, tmp_path):
    config, model, train, _, _ = build(tiny_root, tmp_path, stage1_epochs=0, stage2_epochs=3, stage2_train_rows=6,
                                       mf_holdout=True, stage2_repeat_rows=True)
    trainer = LLMTrainer(config, model)
    n = len(train._dataset)
    orders = [trainer._epoch_order(2, epoch, n) for epoch in range(3)]
    assert all(sorted(o.tolist()) == sorted(orders[0].tolist()) for o in orders) and len(set(orders[0].tolist())) == 6
    assert any(not torch.equal(orders[0], o) for o in orders[1:])  # reshuffled, not replayed
    assert np.array_equal(trainer.holdout_rows(n), np.sort(orders[0].numpy()))
    config["stage2_repeat_rows"] = False  # fresh rows: the first epoch's draw, then other rows
    fresh = [trainer._epoch_order(2, epoch, n) for epoch in range(3)]
    assert torch.equal(fresh[0], orders[0]) and len(trainer.holdout_rows(n)) > 6


def test_a_given_mf_checkpoint_must_have_held_out_this_runs_rows(tiny_root, tmp_path):
    """With the product in the item token, an MF fit on the rows stage 2 trains on (an ``--model=MF`` run, or
    another seed's or budget's holdout) puts it in sample there: the trainer names why."""
    config, model, _, _, _ = build(tiny_root, tmp_path, stage2_train_rows=6)
    trainer = LLMTrainer(config, model)
    same = {"mf_holdout": True, "seed": config["seed"], "stage2_train_rows": 6,
            "stage2_epochs": config["stage2_epochs"]}
    assert trainer._holdout_mismatch(same) is None
    assert "without mf_holdout" in trainer._holdout_mismatch({**same, "mf_holdout": None})
    assert "records no config" in trainer._holdout_mismatch(None)
    assert "seed" in trainer._holdout_mismatch({**same, "seed": 1})
    assert "stage2_train_rows" in trainer._holdout_mismatch({**same, "stage2_train_rows": 7})
    assert trainer._holdout_mismatch({**same, "stage2_repeat_rows": False}) is None  # unset and False: fresh rows
    assert "stage2_repeat_rows" in trainer._holdout_mismatch({**same, "stage2_repeat_rows": True})


def test_lora_checkpoint_errors_name_the_key(tiny_root, tmp_path):
    for bad in (tmp_path / "missing.pth", tmp_path / "unfinished.pth"):
        if bad.name == "unfinished.pth":
            torch.save({"done": False}, bad)
        config, model, train, valid, _ = build(tiny_root, tmp_path / bad.stem, lora_checkpoint=str(bad))
        with pytest.raises(UsageError, match="lora_checkpoint"):
            LLMTrainer(config, model).fit(train, valid)


def test_stage_epochs_zero_skips_the_stage(tiny_root, tmp_path):
    config, model, train, valid, _ = build(tiny_root, tmp_path, stage1_epochs=0, stage2_epochs=1)
    before = lora_tensors(model)
    trainer = LLMTrainer(config, model)
    calls = []
    original = trainer.valid_metrics
    trainer.valid_metrics = lambda *a, **k: calls.append(k.get("desc")) or original(*a, **k)
    trainer.fit(train, valid)
    assert calls == ["stage2 valid"]
    assert trainer.stage_summaries["stage1"]["skipped"] is True
    assert trainer.stage_summaries["stage2"]["rows_trained"] > 0
    assert all(torch.equal(v, lora_tensors(model)[k]) for k, v in before.items())  # LoRA untouched
    assert not (tmp_path / "HistLLM-stage1.pth").exists() and (tmp_path / "HistLLM-stage2.pth").exists()
    assert trainer.best_valid_result == {k: trainer.stage_summaries["stage2"]["best_valid"][k] for k in ("auc", "uauc")}


def test_every_stage_skipped_scores_the_valid_rows_untrained(tiny_root, tmp_path):
    config, model, train, valid, _ = build(tiny_root, tmp_path, stage1_epochs=0, stage2_epochs=0)
    trainer = LLMTrainer(config, model)
    trainer.fit(train, valid)
    assert trainer.stage_summaries["stage1"]["skipped"] and trainer.stage_summaries["stage2"]["skipped"]
    assert 0.0 <= trainer.best_valid_result["auc"] <= 1.0 and "no_training" in trainer.stage_summaries


def test_stage2_trains_the_cia_mapping_not_the_mf_tables(tiny_root, tmp_path):
    _, model, _, _, _ = build(tiny_root, tmp_path)
    model.set_stage(2)
    assert all(p.requires_grad for p in model.cia.net.parameters())
    assert not any("table" in n for n, _ in model.cia.named_parameters())  # MF tables: buffers
    assert {"cia.user_table", "cia.item_table"} <= set(model.checkpoint_state())
    assert not any(k.startswith(("vma.table", "uhem.desc_")) for k in model.state_dict())  # features, not weights


def test_max_grad_norm_clips_every_llm_step_and_falls_back_to_clip_grad_norm(tiny_root, tmp_path, monkeypatch):
    """stage{k}_max_grad_norm, else max_grad_norm, else RecBole's clip_grad_norm; HistLLM's stage 2 sets its own."""
    calls, norms = [], []
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip(params, **kw):
        calls.append(kw)
        norms.append(float(real_clip(params, **kw)))
        return norms[-1]

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    config, model, train, valid, _ = build(tiny_root, tmp_path / "a", stage1_epochs=0, stage2_epochs=1,
                                           stage2_train_rows=24, stage2_batch_size=8, max_grad_norm=0.5,
                                           stage2_max_grad_norm=None)
    trainer = LLMTrainer(config, model)
    trainer.fit(train, valid)
    assert calls == [{"max_norm": 0.5}] * 3  # one per optimiser step of stage 2 (24 rows / 8)
    epoch = trainer.stage_summaries["stage2"]["epochs"][0]  # the norms before clipping, summarised
    assert epoch["grad_norm"] == pytest.approx(sorted(norms)[1], abs=1e-4)
    assert epoch["clipped"] == pytest.approx(sum(n > 0.5 for n in norms) / 3, abs=1e-3)
    assert trainer.clip_grad_norm is None  # stage 0 (RecBole's MF trainer) is not clipped by it
    config, model, _, _, _ = build(tiny_root, tmp_path / "b", max_grad_norm=None, stage2_max_grad_norm=None,
                                   clip_grad_norm={"max_norm": 2.0, "norm_type": 1})
    assert LLMTrainer(config, model)._clip_args(2) == {"max_norm": 2.0, "norm_type": 1}
    config, model, _, _, _ = build(tiny_root, tmp_path / "c", max_grad_norm=None, stage2_max_grad_norm=None)
    assert LLMTrainer(config, model)._clip_args(1) is None and LLMTrainer(config, model)._clip_args(2) is None
    # HistLLM's own property file: stage 2 at 5, stage 1 at the shared limit (TALLRec's 1.0)
    config, model, _, _, _ = build(tiny_root, tmp_path / "d")
    trainer = LLMTrainer(config, model)
    assert trainer._clip_args(1) == {"max_norm": 1.0} and trainer._clip_args(2) == {"max_norm": 5.0}
    config, model, _, _, _ = build(tiny_root, tmp_path / "e", stage1_max_grad_norm=0.25)
    assert LLMTrainer(config, model)._clip_args(1) == {"max_norm": 0.25}
