r"""The paper's tables and its history-length figure as commands (Table 2, 3, 4; Fig. 2 and 4).

    python -m recbole_histllm.table --dataset=movie --seeds=3|2021,2022 \
        [--table=main|ablation|backbone|history] [--models=MF,VBPR,...,HistLLM(Transformer)] \
        [--llm_paths=A,B] [--history=1,3,5,10,20] [--output_dir=saved/tables] [--runs=DIR,...] \
        [--dry_run] [--reuse_only] [--allow_mixed] [--export_runs=DIR] [--cold_buckets=0,5,20] [--blend=MF] \
        [--any_config_key=value ...]

Every row is a model with config overrides, written ``Label=Model:key=value;key=value``, a bare
model name, or one of :data:`PRESETS` (``HistLLM(GRU)``, ``w/o UHEM``, ...). Each row and seed is
one CLI run (``python -m recbole_histllm.quick_start``, the CLI of ``run_recbole_histllm.py``)
in ``<output_dir>/<dataset>/<label>-<hash>/seed<k>``; a finished
run (its ``result.json``) is reused, from there or from any folder under ``--runs`` whose recorded
config equals the run's config, so a table builds incrementally and survives a kill (the LLM
stages resume from their checkpoints). A table holds runs of ONE code version (``result.json``'s
commit): runs of several stop it with one line naming them, before any launch, unless
``--allow_mixed``. The same config computes differently by machine (bf16 autocast where native, float32
elsewhere: ``result.json``'s ``precision``): LLM runs of several precisions are named in the caption, with
a warning. Keys given on the command line are passed to every run.
``--dry_run`` lists what would run; ``--reuse_only`` builds the table from the finished runs alone
(a row or seed without one is reported, not run; rows with fewer seeds than asked are marked).

Shared stages: the LLM models train the same stage 0 (MF, or BinLLM's HashMF) and the same stage 1
(LoRA on the text-only TALLRec prompt) for a dataset and seed. Before launching an LLM run the runner
looks for a finished run of ANY LLM model (in ``<output_dir>/<dataset>`` or under ``--runs``) whose stage-0 /
stage-1 config (:func:`stage_config`) equals the new run's, and passes its checkpoint
(``mf_checkpoint`` / ``hash_checkpoint``, ``lora_checkpoint``), so within a seed the first run trains
a shared stage and later runs load it; it prints what it shared. Such checkpoint paths do not count as
a config difference when a finished run is matched for reuse (:func:`_matches`).

``--export_runs=DIR`` copies every run the table used, compactly, as
``DIR/<dataset>/<label>-<hash>/seed<k>/{result.json,test_predictions.csv.gz}`` (:func:`export_runs`);
``--runs=DIR --reuse_only`` rebuilds the table from such a copy (e.g. ``docs/results/runs`` of a clone).

Metrics are recomputed from each run's ``test_predictions.csv`` (sklearn AUC; UAUC as the
evaluator) on the rows that every run of the table scored, so runs tested on a ``test_rows`` subset
and runs tested on the whole split compare on the same rows. Outputs: ``table_<kind>.md`` (paper
layout: mean ± std over seeds, best bold, second underlined, HistLLM's relative improvement
averaged over AUC and UAUC as the paper's "Rel. Imp.") and ``table_<kind>.csv``; the history table
also writes ``history.png`` (test AUC against n). ``table_<kind>_cold.md`` / ``.csv``: the same runs' AUC / UAUC
per item-frequency bucket (items by their train rows; ``--cold_buckets=0,5,20``, :mod:`recbole_histllm.cold_start`).
``--blend=MF``: ``table_<kind>_blend.md`` / ``.csv``, every other row's test scores averaged by rank with the
MF row's of the same seed (:func:`blend_scores`): whether an LLM's scores carry signal MF's lack (a diagnostic,
not a model).
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recbole_histllm.cold_start import DEFAULT_EDGES, parse_edges, write_cold_table
from recbole_histllm.config_schema import check_values
from recbole_histllm.run_files import (
    PREDICTIONS,
    Row,
    cell,
    common_rows,
    metrics_on,
    predictions_file,
    ranks,
    read_predictions,
    read_result,
)
from recbole_histllm.utils import UsageError

#: Named rows: label -> (model, overrides). HistLLM(Transformer) is the paper's reference row.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "HistLLM(GRU)": ("HistLLM", {"history_encoder": "gru"}),
    "HistLLM(Transformer)": ("HistLLM", {"history_encoder": "transformer"}),
    "w/o UHEM": ("HistLLM", {"history_encoder": "none"}),
    "w/o KE": ("HistLLM", {"use_knowledge": False}),
    "w/o VMA": ("HistLLM", {"use_visual": False}),
    "w/o CIA": ("HistLLM", {"use_collaborative": False}),
    "TALLRec_desc": ("TALLRec", {"tallrec_desc": True}),
}
#: Table 2's groups, by model name (the paper's labels; ZeroShot stands where Rec-GPT4V is).
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("Trad. Multi. Rec.", ("MF", "VBPR", "BM3", "MG", "LGMRec")),
    ("LLM Rec. w/o Vis. Feat.", ("TALLRec", "CoLLM", "BinLLM")),
    ("LLM Rec. w/ Vis. Feat.", ("ZeroShot", "TALLRec-image", "CoLLM-image", "BinLLM-image")),
    ("Our Method", ("HistLLM",)),
]
DEFAULT_ROWS = {
    "main": "MF,VBPR,BM3,MG,LGMRec,TALLRec,CoLLM,BinLLM,ZeroShot,TALLRec-image,CoLLM-image,BinLLM-image,"
    "HistLLM(GRU),HistLLM(Transformer)",
    "ablation": "HistLLM=HistLLM,w/o UHEM,w/o KE,w/o VMA",
    "backbone": "TALLRec-image,CoLLM-image,BinLLM-image,HistLLM",
    "history": "TALLRec,TALLRec_desc,TALLRec-image,HistLLM",
}
#: MIND's impression metrics (columns of a table whose runs' predictions carry ``impression_id``).
IMPRESSION_METRICS = {"imp_auc": "Imp. AUC", "imp_mrr": "MRR", "imp_ndcg@5": "nDCG@5", "imp_ndcg@10": "nDCG@10"}
#: Config keys that do not change what a run computes (reuse ignores them).
VOLATILE_KEYS = {"checkpoint_dir", "show_progress", "test_rows", "eval_batch_size", "data_path", "gpu_id",
                 "use_gpu", "device", "local_rank", "single_spec", "nproc", "world_size", "offset", "ip", "port",
                 "state", "log_wandb", "wandb_project", "worker"}


# ---- shared stages ----------------------------------------------------------------------------------
#: Keys that fix the data every stage trains and early-stops on: the dataset, the seed, the split and the
#: sampling, plus RecBole's own dataset arguments (field names, load_col, filters, alias_of_*...; added
#: in :func:`_data_keys`).
DATA_KEYS = ("dataset", "seed", "reproducibility", "eval_args", "repeatable", "shuffle", "train_neg_sample_args",
             "valid_neg_sample_args", "HISTORY_FIELD", "numerical_features", "discretization")
#: Stage 0 (RecBole's Trainer on MF / HashMF, ``LLMTrainer._stage0``): besides the data keys and every
#: ``mf_*`` key (embedding size, lr, reg, epochs, patience), what that trainer reads from the config.
STAGE0_KEYS = ("train_batch_size", "learner", "eval_step", "valid_metric", "valid_metric_bigger", "clip_grad_norm",
               "enable_amp", "enable_scaler")
#: Stage 1 (``LLMTrainer._run_stage(1)``, LoRA on the text-only prompt) depends on EVERY config key but these
#: (nor ``mf_*``, nor ``stage<k>_*`` for k != 1): a key added later counts until it is listed here, so a
#: stage is never shared across a difference that matters. Left out: the checkpoint keys; stage 0 and
#: RecBole's own training loop (unused by the LLM stages); what only stage 2 or other models read (mapping
#: modules, UHEM, switches the TALLRec prompt does not read: it shows titles, which ``use_knowledge`` does not
#: change; ``use_knowledge`` counts for TALLRec_desc's descriptions); speed and memory options with the same
#: results; evaluation and bookkeeping.
STAGE1_IGNORED = frozenset({
    "model", "lora_checkpoint", "mf_checkpoint", "hash_checkpoint",
    "binllm_bits", "binllm_code_format", "embedding_size", "reg_weight", "init_std", "train_batch_size", "epochs",
    "learning_rate", "learner", "eval_step", "valid_metric", "valid_metric_bigger", "enable_amp", "enable_scaler",
    "history_encoder", "uhem_layers", "uhem_heads", "desc_max_tokens", "mapping_hidden", "mapping_layers",
    "token_scale", "token_moments", "cia_interaction", "cia_residual", "module_learning_rate",
    "use_visual", "use_collaborative", "use_knowledge",
    "tallrec_desc",
    "vlm_path", "poster_dir",
    "gradient_checkpointing", "prefix_cache", "ddp_backend", "llm_cache_dir",
    "metrics", "topk", "metric_decimal_place", "loss_decimal_place", "test_neg_sample_args", "save_dataset",
    "dataset_save_path", "save_dataloaders", "dataloaders_save_path",
}) | frozenset(VOLATILE_KEYS)
#: Stage 0's collaborative model per LLM model (``collaborative_model()``; HistLLM's only with CIA on).
STAGE0_MODELS = {"HistLLM": "MF", "CoLLM": "MF", "CoLLM-image": "MF", "BinLLM": "HashMF", "BinLLM-image": "HashMF"}
#: The config key that gives a finished stage-0 checkpoint, per collaborative model.
STAGE0_CHECKPOINT_KEYS = {"MF": "mf_checkpoint", "HashMF": "hash_checkpoint"}
#: Models whose stage 1 trains LoRA alone on the text-only TALLRec prompt (Fig. 6; TALLRec_desc: Fig. 8).
#: Not TALLRec-image (its one stage holds image tokens and trains VMA with LoRA) nor ZeroShot (no stage).
STAGE1_MODELS = ("HistLLM", "TALLRec", "CoLLM", "CoLLM-image", "BinLLM", "BinLLM-image")
LORA_CHECKPOINT_KEY = "lora_checkpoint"
#: checkpoint key -> the stage it skips
SHARED_CHECKPOINT_KEYS = {"mf_checkpoint": 0, "hash_checkpoint": 0, LORA_CHECKPOINT_KEY: 1}


@functools.lru_cache(maxsize=1)
def _data_keys() -> tuple[str, ...]:
    from recbole.utils import argument_list

    return tuple(dict.fromkeys(DATA_KEYS + tuple(argument_list.dataset_arguments)))


def _domain(value: Any) -> str:
    """``prompt_domain`` as :func:`recbole_histllm.llm.for_domain` tells the wordings apart."""
    d = str(value or "movie").lower()
    return "news" if d in ("news", "mind") else d if d not in ("movies", "netflix", "ml-100k", "ml-1m") else "movie"


def stage0_model(model: str, config: dict[str, Any]) -> str | None:
    """The collaborative model stage 0 trains for ``model`` (MF / HashMF), None without a stage 0."""
    if model == "HistLLM" and not config.get("use_collaborative", True):
        return None
    return STAGE0_MODELS.get(model)


def stage_config(model: str, config: dict[str, Any], stage: int) -> str | None:
    """What decides stage ``stage`` (0: MF / HashMF, 1: LoRA on the text prompt) of a run of ``model`` with
    (JSON-normalised) ``config``, as canonical JSON; None where the model has no such shareable stage.
    Unset, null and false values are left out, so a key added after a run was recorded matches its off value;
    ``prompt_domain`` counts as the wording it selects."""
    if stage == 0:
        kind = stage0_model(model, config)
        if kind is None:
            return None
        keys = [*_data_keys(), *STAGE0_KEYS, *(k for k in config if k.startswith("mf_") and k != "mf_checkpoint")]
        keys += ["binllm_bits"] if kind == "HashMF" else []
        if config.get("mf_holdout"):  # the held-out rows are the later stages' rows
            keys += [k for k in config if re.match(r"stage\d+_(train_rows|epochs|repeat_rows)$", k)]
        spec: dict[str, Any] = {"stage0_model": kind}
    else:
        if model not in STAGE1_MODELS:
            return None
        desc = model == "TALLRec" and bool(config.get("tallrec_desc"))
        keys = [k for k in config if k not in STAGE1_IGNORED and k != "prompt_domain" and not k.startswith("mf_")
                and not (re.match(r"stage\d+_", k) and not k.startswith("stage1_"))]
        keys += ["use_knowledge"] if desc else []
        spec = {"stage1_prompt": ("tallrec_desc" if desc else "tallrec", _domain(config.get("prompt_domain")))}
    spec.update({k: config[k] for k in keys if config.get(k) is not None and config.get(k) is not False})
    return json.dumps(spec, sort_keys=True, default=str)


def stage_checkpoint(run: Path, result: dict[str, Any], stage: int) -> Path | None:
    """The finished stage-``stage`` checkpoint of a finished run: its own file, else the one it recorded
    (a run that was given it); None when the run has no such stage or the file is gone."""
    summary = (result.get("stages") or {}).get(f"stage{stage}")
    if not isinstance(summary, dict):
        return None
    model = result.get("model") or result.get("config", {}).get("model")
    name = f"{summary.get('model') or stage0_model(model, result.get('config', {}))}-stage0.pth" if stage == 0 \
        else f"{model}-stage1.pth"
    candidates = [run / name] + ([Path(summary["checkpoint"])] if summary.get("checkpoint") else [])
    return next((p for p in candidates if p.is_file()), None)


@dataclass
class SharedStages:
    """Finished stages of LLM runs, by stage and stage config: ``{stage: {stage_config: (checkpoint, run)}}``."""

    found: dict[int, dict[str, tuple[Path, Path]]] = field(default_factory=lambda: {0: {}, 1: {}})

    def add(self, run: Path) -> None:
        result = read_result(run / "result.json")
        if result is None or predictions_file(run) is None:
            return
        config, model = result.get("config") or {}, result.get("model") or result.get("config", {}).get("model")
        for stage in (0, 1):
            key = stage_config(str(model), config, stage)
            checkpoint = stage_checkpoint(run, result, stage) if key else None
            if checkpoint is not None:
                self.found[stage].setdefault(key, (checkpoint, run))

    @classmethod
    def scan(cls, roots: list[Path]) -> SharedStages:
        shared = cls()
        for root in roots:
            for path in sorted(root.rglob("result.json")) if root.is_dir() else []:
                shared.add(path.parent)
        return shared

    def for_run(self, model: str, expected: dict[str, Any]) -> dict[str, tuple[Path, Path]]:
        """``{checkpoint key: (checkpoint, run)}`` to pass to a new run of ``model`` with config ``expected``
        (keys the row sets itself are left alone; a key the property files do not define is not passed, as
        the CLI would refuse it)."""
        given = {}
        for stage in (0, 1):
            key = stage_config(model, expected, stage)
            hit = self.found[stage].get(key) if key else None
            if hit is None:
                continue
            name = STAGE0_CHECKPOINT_KEYS[stage0_model(model, expected)] if stage == 0 else LORA_CHECKPOINT_KEY
            if name in expected and expected[name] is None:
                given[name] = hit
        return given


def _value(text: str) -> Any:
    """A command-line value as YAML would read it (True, 3, 0.1, ~ -> None, else the string)."""
    import yaml

    if text.strip() in ("~", "None", "null", ""):
        return None
    return yaml.safe_load(text)


def parse_rows(spec: str) -> list[Row]:
    """``Label=Model:key=value;key=value,...`` (label and overrides optional; presets by label)."""
    rows = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        label, body = item.split("=", 1) if "=" in item.split(":", 1)[0] else ("", item)
        if not label and body in PRESETS:
            model, overrides = PRESETS[body]
            rows.append(Row(body, model, dict(overrides)))
            continue
        model, _, options = body.partition(":")
        overrides = {}
        for pair in filter(None, options.split(";")):
            if "=" not in pair:
                raise UsageError(f"row '{item}': override '{pair}' is not key=value")
            key, value = pair.split("=", 1)
            overrides[key.strip()] = _value(value)
        if model in PRESETS:
            label = label or model
            base_model, base = PRESETS[model]
            model, overrides = base_model, {**base, **overrides}
        rows.append(Row(label or body, model, overrides))
    if not rows:
        raise UsageError("no rows: --models is empty")
    return rows


def group_of(model: str) -> str:
    return next((name for name, models in GROUPS if model in models), "Other")


# ---- runs -----------------------------------------------------------------------------------------
def expected_config(row: Row, dataset: str, seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    """The (JSON-normalised) config a fresh CLI run of this row would record, volatile keys removed."""
    from recbole_histllm.config import Config
    from recbole_histllm.quick_start import _jsonable

    config = Config(model=row.model, dataset=dataset, config_dict={**extra, **row.overrides, "seed": seed})
    return {k: v for k, v in _jsonable(config.final_config_dict).items() if k not in VOLATILE_KEYS}


def _given_stage_fits(recorded: dict[str, Any], key: str) -> bool:
    """A run given a finished stage (``recorded[key]``: a checkpoint path) computed what training that stage
    itself would have, when the checkpoint's run has the same stage config. The runner passes only such
    checkpoints; where the checkpoint's run is not at hand (a copied or exported run) the run is trusted."""
    producer = Path(str(recorded[key])).parent / "result.json"
    result = read_result(producer) if producer.is_file() else None
    if result is None:
        return True
    stage, model = SHARED_CHECKPOINT_KEYS[key], str(recorded.get("model"))
    mine = stage_config(model, recorded, stage)
    config = result.get("config") or {}
    return mine is not None and mine == stage_config(str(result.get("model") or config.get("model")), config, stage)


def _matches(result_file: Path, expected: dict[str, Any], test_rows: Any) -> bool:
    result = read_result(result_file)
    if result is None:
        return False
    recorded = result.get("config", {})
    for k, v in expected.items():
        if k in SHARED_CHECKPOINT_KEYS and v is None and recorded.get(k):  # a shared stage (see build)
            if not _given_stage_fits(recorded, k):
                return False
        # a key the run does not record came later than the run: it matches when asked for its "off" value
        elif recorded[k] != v if k in recorded else v not in (None, False):
            return False
    done = recorded.get("test_rows")
    if done is not None and result.get("test_rows") is not None and \
            result.get("test_rows") == result.get("test_rows_in_split"):
        done = None  # a subset asked of a split no larger than it (MIND's 210 test rows): the whole split
    # a whole-split run serves any subset; subsets are nested (one seeded user order), so does a larger one
    return done is None or (test_rows is not None and int(done) >= int(test_rows))


def find_run(row: Row, dataset: str, seed: int, extra: dict[str, Any], own: Path, search: list[Path],
             expected: dict[str, Any] | None = None) -> Path | None:
    """A finished run of this row: in its own folder, else any ``result.json`` under ``search``."""
    expected = expected_config(row, dataset, seed, extra) if expected is None else expected
    candidates = [own / "result.json"] + [p for root in search for p in sorted(root.rglob("result.json"))]
    return next((p.parent for p in candidates if p.is_file() and predictions_file(p.parent) is not None
                 and _matches(p, expected, extra.get("test_rows"))), None)


def launch(row: Row, dataset: str, seed: int, extra: dict[str, Any], out: Path,
           given: dict[str, Path] | None = None) -> None:
    """One CLI run in ``out`` (resumes its stages after a kill); its log goes to ``out/run.log``. ``given``:
    checkpoint keys (``mf_checkpoint``, ``hash_checkpoint``, ``lora_checkpoint``) of finished shared stages."""
    out.mkdir(parents=True, exist_ok=True)
    args = {**extra, **row.overrides, **{k: str(v) for k, v in (given or {}).items()}, "seed": seed,
            "show_progress": False}
    cmd = [sys.executable, "-m", "recbole_histllm.quick_start", f"--model={row.model}", f"--dataset={dataset}",
           f"--output_dir={out}"]
    cmd += [f"--{k}={'~' if v is None else v}" for k, v in args.items()]
    print(f"  running: {' '.join(cmd[1:])}", flush=True)
    with open(out / "run.log", "a", encoding="utf-8") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"run failed (exit {code}): see {out / 'run.log'}")


# ---- metrics --------------------------------------------------------------------------------------
def export_runs(runs: dict[tuple[int, int], Path], rows: list[Row], dataset: str, extra: dict[str, Any],
                dest: Path) -> list[Path]:
    """Copy each run as ``dest/<dataset>/<label>-<hash>/seed<k>/`` with ``result.json`` and
    ``test_predictions.csv.gz`` (gzip without a timestamp: a re-export of the same run is byte-identical);
    ``--runs=dest --reuse_only`` rebuilds the table from them. Returns the run folders written."""
    written = []
    for (i, seed), run in sorted(runs.items()):
        target = rows[i].run_dir(dest / dataset, extra) / f"seed{seed}"
        source = predictions_file(run)
        if source is None:
            raise FileNotFoundError(f"{run}: no {' or '.join(PREDICTIONS)}")
        written.append(target)
        if target.resolve() == run.resolve():
            continue
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "result.json", target / "result.json")
        gz = target / "test_predictions.csv.gz"
        if source.suffix == ".gz":
            shutil.copyfile(source, gz)
        else:
            with open(source, "rb") as src, open(gz, "wb") as raw, \
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
                shutil.copyfileobj(src, out)
        (target / "test_predictions.csv").unlink(missing_ok=True)  # a stale plain copy would be read first
    return written


def version_label(code: dict[str, Any] | None) -> str:
    """A run's code version (``result.json``'s ``code``): the commit (12 characters, ``+dirty`` when tracked
    files differed from it), else the package version, else ``unrecorded`` (runs older than that entry)."""
    code = code or {}
    if code.get("commit"):
        return code["commit"][:12] + ("+dirty" if code.get("dirty") else "")
    return f"version {code['package']}" if code.get("package") else "unrecorded"


def code_versions(runs: dict[tuple[int, int], Path]) -> dict[str, int]:
    """``{code version: runs}`` over a table's runs (:func:`version_label`)."""
    counts: dict[str, int] = {}
    for run in runs.values():
        label = version_label((read_result(run / "result.json") or {}).get("code"))
        counts[label] = counts.get(label, 0) + 1
    return counts


def precisions(runs: dict[tuple[int, int], Path]) -> dict[str, int]:
    """``{precision: runs}`` over a table's LLM runs (``result.json``'s ``precision``: ``bf16 autocast`` or
    ``float32``, decided by the machine for the same config); LLM runs older than that entry count as
    ``unrecorded``. Runs without stage summaries (MF, DeepFM, ...) are not LLM runs and are left out."""
    counts: dict[str, int] = {}
    for run in runs.values():
        result = read_result(run / "result.json") or {}
        if not result.get("stages"):
            continue
        label = result.get("precision") or "unrecorded"
        counts[label] = counts.get(label, 0) + 1
    return counts


def check_one_version(rows: list[Row], runs: dict[tuple[int, int], Path], to_launch: list[tuple[int, int]],
                      allow_mixed: bool) -> None:
    """Stop (:class:`UsageError`, one line) before anything is launched when the table would hold runs of
    several code versions: the finished runs' versions and, for the runs still to launch, this checkout's.
    Each version names the rows that hold it. ``allow_mixed`` turns the stop into a warning."""
    from recbole_histllm.quick_start import code_version

    holders: dict[str, dict[str, int]] = {}
    labels = {key: version_label((read_result(run / "result.json") or {}).get("code")) for key, run in runs.items()}
    here = version_label(code_version()) if to_launch else None  # git is asked only when runs will launch
    labels.update(dict.fromkeys(to_launch, here))
    for (i, _), label in labels.items():
        rows_of = holders.setdefault(label, {})
        rows_of[rows[i].label] = rows_of.get(rows[i].label, 0) + 1
    if len(holders) > 1:
        said = "; ".join(f"{label}{' (this checkout)' if label == here else ''}: "
                         + ", ".join(f"{r} x{n}" for r, n in rows_of.items())
                         for label, rows_of in holders.items())
        if not allow_mixed:
            raise UsageError(f"the table would mix runs of {len(holders)} code versions ({said}); rerun them on one "
                             "commit, or pass --allow_mixed to build it anyway (its caption then lists the versions)")
        print(f"warning: the table mixes runs of {len(holders)} code versions ({said})", flush=True)


def score_runs(runs: dict[tuple[int, int], Path]) -> tuple[dict[tuple[int, int], dict[str, float]], str, set[int]]:
    """Metrics of every (row index, seed) run on the rows that every run OF ITS SEED scored (a
    ``test_rows`` subset is drawn per seed, so runs of one seed compare on identical rows and each
    seed stays a whole replicate); the common row count per seed (one number, or a range over seeds)
    and the sizes of the runs' own test sets (one size: all runs scored the same rows)."""
    frames = {key: read_predictions(path) for key, path in runs.items()}
    common = common_rows(frames)
    sizes = {len(f) for f in frames.values()}
    counts = sorted({len(index) for index in common.values()})
    n_common = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return {key: metrics_on(f.loc[common[key[1]]]) for key, f in frames.items()}, n_common, sizes


def rank_blend(frame: pd.DataFrame, reference: pd.DataFrame, rows: pd.Index) -> pd.DataFrame:
    """``frame[rows]`` with its scores replaced by the mean of its and ``reference``'s ranks over ``rows``, divided
    by the row count (ties share their mean rank)."""
    mine = frame.loc[rows, "score"].rank()  # whole or half ranks: their sum is exact, so are its ties
    theirs = reference.loc[rows, "score"].rank()
    return frame.loc[rows].assign(score=(mine + theirs) / (2 * len(rows)))


def blend_scores(runs: dict[tuple[int, int], Path], reference: int
                 ) -> dict[tuple[int, int], dict[str, float]]:
    """Each run's metrics after averaging its scores with the ``reference`` row's run of the same seed
    by rank: on the rows every run of the seed scored (as :func:`score_runs`), each run's scores become
    their rank over those rows divided by the row count (ties share their mean rank), and the two are
    averaged. The reference's own key is left out; seeds without a reference run are left out.
    A diagnostic, not a model: whether a row's scores carry signal the reference's lack."""
    frames = {key: read_predictions(path) for key, path in runs.items()}
    common = common_rows(frames)
    blended = {}
    for (i, seed), frame in frames.items():
        if i == reference or (reference, seed) not in frames:
            continue
        blended[(i, seed)] = metrics_on(rank_blend(frame, frames[(reference, seed)], common[seed]))
    return blended


def blend_row(rows: list[Row], reference: str) -> int:
    """The index of the ``--blend`` row; a label not among the rows is a usage error."""
    labels = [r.label for r in rows]
    if reference not in labels:
        raise UsageError(f"--blend={reference}: no such row in --models ({', '.join(labels)})")
    return labels.index(reference)


def write_blend_table(runs: dict[tuple[int, int], Path], rows: list[Row], seeds: list[int], reference: str,
                      dataset: str, kind: str, root: Path, n_common: str,
                      scores: dict[tuple[int, int], dict[str, float]] | None = None) -> Path:
    """``table_<kind>_blend.md`` / ``.csv``: the reference row, then every other row rank-averaged with it
    (:func:`blend_scores`), mean ± std over seeds. ``scores``: :func:`score_runs`'s, when already computed."""
    ref = blend_row(rows, reference)
    scores = scores if scores is not None else score_runs(runs)[0]
    blended = blend_scores(runs, ref)
    shown = [Row(reference, rows[ref].model, rows[ref].overrides)] + [
        Row(f"{r.label} + {reference} (rank mean)", r.model, r.overrides) for i, r in enumerate(rows) if i != ref]
    keep = [i for i in range(len(rows)) if i != ref]
    merged = {(0, s): v for (i, s), v in scores.items() if i == ref}
    merged.update({(1 + keep.index(i), s): v for (i, s), v in blended.items()})
    table = summarise(shown, seeds, merged)
    caption = (f"{dataset}: test AUC / UAUC of each row's scores averaged by rank with {reference}'s of the same "
               f"seed (each score's rank over the seed's {n_common} common test rows / their count), "
               f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}). A diagnostic of complementary signal, "
               "not a model.")
    table.to_csv(root / f"table_{kind}_blend.csv", index=False)
    path = root / f"table_{kind}_blend.md"
    path.write_text(to_markdown(table, "ablation", caption, len(seeds)), encoding="utf-8")
    return path


# ---- rendering ------------------------------------------------------------------------------------
def summarise(rows: list[Row], seeds: list[int], scores: dict[tuple[int, int], dict[str, float]]) -> pd.DataFrame:
    records = []
    for i, row in enumerate(rows):
        per_seed = [scores[(i, s)] for s in seeds if (i, s) in scores]
        record = {"group": group_of(row.model), "column": row.column, "label": row.label, "model": row.model,
                  "overrides": json.dumps(row.overrides, sort_keys=True), "seeds": len(per_seed)}
        for metric in ("auc", "uauc", *(m for m in IMPRESSION_METRICS if per_seed and m in per_seed[0])):
            values = np.array([s[metric] for s in per_seed], dtype=float)
            record[f"{metric}_mean"] = float(values.mean()) if len(values) else math.nan
            record[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        records.append(record)
    return pd.DataFrame(records)


def add_relative_improvement(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The paper's Rel. Imp.: the reference row over each row, averaged over AUC and UAUC."""
    ref = table[table.label == reference]
    if ref.empty:
        table["rel_imp"] = math.nan
        return table
    ra, ru = ref.iloc[0]["auc_mean"], ref.iloc[0]["uauc_mean"]
    table["rel_imp"] = [((ra / a - 1) + (ru / u - 1)) / 2 if g != "Our Method" else math.nan
                        for a, u, g in zip(table.auc_mean, table.uauc_mean, table.group)]
    return table


def to_markdown(table: pd.DataFrame, kind: str, caption: str, seeds: int = 1) -> str:
    """The table in the paper's layout; a row with fewer than ``seeds`` runs says how many it has."""
    with_groups = kind == "main"
    lead = ["Group", "Method"] if with_groups else (["Backbone", "Method"] if kind == "backbone" else
                                                     ["n", "Method"] if kind == "history" else ["Method"])
    extra = [m for m in IMPRESSION_METRICS if f"{m}_mean" in table]  # MIND's impression metrics, after Rel. Imp.
    header = lead + ["AUC", "UAUC"] + (["Rel. Imp."] if with_groups else []) + [IMPRESSION_METRICS[m] for m in extra]
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    blocks = [table] if kind in ("main", "ablation") else [g for _, g in table.groupby("column", sort=False)]
    for block in blocks:
        auc_rank, uauc_rank = ranks(block.auc_mean), ranks(block.uauc_mean)
        previous = None
        for j, (_, r) in enumerate(block.iterrows()):
            cells = []
            if with_groups:
                cells.append(r.group if r.group != previous else "")
                previous = r.group
            elif kind in ("backbone", "history"):
                cells.append(r.column if j == 0 else "")
            done = int(r.get("seeds", seeds))
            label = r.label if done >= seeds else f"{r.label} ({done} of {seeds} seeds)"
            cells += [label, cell(r.auc_mean, r.auc_std, auc_rank[j]), cell(r.uauc_mean, r.uauc_std, uauc_rank[j])]
            if with_groups:
                cells.append("-" if math.isnan(r.rel_imp) else f"{100 * r.rel_imp:.1f}%")
            cells += [cell(r[f"{m}_mean"], r[f"{m}_std"], ranks(block[f"{m}_mean"])[j]) for m in extra]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_history(table: pd.DataFrame, path: Path, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, block in table.groupby("label", sort=False):
        block = block[block.auc_mean.notna()]  # lengths without a finished run (--reuse_only) are skipped
        n = block.column.astype(int)
        ax.errorbar(n, block.auc_mean, yerr=block.auc_std.fillna(0), marker="o", capsize=3, label=label)
    ax.set_xticks(sorted({int(c) for c in table.column}))
    ax.set_xlabel("history length n (items in the prompt / encoded by UHEM)")
    ax.set_ylabel("test AUC")
    ax.set_title(f"Test AUC against history length ({dataset})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- command line ---------------------------------------------------------------------------------
def expand(kind: str, rows: list[Row], llm_paths: list[str], history: list[int]) -> list[Row]:
    """Backbone and history tables: every row once per backbone / history length."""
    if kind == "backbone":
        if not llm_paths:
            raise UsageError("--table=backbone needs --llm_paths=PATH,PATH")
        return [Row(r.label, r.model, {**r.overrides, "llm_path": p}, Path(p).name or p)
                for p in llm_paths for r in rows]
    if kind == "history":
        return [Row(r.label, r.model, {**r.overrides, "history_len": n}, str(n)) for n in history for r in rows]
    return rows


def launch_sharing(row: Row, dataset: str, seed: int, extra: dict[str, Any], own: Path,
                   expected: dict[str, Any], shared: SharedStages) -> None:
    """:func:`launch` with the checkpoints of the finished shared stages this run can take (printed), then
    record the run's own stages for the runs after it."""
    given = shared.for_run(row.model, expected)
    for key, (checkpoint, _) in given.items():
        stage = SHARED_CHECKPOINT_KEYS[key]
        what = f"stage 0 ({stage0_model(row.model, expected)})" if stage == 0 else "stage 1 (LoRA)"
        print(f"  shared {what}: {key}={checkpoint}", flush=True)
    launch(row, dataset, seed, extra, own, {k: checkpoint for k, (checkpoint, _) in given.items()})
    shared.add(own)


def build(dataset: str, kind: str, rows: list[Row], seeds: list[int], extra: dict[str, Any], out: Path,
          search: list[Path], dry_run: bool = False, reuse_only: bool = False,
          export: Path | None = None, cold_edges: tuple[int, ...] | None = None,
          allow_mixed: bool = False, blend: str | None = None) -> pd.DataFrame | None:
    """Find or run every (row, seed), score them on their common rows, write the table files.

    With ``reuse_only`` the missing (row, seed) runs are skipped: the table holds what has finished.
    Missing runs are launched seed by seed, in row order, each LLM run given the finished shared stages
    (stage 0, stage 1) of any LLM run of its dataset and seed with the same stage config
    (:class:`SharedStages`): a seed's first run trains them, the later ones load them.
    ``export``: :func:`export_runs` of every run the table used. ``cold_edges``: also the cold-start
    breakdown (:mod:`recbole_histllm.cold_start`) with these bucket edges. Runs of several code versions
    stop the table before any launch unless ``allow_mixed`` (:func:`check_one_version`). ``blend``: a row
    label; also :func:`write_blend_table`, every other row rank-averaged with that row.
    """
    if blend is not None:
        blend_row(rows, blend)  # a wrong label stops the table before any run is launched
    root = out / dataset
    runs: dict[tuple[int, int], Path] = {}
    missing = []
    expected: dict[tuple[int, int], dict[str, Any]] = {}
    for i, row in enumerate(rows):
        for seed in seeds:
            own = row.run_dir(root, extra) / f"seed{seed}"
            expected[(i, seed)] = expected_config(row, dataset, seed, extra)
            found = find_run(row, dataset, seed, extra, own, search, expected[(i, seed)])
            print(f"[{row.column + ' ' if row.column else ''}{row.label} seed {seed}] "
                  f"{'reused ' + str(found) if found else 'to run in ' + str(own)}", flush=True)
            if found:
                runs[(i, seed)] = found
            else:
                missing.append((i, seed, own))
    if dry_run:
        return None
    to_launch = [] if reuse_only else [(i, seed) for i, seed, _ in missing]
    check_one_version(rows, runs, to_launch, allow_mixed)
    if reuse_only:
        if missing:
            print(f"--reuse_only: {len(missing)} of {len(rows) * len(seeds)} runs missing, left out", flush=True)
        if not runs:
            raise UsageError("--reuse_only: none of the table's runs has finished (see the list above)")
    elif missing:
        shared = SharedStages.scan([root, *search])
        for i, seed, own in sorted(missing, key=lambda m: (m[1], m[0])):  # seed by seed: a kill keeps whole seeds
            launch_sharing(rows[i], dataset, seed, extra, own, expected[(i, seed)], shared)
            runs[(i, seed)] = own
    scores, n_common, sizes = score_runs(runs)
    table = summarise(rows, seeds, scores)
    if kind == "main":
        ours = table[table.group == "Our Method"].label
        # the paper's reference row, else the last HistLLM row; a table without HistLLM has no Rel. Imp.
        reference = "HistLLM(Transformer)" if "HistLLM(Transformer)" in set(ours) else \
            (ours.iloc[-1] if len(ours) else "")
        table = add_relative_improvement(table, reference)
    note = ("all runs scored the same rows" if len(sizes) == 1 else
            f"runs scored {sorted(sizes)} rows; metrics on the rows all runs of a seed scored")
    caption = (f"{dataset}: test AUC / UAUC over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}), "
               f"{n_common} test rows per seed ({note}).")
    versions = code_versions(runs)
    if len(versions) > 1:  # only with allow_mixed (check_one_version): the caption says which versions
        caption += " Runs of several code versions: " + ", ".join(f"{v} ({n})" for v, n in versions.items()) + "."
    computed = precisions(runs)
    if len(computed) > 1:  # the config matched, the numerics did not: a bf16 machine and a float32 one
        said = ", ".join(f"{p} ({n})" for p, n in computed.items())
        caption += f" LLM runs of several precisions: {said}."
        print(f"warning: the table's LLM runs were computed at several precisions ({said})", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    table.assign(test_rows=n_common).to_csv(root / f"table_{kind}.csv", index=False)
    (root / f"table_{kind}.md").write_text(to_markdown(table, kind, caption, len(seeds)), encoding="utf-8")
    if kind == "history":
        plot_history(table, root / "history.png", dataset)
    if cold_edges is not None:
        try:  # the split is rebuilt from the dataset: without it the main table stands alone
            write_cold_table(runs, rows, seeds, dataset, kind, root, cold_edges, extra.get("data_path"), n_common)
        except (UsageError, OSError, ValueError) as err:
            for stale in (root / f"table_{kind}_cold.md", root / f"table_{kind}_cold.csv"):
                stale.unlink(missing_ok=True)
            print(f"warning: cold-start table not written: {err}", flush=True)
    if blend is not None:
        write_blend_table(runs, rows, seeds, blend, dataset, kind, root, n_common, scores)
    if export is not None:
        written = export_runs(runs, rows, dataset, extra, export)
        print(f"exported {len(written)} runs (result.json, test_predictions.csv.gz) to {export / dataset}",
              flush=True)
    return table


MAX_SEED_COUNT, SEED_MIN = 100, 1000  # --seeds=3: three seeds; --seeds=2022: the one seed 2022


def parse_seeds(text: str) -> list[int]:
    """``--seeds=N`` (seeds 2020 .. 2020+N-1), one seed ``--seeds=2022`` (a single number >= 1000 is a seed,
    not a count) or an explicit list ``--seeds=2021,2022``."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--seeds={text}: expected a count (3) or a list of seeds (2020,2021)") from None
    if not values:
        raise UsageError(f"--seeds={text}: expected a count (3) or a list of seeds (2020,2021)")
    if len(values) == 1 and "," not in str(text) and values[0] < SEED_MIN:
        if not 1 <= values[0] <= MAX_SEED_COUNT:
            raise UsageError(f"--seeds={text}: a count must be 1..{MAX_SEED_COUNT} (a number >= {SEED_MIN} is a seed)")
        return list(range(2020, 2020 + values[0]))
    return values


def main(argv: list[str] | None = None) -> int:
    from recbole_histllm.quick_start import parse_args

    try:
        argv = sys.argv[1:] if argv is None else argv
        if any(a in ("-h", "--help") for a in argv):
            print(__doc__)
            return 0
        argv = [a if "=" in a or a == "--debug" else f"{a}=True" for a in argv]  # bare --dry_run
        args = parse_args(["--model=table", *argv])
        args.pop("model")
        dataset = args.pop("dataset")
        kind = args.pop("table", "main")
        if kind not in DEFAULT_ROWS:
            raise UsageError(f"--table={kind}: expected one of {', '.join(DEFAULT_ROWS)}")
        rows = parse_rows(args.pop("models", DEFAULT_ROWS[kind]))
        seeds = parse_seeds(args.pop("seeds", "1"))
        llm_paths = [p for p in args.pop("llm_paths", "").split(",") if p]
        history = [int(n) for n in args.pop("history", "1,3,5,10,20").split(",") if n]
        out = Path(args.pop("output_dir", None) or args.pop("out", "saved/tables"))  # --out: the former name
        args.pop("out", None)
        search = [Path(p) for p in args.pop("runs", "").split(",") if p]
        dry_run = args.pop("dry_run", "False").lower() in ("true", "1")
        reuse_only = args.pop("reuse_only", "False").lower() in ("true", "1")
        allow_mixed = args.pop("allow_mixed", "False").lower() in ("true", "1")
        export = args.pop("export_runs", None)
        blend = args.pop("blend", None)
        if blend is not None and blend in ("True", "None", ""):
            raise UsageError("--blend needs a row label: --blend=MF")
        cold_edges = parse_edges(args.pop("cold_buckets")) if "cold_buckets" in args else DEFAULT_EDGES
        if export is not None and export in ("True", "None", ""):
            raise UsageError("--export_runs needs a folder: --export_runs=DIR")
        args.pop("debug", None)
        extra = {k: _value(v) for k, v in args.items()}
        errors = check_values(extra)[1] + [e for row in rows for e in check_values(row.overrides)[1]]
        if errors:  # the values are checked here once, not by every run this table would launch
            raise UsageError("\n".join(dict.fromkeys(errors)))
        table = build(dataset, kind, expand(kind, rows, llm_paths, history), seeds, extra, out, search, dry_run,
                      reuse_only, Path(export) if export is not None else None, cold_edges, allow_mixed, blend)
    except (UsageError, RuntimeError) as err:
        for line in str(err).splitlines() or [""]:
            print(f"error: {line}", file=sys.stderr)
        return 2
    if table is not None:
        print((out / dataset / f"table_{kind}.md").read_text(encoding="utf-8"))
        print(f"written: {out / dataset / f'table_{kind}.md'} and .csv")
        cold = out / dataset / f"table_{kind}_cold.md"
        if cold.is_file():
            print(cold.read_text(encoding="utf-8"))
            print(f"written: {cold} and .csv (cold-start breakdown)")
        blended = out / dataset / f"table_{kind}_blend.md"
        if blend is not None and blended.is_file():
            print(blended.read_text(encoding="utf-8"))
            print(f"written: {blended} and .csv (rank mean with {blend})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
