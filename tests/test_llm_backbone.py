"""The default backbone: GGUF located without import, dequantized copy, a few real LoRA steps."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest
import torch

from recbole_histllm.llm import (
    TALLREC,
    BackboneNotFoundError,
    PromptBuilder,
    PromptSample,
    apply_lora,
    dequantize_default,
    find_default_gguf,
    load_backbone,
    lora_state_dict,
    resolve_llm_path,
    score_batch,
    yes_no_bce,
)
from recbole_histllm.llm import backbone as backbone_mod


def test_missing_llm_path_names_the_config_key(tmp_path):
    with pytest.raises(BackboneNotFoundError, match="llm_path"):
        resolve_llm_path(tmp_path / "no-such-model")


def test_missing_default_package_names_the_config_key(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    def no_pkg(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", no_pkg)
    with pytest.raises(BackboneNotFoundError, match="llm_path"):
        backbone_mod.find_default_gguf()


def test_gguf_found_without_import():
    path = find_default_gguf()
    assert path.suffix == ".gguf" and path.is_file()


@pytest.mark.slow
def test_dequantized_copy_reloads_with_identical_logits(one_thread):
    from transformers import AutoModelForCausalLM

    folder = dequantize_default()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    cached, tok = load_backbone(None)
    gguf = find_default_gguf()
    original = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    ).eval()
    ids = tok(['#Question: Would a user enjoy "Heat (1995)"?\n#Answer:'], return_tensors="pt")
    with torch.no_grad():
        a = cached(**ids).logits
        b = original(**ids).logits
    assert torch.equal(a, b)


@pytest.fixture
def one_thread():
    """The CPU is shared: one intra-op thread avoids oversubscription stalls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_real_backbone_lora_steps_reduce_loss(one_thread):
    torch.manual_seed(0)
    model, tok = load_backbone(None)
    model = apply_lora(model, dropout=0.0)
    b = PromptBuilder(tok, TALLREC)
    batch = b(
        [
            PromptSample({"TargetItemTitle": "Toy Story (1995)"}, [{"Title": "Babe (1995)"}]),
            PromptSample({"TargetItemTitle": "Scream (1996)"}, [{"Title": "Casino (1995)"}]),
        ]
    )
    labels = torch.tensor([1.0, 0.0])
    before = lora_state_dict(model)
    frozen_before = model.get_input_embeddings().weight.detach().clone()
    # lr 1e-3: at 3e-3 AdamW's first steps overshoot on these two rows (loss 0.78 -> 0.85)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for _ in range(3):
        loss = yes_no_bce(score_batch(model, batch, b.answer_tokens), labels)
        loss.backward()
        assert all(("lora_" in n) == (p.grad is not None) for n, p in model.named_parameters())
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    with torch.no_grad():
        model.eval()
        final = yes_no_bce(score_batch(model, batch, b.answer_tokens), labels).item()
    assert final < losses[0], (losses, final)
    after = lora_state_dict(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(model.get_input_embeddings().weight, frozen_before)


def _site(root, digest: str, record: bool = True):
    """A fake site-packages with one wheel-installed GGUF (``llm_fake``), optionally without a RECORD entry."""
    package = root / "site-packages" / "llm_fake"
    package.mkdir(parents=True)
    gguf = package / "fake.Q4.gguf"
    gguf.write_bytes(b"GGUF" * 8)
    info = root / "site-packages" / "llm_fake-0.1.0.dist-info"
    info.mkdir()
    lines = ["llm_fake/__init__.py,,", "llm_fake-0.1.0.dist-info/RECORD,,"]
    if record:
        lines.insert(1, f"llm_fake/fake.Q4.gguf,sha256={digest},32")
    (info / "RECORD").write_text("\n".join(lines) + "\n")
    return gguf


def test_cache_fingerprint_is_the_same_in_every_venv_of_one_wheel(tmp_path):
    """Two venvs with the same wheel (a dev venv and CI's): one cached copy serves both; another wheel, or a
    file no wheel records, does not match."""
    fingerprint = backbone_mod._source_fingerprint
    dev, ci = _site(tmp_path / "dev", "abc"), _site(tmp_path / "ci", "abc")
    assert fingerprint([dev]) == fingerprint([ci]) == {"gguf": "fake.Q4.gguf", "size": 32, "hash": "sha256=abc"}
    assert fingerprint([_site(tmp_path / "new", "def")]) != fingerprint([dev])
    loose = [_site(tmp_path / "a", "", record=False), _site(tmp_path / "b", "", record=False)]
    assert fingerprint(loose[:1])["gguf"] == str(loose[0])  # path, size and mtime, as before
    assert fingerprint(loose[:1]) != fingerprint(loose[1:])
