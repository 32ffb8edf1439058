"""Speed switches give the same scores: the prefix key/value cache (``prefix_cache``) and
length-bucketed batches (``length_buckets``), on a tiny random Llama with the real tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAST_LLM
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

import recbole_histllm.model.llm_recommender as llm_recommender
from recbole_histllm.config import Config
from recbole_histllm.llm import prefix_cache_supported
from recbole_histllm.model.histllm import HistLLM
from recbole_histllm.model.tallrec import TALLRec
from recbole_histllm.trainer import LLMTrainer
from recbole_histllm.trainer import llm_trainer as trainer_module

QUESTION = "#Question: A user has given high ratings to the following movies: "


def build(root, tmp_path, model=HistLLM, **overrides):
    config = Config(model=model, dataset="tiny",
                    config_dict={**FAST_LLM, "data_path": str(root), "checkpoint_dir": str(tmp_path),
                                 "lora_dropout": 0.0, "prefix_cache": True, "length_buckets": True, **overrides})
    init_seed(config["seed"], True)
    train, valid, _ = data_preparation(config, create_dataset(config))
    return config, model(config, train._dataset), train._dataset, valid._dataset


def scores(model, inter, prefix_cache: bool) -> torch.Tensor:
    model.config["prefix_cache"] = prefix_cache
    with torch.no_grad():
        return model.predict(inter)


@pytest.fixture(scope="module")
def histllm(tiny_root, tmp_path_factory):
    return build(tiny_root, tmp_path_factory.mktemp("histllm"))


def count_prefix_runs(monkeypatch) -> dict:
    calls = {"n": 0}
    original = llm_recommender.compute_prefix_kv

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(llm_recommender, "compute_prefix_kv", counting)
    return calls


def test_prefix_comes_from_the_template(histllm):
    _, model, train, _ = histllm
    tok = model.tokenizer
    stage2, stage1 = model.builders[2], model.builders[1]
    # stage 2: the question text ends at the <HistoryInteractions> slot, so all of it is shared
    assert tok.decode(stage2.prefix_ids) == QUESTION
    # stage 1: titles follow in the same text run; the boundary token is left out
    assert stage1.prefix_ids == stage2.prefix_ids[:-1] and len(stage1.prefix_ids) > 5
    inter = train[torch.arange(6)]
    hist_ids, hist_mask = model.history(inter)
    for builder in (stage1, stage2):
        batch = builder(model.samples(inter, hist_ids, hist_mask))
        assert batch.prefix_len == len(builder.prefix_ids)
        cut = batch.without_prefix(batch.prefix_len)
        for b in range(len(batch.lengths)):
            full = batch.input_ids[b][batch.attention_mask[b].bool()]
            rest = cut.input_ids[b][cut.attention_mask[b].bool()]
            assert full[: batch.prefix_len].tolist() == builder.prefix_ids
            assert torch.equal(full[batch.prefix_len :], rest)
        for name, index in batch.slots.items():
            assert torch.equal(cut.input_ids[index.batch_idx, cut.slots[name].pos],
                               batch.input_ids[index.batch_idx, index.pos])


def cache_matches_plain(model, inter) -> torch.Tensor:
    """Scores with the prefix cache equal the plain path's (returned)."""
    off = scores(model, inter, False)
    on = scores(model, inter, True)
    assert torch.allclose(on, off, atol=1e-5, rtol=0), (on - off).abs().max()
    return off


def test_histllm_stage2_eval_scores_equal_and_prefix_runs_once(histllm, monkeypatch):
    _, model, train, _ = histllm
    model.set_stage(2)
    model.eval()
    calls = count_prefix_runs(monkeypatch)
    inter = train[torch.arange(12)]
    off = cache_matches_plain(model, inter)
    again = torch.cat([scores(model, train[torch.arange(i, i + 4)], True) for i in range(0, 12, 4)])
    assert torch.allclose(again, off, atol=1e-5, rtol=0)  # other batches, other padding: same scores
    assert calls["n"] == 1  # frozen backbone: one prefix run for the whole stage
    model.set_stage(2)  # a stage switch drops the cached states
    scores(model, inter, True)
    assert calls["n"] == 2


def test_tallrec_stage1_eval_scores_equal(tiny_root, tmp_path, monkeypatch):
    _, model, train, _ = build(tiny_root, tmp_path, model=TALLRec)
    model.eval()
    calls = count_prefix_runs(monkeypatch)
    inter = train[torch.arange(10)]
    off = cache_matches_plain(model, inter)
    assert calls["n"] == 1
    # the LoRA weights change (an optimiser step): the cached prefix is not reused
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    off2, on2 = scores(model, inter, False), scores(model, inter, True)
    assert not torch.allclose(off2, off, atol=1e-4)
    assert torch.allclose(on2, off2, atol=1e-5, rtol=0) and calls["n"] == 2
    model.train()  # LoRA trainable: a train/eval switch drops the cache
    assert model.__dict__["_prefix_cache"] == {}


def lora_grads(model, inter, prefix_cache: bool):
    model.config["prefix_cache"] = prefix_cache
    model.zero_grad(set_to_none=True)
    loss = model.calculate_loss(inter)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("stage", [1, 2])
def test_training_loss_and_gradients_equal(histllm, stage, monkeypatch):
    """Stage 1: LoRA trains, the prefix runs per batch (batch size 1, expanded) and gradients flow
    through it; stage 2: LoRA frozen, the cached prefix; UHEM and mapping modules get the same grads."""
    _, model, train, _ = histllm
    model.set_stage(stage)
    model.train()
    calls = count_prefix_runs(monkeypatch)
    inter = train[torch.arange(8)]
    loss_off, grads_off = lora_grads(model, inter, False)
    loss_on, grads_on = lora_grads(model, inter, True)
    assert calls["n"] == 1
    assert torch.allclose(loss_on, loss_off, atol=1e-6, rtol=0)
    assert grads_off and set(grads_on) == set(grads_off)
    if stage == 1:
        assert all("lora_" in n for n in grads_off)
    else:
        assert not any("lora_" in n for n in grads_off)
    for name, g in grads_off.items():
        assert torch.allclose(grads_on[name], g, atol=1e-5, rtol=1e-4), name
    lora_grads(model, inter, True)
    assert calls["n"] == (2 if stage == 1 else 1)  # per batch while LoRA trains, once when frozen
    model.zero_grad(set_to_none=True)


def test_plain_path_where_the_cache_cannot_run(histllm, tiny_root, tmp_path, monkeypatch):
    _, model, train, _ = histllm
    assert prefix_cache_supported(model.llm)
    config = model.llm.get_base_model().config
    with monkeypatch.context() as patch:  # a sliding-window backbone (Gemma 3, Mistral)
        patch.setattr(config, "sliding_window", 16, raising=False)
        assert not prefix_cache_supported(model.llm)
        patch.setattr(config, "layer_types", ["full_attention"] * config.num_hidden_layers, raising=False)
        assert prefix_cache_supported(model.llm)
        patch.setattr(config, "layer_types", ["sliding_attention", "full_attention"], raising=False)
        assert not prefix_cache_supported(model.llm)
    _, checkpointed, train, _ = build(tiny_root, tmp_path, gradient_checkpointing=True)
    checkpointed.set_stage(1)
    checkpointed.train()
    assert not prefix_cache_supported(checkpointed.llm)
    loss = checkpointed.calculate_loss(train[torch.arange(4)])
    loss.backward()  # the plain path runs
    with torch.no_grad():
        assert prefix_cache_supported(checkpointed.llm)


def test_row_lengths_follow_the_prompts(histllm):
    _, model, train, _ = histllm
    rows = np.arange(len(train))
    for stage in (1, 2):
        model.set_stage(stage)
        estimate = model.row_lengths(train, rows)
        exact = model.prompt_lengths(train[torch.as_tensor(rows)])
        assert estimate.shape == exact.shape
        assert np.abs(estimate - exact).max() <= 3, stage
    model.set_stage(1)
    assert np.corrcoef(model.row_lengths(train, rows), model.prompt_lengths(train[torch.as_tensor(rows)]))[0, 1] > 0.95


def test_score_rows_with_length_buckets_keeps_row_order(histllm, tmp_path):
    config, model, train, valid = histllm
    trainer = LLMTrainer(config, model)
    config["eval_batch_size"] = 4
    model.set_stage(1)
    rows = np.random.default_rng(0).permutation(len(valid))[:22]
    config["length_buckets"] = False
    plain = trainer.score_rows(valid, rows)
    config["length_buckets"] = True
    bucketed = trainer.score_rows(valid, rows)
    config["eval_batch_size"] = 32
    for key in ("label", "user", "item"):
        assert np.array_equal(bucketed[key], plain[key]), key
    assert np.allclose(bucketed["score"], plain["score"], atol=1e-5, rtol=0)
    assert np.array_equal(plain["item"], valid[torch.as_tensor(rows)]["item_id"].numpy())


def test_bucketed_training_batches_cover_each_row_once(histllm, monkeypatch):
    config, model, train, _ = histllm
    trainer = LLMTrainer(config, model)
    model.set_stage(1)
    monkeypatch.setattr(trainer_module, "BUCKET_BATCHES", 3)  # several chunks on a small split
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(3))[:70]
    batches = trainer.train_batches(train, order, 4, 1, 0)
    assert sorted(torch.cat(batches).tolist()) == sorted(order.tolist())
    assert sorted(len(b) for b in batches) == [2] + [4] * 17  # ceil(70 / 4) batches, as without buckets
    again = trainer.train_batches(train, order, 4, 1, 0)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))  # deterministic (every rank the same)
    lengths = model.row_lengths(train, order.numpy())
    by_row = dict(zip(order.tolist(), lengths.tolist()))

    def spread(groups):
        return np.mean([np.ptp([by_row[i] for i in g.tolist()]) for g in groups])

    assert spread(batches) < spread(list(order.split(4)))
    config["length_buckets"] = False
    assert all(torch.equal(a, b) for a, b in zip(trainer.train_batches(train, order, 4, 1, 0), order.split(4)))
    config["length_buckets"] = True


def test_real_default_llm_prefix_cache(tiny_root, tmp_path, monkeypatch):
    """SmolLM2-135M (the default backbone): eval scores with and without the cache, both stages."""
    _, model, train, _ = build(tiny_root, tmp_path, llm_path=None, bf16=False)
    assert model.hidden == 576
    model.eval()
    calls = count_prefix_runs(monkeypatch)
    inter = train[torch.arange(6)]
    for stage in (1, 2):
        model.set_stage(stage)
        assert model.builders[stage].prefix_ids
        off, on = scores(model, inter, False), scores(model, inter, True)
        assert torch.allclose(on, off, atol=1e-5, rtol=0), (stage, (on - off).abs().max())
        assert calls["n"] == stage


# ---- backbone_speedups: zero LoRA bypassed, the math attention kernel in CPU training ----------------
def lora_dropout_calls(model) -> list[int]:
    calls = [0]
    for name, module in model.llm.named_modules():
        if name.split(".")[-1] == "lora_dropout":
            for dropout in module.values():
                dropout.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def seeded_grads(model, inter):
    torch.manual_seed(0)  # the mapping modules' dropout draws the same masks
    return lora_grads(model, inter, True)


def test_zero_lora_is_bypassed_with_the_same_loss_and_gradients(tiny_root, tmp_path):
    """HistLLM without stage 1: its frozen LoRA adds exactly zero, so stage 2 runs the backbone without the
    adapters (no dropout masks, no adapter matmuls); loss and gradients are those of running them, and the
    adapters stay frozen afterwards (peft marks re-enabled adapters trainable)."""
    _, model, train, _ = build(tiny_root, tmp_path, lora_dropout=0.05)
    model.set_stage(2)
    model.train()
    calls = lora_dropout_calls(model)
    inter = train[torch.arange(8)]
    model.bypass_zero_lora = False
    loss_off, grads_off = seeded_grads(model, inter)
    assert calls[0] > 0
    model.bypass_zero_lora = True
    calls[0] = 0
    loss_on, grads_on = seeded_grads(model, inter)
    assert calls[0] == 0
    assert not any(p.requires_grad for n, p in model.llm.named_parameters() if "lora_" in n)
    assert torch.equal(loss_on, loss_off) and grads_on and set(grads_on) == set(grads_off)
    for name, g in grads_off.items():
        assert torch.equal(grads_on[name], g), name
    with torch.no_grad():  # a LoRA that adds something (trained in stage 1) is never bypassed
        next(p for n, p in model.llm.named_parameters() if "lora_B" in n).fill_(0.01)
    seeded_grads(model, inter)
    assert calls[0] > 0
    model.zero_grad(set_to_none=True)


def test_cpu_training_steps_run_the_chosen_attention(histllm):
    """``cpu_train_attention``: ``math`` runs training steps on torch's math kernel, ``eager`` on transformers'
    explicit attention, ~ on torch's choice; each equals the same step forced onto that implementation (and their
    gradients differ in the last bits, so the comparison can tell them apart). Scoring is left alone."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from recbole_histllm.llm.scoring import _attention_implementation

    _, model, train, _ = histllm
    model.set_stage(2)
    model.train()
    inter = train[torch.arange(8)]
    forcing = {"math": lambda: sdpa_kernel(SDPBackend.MATH), None: lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION),
               "eager": lambda: _attention_implementation(model.llm.config, "eager")}
    results = {}
    for choice, force in forcing.items():
        model.config["cpu_train_attention"] = choice
        own = seeded_grads(model, inter)
        with torch.no_grad():
            scored = model.predict(inter)
        model.config["cpu_train_attention"] = None
        with force():
            forced = seeded_grads(model, inter)
        assert model.llm.config._attn_implementation == "sdpa"  # restored
        assert torch.equal(own[0], forced[0])
        assert all(torch.equal(own[1][n], forced[1][n]) for n in own[1])
        with torch.no_grad():
            assert torch.equal(scored, model.predict(inter))
        results[choice] = own[1]
    for choice in ("math", "eager"):
        assert any(not torch.equal(results[choice][n], results[None][n]) for n in results[None])
    model.zero_grad(set_to_none=True)
