"""Memory options for big backbones: bf16 weights, gradient checkpointing, gradient accumulation,
and 8-bit / 4-bit loading (clear errors where bitsandbytes or CUDA is missing)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import FAST_LLM
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

from recbole_histllm.config import Config
from recbole_histllm.llm import QuantizationUnavailableError, quantization_config
from recbole_histllm.llm import backbone as backbone_mod
from recbole_histllm.model.histllm import HistLLM
from recbole_histllm.quick_start import main
from recbole_histllm.trainer import LLMTrainer

torch.set_num_threads(1)


def build(root, checkpoint_dir, **overrides):
    config = Config(model="HistLLM", dataset="tiny", config_dict={
        **FAST_LLM, "lora_dropout": 0.0, "data_path": str(root), "checkpoint_dir": str(checkpoint_dir), **overrides})
    init_seed(config["seed"], True)
    train, valid, _ = data_preparation(config, create_dataset(config))
    return config, HistLLM(config, train._dataset), train, valid


def attention_calls_in_a_training_step(model, train) -> int:
    """Forward calls of the first decoder layer's attention during one stage-1 loss + backward
    (transformers checkpoints a layer's ``forward``, so its submodules run again when backward
    recomputes it)."""
    calls = []
    attention = model.llm.get_base_model().model.layers[0].self_attn
    hook = attention.register_forward_hook(lambda *_: calls.append(1))
    model.set_stage(1)
    model.train()
    model.calculate_loss(train._dataset[torch.arange(4)]).backward()
    hook.remove()
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    return len(calls)


def test_gradient_checkpointing_recomputes_the_backbone_in_backward(tiny_root, tmp_path):
    # prefix_cache off: its per-batch prefix pass would be a second attention call of its own
    _, plain, train, _ = build(tiny_root, tmp_path, prefix_cache=False)
    _, checkpointed, _, _ = build(tiny_root, tmp_path, gradient_checkpointing=True, prefix_cache=False)
    assert not plain.llm.get_base_model().is_gradient_checkpointing
    assert checkpointed.llm.get_base_model().is_gradient_checkpointing
    assert attention_calls_in_a_training_step(plain, train) == 1
    assert attention_calls_in_a_training_step(checkpointed, train) == 2  # forward, then again in backward


def test_bf16_weights_reach_the_backbone(tiny_root, tmp_path):
    _, model, train, _ = build(tiny_root, tmp_path, llm_dtype="bfloat16")
    assert model.llm.get_base_model().get_input_embeddings().weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for n, p in model.llm.named_parameters() if "lora_" in n)
    model.eval()
    with torch.no_grad():
        scores = model.predict(train._dataset[torch.arange(4)])
    assert torch.isfinite(scores).all()
    model.set_stage(2)  # UHEM (fp32) reads the bf16 embedding table
    model.train()
    model.calculate_loss(train._dataset[torch.arange(4)]).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.uhem.parameters())


def test_gradient_accumulation_equals_the_larger_batch(tiny_root, tmp_path):
    """Two accumulated batches of 4 make the optimiser step of one batch of 8 (mean losses)."""
    weights = []
    for batch, steps in ((8, 1), (4, 2)):
        config, model, train, valid = build(tiny_root, tmp_path / f"b{batch}", stage1_batch_size=batch,
                                            gradient_accumulation_steps=steps, stage1_train_rows=16,
                                            length_buckets=False)  # the same 8 rows in both runs
        trainer = LLMTrainer(config, model)
        trainer._run_stage(1, train._dataset, valid._dataset, trainer._valid_rows(valid._dataset), False)
        weights.append({k: v for k, v in model.checkpoint_state().items() if "lora_" in k})
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], atol=1e-6, rtol=1e-4)


def test_quantization_keys_fail_clearly(monkeypatch):
    assert quantization_config(False, False, "cpu") is None
    with pytest.raises(QuantizationUnavailableError, match="both True"):
        quantization_config(True, True, "cuda")
    with pytest.raises(QuantizationUnavailableError, match="`load_in_4bit` needs a CUDA GPU"):
        quantization_config(load_in_4bit=True, device="cpu")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(backbone_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(QuantizationUnavailableError, match="`load_in_8bit` needs the `bitsandbytes` package"):
        quantization_config(load_in_8bit=True, device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_quantization_without_cuda_stops_the_cli_with_one_line(tiny_root, tmp_path, capsys):
    code = main(["--model=HistLLM", "--dataset=tiny", f"--data_path={tiny_root}", "--llm_path=random:tiny",
                 "--load_in_4bit=True", f"--output_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: config key `load_in_4bit` needs a CUDA GPU") and "\n" not in err
