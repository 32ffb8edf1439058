"""Use a finished run of ``run_recbole_histllm.py``: reload it, score new (user, item) pairs, re-evaluate it.

:func:`load_run` rebuilds a run folder's config (from ``result.json``'s recorded ``config``), dataset,
splits, model and weights: an LLM recommender gets its backbone from the recorded ``llm_path`` and its
trainable weights (LoRA, mapping modules, UHEM and the CIA/MF tables, all in ``checkpoint_state``) from
``<Model>-best.pth``; any other model (MF, VBPR, DeepFM ...) is restored from RecBole's checkpoint
(``<Model>-<date>.pth``). :meth:`Run.score` scores raw-id pairs with a per-row ``status``;
:func:`evaluate_run` scores the saved model on the test split again into a NEW folder (``--eval_only``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from logging import getLogger
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from dataset_converters.core import build_history, read_inter
from recbole_histllm.config import Config
from recbole_histllm.config_schema import check_values
from recbole_histllm.model.llm_recommender import LLMRecommender
from recbole_histllm.quick_start import (
    EVAL_ONLY_FLAGS,
    _jsonable,
    claim_output_dir,
    code_version,
    default_output_dir,
    package_versions,
    parse_args,
    subsample_test,
    write_predictions,
)
from recbole_histllm.utils import InputError, UsageError, get_trainer, run_command, wants_debug

OK, MALFORMED, UNKNOWN_USER, UNKNOWN_ITEM = "ok", "malformed", "unknown_user", "unknown_item"
# keys the configuration derives on every build (device, paths, registry types): never replayed from a record
DERIVED_KEYS = {"device", "checkpoint_dir", "data_path", "model", "dataset", "MODEL_TYPE", "MODEL_INPUT_TYPE",
                "eval_type", "local_rank", "world_size", "nproc", "single_spec", "state", "gpu_id", "use_gpu",
                "eval_only", "run", "output_dir", "config_files", "debug"}


def read_result(folder: Path) -> dict:
    """``<folder>/result.json`` as a dict; a missing or unreadable file is an :class:`InputError`."""
    path = folder / "result.json"
    if not path.is_file():
        raise InputError(f"{folder}: no result.json (not an output folder of run_recbole_histllm.py)")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: unreadable ({err})") from None
    if not isinstance(result, dict) or not {"model", "dataset"} <= set(result):
        raise InputError(f"{path}: no 'model' and 'dataset' entries (not a result.json of run_recbole_histllm.py)")
    return result


def rebuild_config(result: dict, overrides: dict[str, Any] | None = None) -> Config:
    """The run's Config: today's defaults for its model and dataset, then every recorded value that differs
    from them (except derived keys), then ``overrides``. ``data_path`` is the recorded one's parent
    (``<root>/<dataset>`` -> ``<root>``) unless overridden."""
    overrides = dict(overrides or {})
    recorded = result.get("config") or {}
    model, dataset = result["model"], result["dataset"]
    if "data_path" not in overrides:
        overrides["data_path"] = str(Path(recorded.get("data_path") or f"dataset/{dataset}").parent)
    try:
        default = Config(model=model, dataset=dataset, config_dict=dict(overrides))
        replay = {k: v for k, v in recorded.items() if k not in DERIVED_KEYS and k not in overrides
                  and _jsonable(default.final_config_dict.get(k)) != v}
        # a switch on today that the run does not record came after it: the run computed without it (the table
        # runner matches runs the same way), e.g. HistLLM's cia_interaction for runs recorded before that key
        later = sorted(k for k, v in default.final_config_dict.items() if v is True and recorded
                       and k not in recorded and k not in overrides and k not in DERIVED_KEYS)
        if later:
            getLogger().warning(f"{len(later)} switch(es) on by today's defaults are absent from the run's result.json"
                                f" (added after it): rebuilt with them off: {', '.join(later)}")
        config = Config(model=model, dataset=dataset, config_dict={**dict.fromkeys(later, False), **replay,
                                                                   **overrides})
    except (NotImplementedError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise InputError(f"cannot rebuild the configuration of {model} on {dataset}: {err}") from err
    unknown = sorted(set(overrides) - config.known_keys())
    if unknown:
        raise UsageError(f"unknown config key(s) {', '.join(unknown)}; see docs/config_keys.md")
    given = {k: config[k] for k in overrides if k != "data_path"}  # (data_path: checked by load_run, never made)
    fixed, errors = check_values(given, dict.fromkeys(given, "cmd"))
    if errors:
        raise UsageError("\n".join(errors))
    for key, value in fixed.items():
        config[key] = value
    return config


def _weights_file(folder: Path, result: dict, llm: bool) -> Path:
    """The run's saved weights: ``result.json``'s ``checkpoint`` (by file name, inside ``folder``), else
    ``<Model>-best.pth`` (LLM models) or the newest ``<Model>-*.pth`` (RecBole's trainer)."""
    model = result["model"]
    recorded = result.get("checkpoint")
    candidates = [folder / Path(recorded).name] if recorded else []
    if llm:
        candidates.append(folder / f"{model}-best.pth")
    else:
        candidates += sorted(folder.glob(f"{model}-*.pth"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        if path.is_file():
            return path
    raise InputError(f"{folder}: no saved weights of {model} (looked for "
                     f"{', '.join(p.name for p in candidates) or model + '-*.pth'})")


@dataclass
class Run:
    """A reloaded run: ``config``, the full ``dataset``, RecBole's three loaders, and the model in eval mode."""

    folder: Path
    result: dict
    config: Config
    dataset: Any
    train_data: Any
    valid_data: Any
    test_data: Any
    model: torch.nn.Module
    weights: Path
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def is_llm(self) -> bool:
        """An LLM recommender: scores any item of the dataset's item files from its text (and image)."""
        return isinstance(self.model, LLMRecommender)

    def trainer(self, checkpoint_dir: str | Path | None = None):
        """The model's trainer (built once; ``checkpoint_dir``: where it may write, never the run folder)."""
        if "trainer" not in self._cache:
            if checkpoint_dir is not None:
                self.config["checkpoint_dir"] = str(checkpoint_dir)
            self._cache["trainer"] = get_trainer(self.config["MODEL_TYPE"], self.config["model"])(self.config,
                                                                                                   self.model)
        return self._cache["trainer"]

    # ---- what the model knows -----------------------------------------------------------------
    def train_counts(self, kind: str) -> np.ndarray:
        """Train rows per internal user (``kind="user"``) or item id."""
        key = f"train_{kind}"
        if key not in self._cache:
            train = self.train_data._dataset
            field_name = train.uid_field if kind == "user" else train.iid_field
            size = train.user_num if kind == "user" else train.item_num
            self._cache[key] = np.bincount(train.inter_feat[field_name].numpy(), minlength=size)
        return self._cache[key]

    def raw_interactions(self) -> pd.DataFrame:
        """The dataset's ``.inter`` file (user_id, item_id, label, timestamp), read once."""
        if "inter" not in self._cache:
            path = Path(self.config["data_path"]) / f"{self.config['dataset']}.inter"
            inter = read_inter(path)[["user_id", "item_id", "label", "timestamp"]]
            self._cache["inter"] = inter.assign(label=pd.to_numeric(inter.label, errors="coerce"),
                                                timestamp=pd.to_numeric(inter.timestamp, errors="coerce"))
        return self._cache["inter"]

    def histories(self, users: list[str], stamps: np.ndarray) -> list[list[str]]:
        """Raw item ids each user liked strictly before each timestamp (oldest first, at most the dataset's
        history width), from the ``.inter`` file by the converter's own :func:`build_history`."""
        hist_field = self.config["HISTORY_FIELD"] or "history"
        width = max(int(self.dataset.field2seqlen.get(hist_field, 1)), 1)
        inter = self.raw_interactions()
        inter = inter[inter.user_id.isin(set(users))]
        queries = pd.DataFrame({"user_id": users, "item_id": "", "label": -1.0, "timestamp": stamps,
                                "query": np.arange(len(users))})
        merged = build_history(pd.concat([inter.assign(query=-1), queries], ignore_index=True), width,
                               show_progress=False)
        merged = merged[merged["query"] >= 0].sort_values("query")
        return [h.split() if h else [] for h in merged["history"].tolist()]

    # ---- scoring -----------------------------------------------------------------------------
    def score_ids(self, users: np.ndarray, items: np.ndarray, histories: list[list[str]],
                  stamps: np.ndarray) -> np.ndarray:
        """Scores of internal (user, item) ids with raw-id histories, in the order given (LLM models: in the
        trainer's own batches, so a run's test rows score exactly as in its test pass)."""
        ds = self.dataset
        hist_field = self.config["HISTORY_FIELD"] or "history"
        n = len(users)
        columns = ds.inter_feat.columns
        fields: dict[str, torch.Tensor] = {}
        for name in columns:
            template = ds.inter_feat[name]
            fields[name] = torch.zeros((n, *template.shape[1:]), dtype=template.dtype)
        fields[ds.uid_field] = torch.as_tensor(users, dtype=torch.long)
        fields[ds.iid_field] = torch.as_tensor(items, dtype=torch.long)
        if ds.time_field in columns:
            finite = np.where(np.isfinite(stamps), stamps, float(ds.inter_feat[ds.time_field].max()))
            fields[ds.time_field] = torch.as_tensor(finite, dtype=fields[ds.time_field].dtype)
        if hist_field in columns:
            table = fields[hist_field]
            width = table.shape[1] if table.dim() > 1 else 1
            for row, hist in enumerate(histories):
                ids = ds.token2id(ds.iid_field, hist[-width:]) if hist else []
                table[row, : len(ids)] = torch.as_tensor(np.atleast_1d(ids), dtype=table.dtype)
        subset = ds.copy(Interaction(fields))
        rows = np.arange(n)
        if n == 0:
            return np.empty(0)
        if self.is_llm:  # the staged trainer's own scoring: the same batches as its test pass
            return self.trainer().score_rows(subset, rows, desc="score")["score"]
        size = int(self.config["eval_batch_size"])
        out = []
        with torch.no_grad():
            for start in range(0, n, size):
                batch = subset[torch.as_tensor(rows[start : start + size])].to(self.config["device"])
                out.append(self.model.predict(batch).float().cpu().numpy().reshape(-1))
        return np.concatenate(out)

    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` (raw ``user_id``, ``item_id``, optional ``timestamp``) with ``score`` and ``status`` added.

        The history of a row is the user's liked items strictly before its timestamp (every like of the
        user when the timestamp is absent or empty). ``status``: ``ok``; ``malformed`` (empty id, a
        timestamp that is not a number); ``unknown_user`` (not in the dataset; for ID-based models also a
        user without train rows); ``unknown_item`` (not in the dataset's item files; for ID-based models
        also an item without train rows, which they never learnt). ``score`` is empty unless ``ok``.
        """
        missing = {"user_id", "item_id"} - set(frame.columns)
        if missing:
            raise InputError(f"input has no column {', '.join(sorted(missing))} (needs user_id,item_id[,timestamp])")
        ds = self.dataset
        out = frame.copy()
        users = out["user_id"].fillna("").astype(str).str.strip().tolist()
        items = out["item_id"].fillna("").astype(str).str.strip().tolist()
        raw_time = out["timestamp"].fillna("").astype(str).str.strip() if "timestamp" in out else None
        stamps = np.full(len(out), math.inf)
        status = np.array([OK] * len(out), dtype=object)
        if raw_time is not None:
            given = raw_time != ""
            parsed = pd.to_numeric(raw_time.where(given, None), errors="coerce").to_numpy(dtype=float)
            bad = given.to_numpy() & ~np.isfinite(parsed)
            status[bad] = MALFORMED
            stamps = np.where(given.to_numpy() & ~bad, parsed, math.inf)
        user_map, item_map = ds.field2token_id[ds.uid_field], ds.field2token_id[ds.iid_field]
        uid = np.array([user_map.get(u, 0) if u != "[PAD]" else 0 for u in users], dtype=np.int64)
        iid = np.array([item_map.get(i, 0) if i != "[PAD]" else 0 for i in items], dtype=np.int64)
        if not self.is_llm:  # ID-based: only what the train split taught it
            uid = np.where(self.train_counts("user")[uid] > 0, uid, 0)
            iid = np.where(self.train_counts("item")[iid] > 0, iid, 0)
        empty = np.array([not u or not i for u, i in zip(users, items)])
        status[(status == OK) & empty] = MALFORMED
        status[(status == OK) & (uid == 0)] = UNKNOWN_USER
        status[(status == OK) & (iid == 0)] = UNKNOWN_ITEM
        good = np.flatnonzero(status == OK)
        scores = np.full(len(out), np.nan)
        if len(good):
            hist = self.histories([users[i] for i in good], stamps[good])
            scores[good] = self.score_ids(uid[good], iid[good], hist, stamps[good])
        out["score"] = scores
        out["status"] = status
        return out


def _with_stage0(model, state: dict, folder: Path, train_dataset) -> dict:
    """``state`` completed by the model's stage-0 tables: runs whose ``<Model>-best.pth`` predates saving the
    CIA/MF (or BinLLM code) tables keep them only in ``<Name>-stage0.pth`` (or the recorded ``mf_checkpoint``
    / ``hash_checkpoint``); they are loaded from there (by raw id) when the best file lacks them."""
    spec = model.collaborative_model()
    if spec is None or not set(model.checkpoint_state()) - set(state):
        return state
    given = model.config[spec.checkpoint_key] if spec.checkpoint_key in model.config else None
    path = Path(given) if given else folder / f"{spec.name}-stage0.pth"
    if not path.is_file():
        return state  # load_checkpoint_state names what is missing
    before = {k: v.clone() for k, v in model.checkpoint_state().items()}  # (detached views of live tensors)
    model.load_collaborative(path, train_dataset)
    after = model.checkpoint_state()
    loaded = {k: v for k, v in after.items() if k not in state and not torch.equal(v, before[k])}
    return {**loaded, **state}


def load_run(folder: str | Path, **overrides: Any) -> Run:
    """Rebuild a run of ``run_recbole_histllm.py`` from its output folder (never written to).

    ``overrides``: config keys replacing the recorded ones (``data_path`` when the data moved,
    ``eval_batch_size``, ``test_rows`` ...). Raises :class:`InputError` for a folder that is not a run.
    """
    folder = Path(folder)
    result = read_result(folder)
    overrides.setdefault("show_progress", False)
    config = rebuild_config(result, overrides)
    inter = Path(config["data_path"]) / f"{config['dataset']}.inter"
    if not inter.is_file():
        raise InputError(f"run {folder}: its data {inter} is not there (give data_path=<root of the dataset folder>)")
    config["checkpoint_dir"] = str(folder)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = config.model_class(config, train_data._dataset).to(config["device"])
    llm = isinstance(model, LLMRecommender)
    weights = _weights_file(folder, result, llm)
    saved = torch.load(weights, map_location="cpu", weights_only=False)
    try:
        if llm:
            model.load_checkpoint_state(_with_stage0(model, saved["state_dict"], folder, train_data._dataset))
        else:
            model.load_state_dict(saved["state_dict"])
            model.load_other_parameter(saved.get("other_parameter"))
    except (KeyError, RuntimeError, TypeError) as err:
        raise InputError(f"{weights}: does not fit {result['model']} rebuilt from {folder}/result.json ({err})") \
            from None
    model.eval()
    getLogger().info(f"loaded {result['model']} on {result['dataset']} from {weights}")
    return Run(folder, result, config, dataset, train_data, valid_data, test_data, model, weights)


def summarize(status: pd.Series) -> str:
    """``"95 of 100 rows scored; unknown_user: 2, malformed: 3"``."""
    counts = Counter(status.tolist())
    rest = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if k != OK)
    return f"{counts.get(OK, 0)} of {len(status)} rows scored" + (f"; {rest}" if rest else "")


def evaluate_run(folder: str | Path, output_dir: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """Score a saved run on its test split (``test_rows`` as recorded unless overridden) without training and
    write ``result.json`` and ``test_predictions.csv`` into ``output_dir`` (a NEW folder; default
    ``saved/<Model>-<dataset>-eval-<time>``). Returns the new result."""
    folder = Path(folder)
    start = time.time()
    run = load_run(folder, **overrides)
    model, dataset = run.result["model"], run.result["dataset"]
    output_dir = Path(output_dir) if output_dir else claim_output_dir(default_output_dir(f"{model}-eval", dataset))
    if output_dir.resolve() == folder.resolve() or (output_dir / "result.json").exists():
        raise UsageError(f"--output_dir={output_dir} already holds a result: eval_only writes a new folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    full_rows = len(run.test_data._dataset)
    test_data = subsample_test(run.test_data, run.config)
    load_s = time.time() - start
    start = time.time()
    trainer = run.trainer(checkpoint_dir=output_dir)
    test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=run.config["show_progress"])
    predictions = trainer.eval_collector.last_data_struct
    result = {
        "model": model, "dataset": dataset, "seed": run.config["seed"], "eval_only_of": str(folder),
        "weights": str(run.weights),
        "test_result": {k: float(v) for k, v in (test_result or {}).items()},
        "test_rows": len(predictions["rec.score"]), "test_rows_in_split": full_rows,
        "wall_time_s": {"load": load_s, "test": time.time() - start},
        "versions": package_versions(), "code": code_version(), "config": run.config.final_config_dict,
        "finished": datetime.now().isoformat(timespec="seconds"), "output_dir": str(output_dir),
    }
    write_predictions(output_dir / "test_predictions.csv", test_data._dataset, predictions)
    with open(output_dir / "result.json", "w", encoding="utf-8") as handle:
        json.dump(_jsonable(result), handle, indent=2)
    return result


def cli_main(argv: list[str] | None, usage: str, body) -> int:
    """Shared frame of the run commands: ``--key=value`` arguments (:func:`quick_start.parse_args`), ``--run``
    required, ``body(args)`` run; a :class:`UsageError` is one line on stderr and exit 2 (``--debug``:
    the traceback)."""
    argv = sys.argv[1:] if argv is None else list(argv)

    def command() -> int:
        if any(a in ("-h", "--help") for a in argv):
            print(usage)
            return 0
        args = parse_args(["--model=_", "--dataset=_", *argv])
        for key in ("model", "dataset", "debug"):
            args.pop(key, None)
        if not args.get("run"):
            raise UsageError(f"--run=DIR is required. {usage}")
        return body(args)

    return run_command(command, wants_debug(argv))


EVAL_USAGE = ("usage: python run_recbole_histllm.py --eval_only --run=DIR [--test_rows=N] [--output_dir=DIR] "
              "[--any_config_key=value ...]")


def eval_only_main(argv: list[str]) -> int:
    """``run_recbole_histllm.py --eval_only --run=DIR ...``: :func:`evaluate_run` from the command line."""
    argv = [a for a in argv if a not in EVAL_ONLY_FLAGS]

    def body(args: dict[str, str]) -> int:
        output_dir = args.pop("output_dir", None)
        result = evaluate_run(args.pop("run"), output_dir, **args)
        print(f"test result: {result['test_result']} ({result['test_rows']} rows)")
        print(f"results written to {result['output_dir']}")
        return 0

    return cli_main(argv, EVAL_USAGE, body)
