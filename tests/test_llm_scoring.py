"""P(Yes) scoring, BCE, padding independence and LoRA helpers on a tiny LLM with the real tokenizer."""

from __future__ import annotations

import pytest
import torch

from recbole_histllm.llm import (
    TALLREC,
    TALLREC_IMAGE,
    PromptBuilder,
    PromptSample,
    answer_logits,
    apply_lora,
    autocast,
    count_parameters,
    enable_gradient_checkpointing,
    final_hidden_state,
    freeze_lora,
    load_partial_state_dict,
    load_tokenizer,
    lora_state_dict,
    position_ids_from_mask,
    score_batch,
    tiny_llm,
    trainable_state_dict,
    unfreeze_lora,
    yes_no_bce,
    yes_probability,
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _sample(n: int, target: str) -> PromptSample:
    return PromptSample(
        {"TargetItemTitle": target}, [{"Title": f"A much longer movie title number {i}"} for i in range(n)]
    )


def test_score_independent_of_batch_padding(tok):
    torch.manual_seed(0)
    model = tiny_llm(tok, seed=1)
    b = PromptBuilder(tok, TALLREC_IMAGE)
    d = model.config.hidden_size
    rows = [_sample(1, "Heat"), _sample(9, "Casino"), _sample(4, "Alien")]
    hist = torch.randn(3, 9, d)
    tgt = torch.randn(3, d)
    with torch.no_grad():
        batch = b(rows)
        together = score_batch(model, batch, b.answer_tokens, {"Item_iImage": hist, "TargetItemImage": tgt})
        assert batch.attention_mask[0].sum() < batch.input_ids.shape[1]  # row 0 is padded
        for i in range(3):
            alone_batch = b([rows[i]])
            alone = score_batch(
                model, alone_batch, b.answer_tokens, {"Item_iImage": hist[i : i + 1], "TargetItemImage": tgt[i : i + 1]}
            )
            assert torch.allclose(alone, together[i : i + 1], atol=1e-5, rtol=0), (i, alone, together[i])
    p = yes_probability(together)
    assert p.shape == (3,) and ((p > 0) & (p < 1)).all()
    assert torch.allclose(p, torch.softmax(together, -1)[:, 0])


def test_bce_matches_definition():
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.5], [-4.0, 1.0]])
    y = torch.tensor([1.0, 0.0, 1.0])
    p = yes_probability(logits)
    manual = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert torch.allclose(yes_no_bce(logits, y), manual, atol=1e-6)


def test_lora_apply_freeze_extract(tok):
    torch.manual_seed(0)
    model = apply_lora(tiny_llm(tok, seed=2), r=4, alpha=8, dropout=0.0)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert any("q_proj" in n for n in names) and any("v_proj" in n for n in names)
    assert not any("k_proj" in n or "o_proj" in n for n in names)
    trainable, total = count_parameters(model)
    assert 0 < trainable < total

    b = PromptBuilder(tok, TALLREC)
    batch = b([_sample(2, "Heat"), _sample(3, "Alien")])
    labels = torch.tensor([1.0, 0.0])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = yes_no_bce(score_batch(model, batch, b.answer_tokens), labels)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    opt.step()
    opt.zero_grad()

    # extract only trainable (LoRA) weights, load them into a fresh copy: identical scores
    sd = trainable_state_dict(model)
    assert set(sd) == set(names) and set(lora_state_dict(model)) == set(names)
    fresh = apply_lora(tiny_llm(tok, seed=2), r=4, alpha=8, dropout=0.0)
    assert len(load_partial_state_dict(fresh, sd)) == len(sd)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(score_batch(model, batch, b.answer_tokens), score_batch(fresh, batch, b.answer_tokens))
    with pytest.raises(KeyError):
        load_partial_state_dict(fresh, {"nope.lora_A": torch.zeros(1)})

    # stage 2: LoRA frozen stays bit-identical while another module trains
    assert freeze_lora(model) == len(names)
    before = lora_state_dict(model)
    head = torch.nn.Linear(model.config.hidden_size, model.config.hidden_size)
    opt2 = torch.optim.AdamW(head.parameters(), lr=1e-2)
    model.train()
    emb = model.get_input_embeddings()(batch.input_ids)
    out = model(inputs_embeds=head(emb), attention_mask=batch.attention_mask).logits[:, -1, :2].sum()
    out.backward()
    opt2.step()
    assert all(p.grad is None for _, p in model.named_parameters())
    after = lora_state_dict(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert unfreeze_lora(model) == len(names) and count_parameters(model)[0] == trainable


def test_autocast_and_checkpointing(tok):
    model = apply_lora(tiny_llm(tok, seed=3), dropout=0.0)
    enable_gradient_checkpointing(model)
    model.train()
    b = PromptBuilder(tok, TALLREC)
    batch = b([_sample(2, "Heat")])
    with autocast("cpu"):
        loss = yes_no_bce(score_batch(model, batch, b.answer_tokens), torch.tensor([1.0]))
    assert loss.dtype == torch.float32
    loss.backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    with autocast("cpu", enabled=False):
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_autocast_only_where_the_cpu_runs_it_natively(monkeypatch):
    """On a CPU without native bf16 (AVX2 only) torch emulates bf16 autocast, 5-22x slower than float32: there
    autocast() is a no-op and the LLM runs in float32."""
    from recbole_histllm.llm import lora

    monkeypatch.setattr(lora, "cpu_has_native_bf16", lambda: False)
    assert not lora.bf16_supported("cpu")
    with autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(lora, "cpu_has_native_bf16", lambda: True)
    assert lora.bf16_supported("cpu")
    with autocast("cpu"):
        assert torch.is_autocast_enabled("cpu")
    with autocast("cpu", enabled=False):
        assert not torch.is_autocast_enabled("cpu")


def test_native_bf16_check_agrees_with_the_cpu_flags():
    """oneDNN's check against the kernel's own flags: AVX-512 (BW, VL, DQ) or AMX-BF16 on x86."""
    from pathlib import Path

    from recbole_histllm.llm import lora

    info = Path("/proc/cpuinfo")
    if not info.is_file() or "flags" not in info.read_text():
        pytest.skip("no x86 /proc/cpuinfo here")
    flags = set(next(line for line in info.read_text().splitlines() if line.startswith("flags")).split(":")[1].split())
    native = {"avx512bw", "avx512vl", "avx512dq"} <= flags or "amx_bf16" in flags
    assert lora.cpu_has_native_bf16() == native


def test_answer_logits_exact_under_bf16_autocast(tok):
    """Yes/No logits of ~14 (a real backbone's size): the float32 readout keeps every row's score
    distinct and equals an fp32 head over the same hidden state; the LM head's bf16 output ties."""
    model = tiny_llm(tok, seed=5)
    b = PromptBuilder(tok, TALLREC)
    ans = b.answer_tokens
    head = model.get_output_embeddings().weight
    with torch.no_grad():  # large, nearly equal Yes/No rows: logits ~14, gap ~0.1 (as SmolLM2's)
        gen = torch.Generator().manual_seed(0)
        common = torch.randn(head.shape[1], generator=gen)
        head[ans.yes] = common * 4 + 0.02 * torch.randn(head.shape[1], generator=gen)
        head[ans.no] = common * 4 + 0.02 * torch.randn(head.shape[1], generator=gen)
    rows = [_sample(i % 7, f"Movie number {i}") for i in range(48)]
    batch = b(rows)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)  # forced: autocast() is float32 on CPUs without native bf16
    with torch.no_grad(), bf16:
        hidden = final_hidden_state(model, batch.attention_mask, input_ids=batch.input_ids)
        exact = answer_logits(model, hidden, ans)
        lm_head = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, -1]
    old = lm_head[:, [ans.yes, ans.no]].float()  # the readout before: the LM head's bf16 output
    assert exact.dtype == torch.float32 and exact.abs().mean() > 8
    reference = hidden.float() @ head[[ans.yes, ans.no]].float().T
    assert torch.allclose(exact, reference, atol=1e-5, rtol=0)
    gap = exact[:, 0] - exact[:, 1]
    assert len(torch.unique(gap)) == len(rows)
    assert len(torch.unique(old[:, 0] - old[:, 1])) < len(rows) // 2
    # score_batch (every model's path) uses the exact readout
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(score_batch(model, batch, ans), exact)


def test_final_hidden_state_is_the_normed_state_the_head_reads(tok):
    model = tiny_llm(tok, seed=2)
    b = PromptBuilder(tok, TALLREC)
    batch = b([_sample(3, "Heat"), _sample(0, "Alien")])
    with torch.no_grad():
        hidden = final_hidden_state(model, batch.attention_mask, input_ids=batch.input_ids)
        positions = position_ids_from_mask(batch.attention_mask)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=positions).logits[:, -1]
        ans = b.answer_tokens
        assert torch.allclose(answer_logits(model, hidden, ans), logits[:, [ans.yes, ans.no]], atol=1e-5)
