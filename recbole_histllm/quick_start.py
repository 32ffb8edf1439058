"""The pipeline behind ``run_recbole_histllm.py``: config, data, model, trainer, result files.

Built by hand (as RecBole-GNN does) because RecBole's ``run_recbole`` only finds models
inside RecBole and its module imports ray.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from datetime import datetime
from importlib import metadata
from logging import getLogger
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_logger, init_seed, set_color

from recbole_histllm import distributed
from recbole_histllm.config import Config
from recbole_histllm.config_schema import check_config
from recbole_histllm.split import impression_field
from recbole_histllm.utils import PROPERTIES_DIR, UsageError, config_value, get_trainer, run_command, wants_debug

USAGE = (
    "usage: python run_recbole_histllm.py --model=NAME --dataset=NAME "
    '[--config_files="a.yaml b.yaml"] [--output_dir=DIR] [--debug] [--any_recbole_key=value ...]'
    "; or --eval_only --run=DIR [--test_rows=N]"
)
#: the arguments that make the command line re-score a finished run (recbole_histllm.cli) instead of training
EVAL_ONLY_FLAGS = ("--eval_only", "--eval_only=True", "--eval_only=true")
# RecBole builds a GradScaler the deprecated way every epoch; the warning says nothing to users.
warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.GradScaler", category=FutureWarning)
VERSIONED_PACKAGES = ("recbole", "torch", "transformers", "peft", "numpy", "pandas", "scikit-learn")


def parse_args(argv: list[str]) -> dict[str, str]:
    """Parse ``--key=value`` (and the bare flag ``--debug``) into a dict of strings."""
    args: dict[str, str] = {}
    for arg in argv:
        if arg in ("-h", "--help"):
            raise UsageError(USAGE)
        if arg == "--debug":
            args["debug"] = "True"
            continue
        if not arg.startswith("--") or "=" not in arg:
            raise UsageError(f"cannot read argument '{arg}': expected --key=value. {USAGE}")
        key, value = arg[2:].split("=", 1)
        if value.strip().lower() in ("~", "null"):  # YAML's null; RecBole would keep the string
            value = "None"
        if key in args and args[key] != value:
            raise UsageError(f"--{key} given twice with different values")
        args[key] = value
    for required in ("model", "dataset"):
        if required not in args:
            raise UsageError(f"--{required} is required. {USAGE}")
    return args


def check_dataset(config: Config) -> None:
    """Fail early, with the path and the converter to run, when the data folder is missing."""
    name, folder = config["dataset"], Path(config["data_path"])
    inter = folder / f"{name}.inter"
    if inter.is_file() or name == "ml-100k":
        return
    if not (PROPERTIES_DIR / "dataset" / f"{name}.yaml").is_file() and not folder.exists():
        raise UsageError(
            f"unknown dataset '{name}': no properties/dataset/{name}.yaml and no data folder {folder}"
        )
    raise UsageError(
        f"dataset '{name}': {inter} not found; convert the raw data first, e.g. "
        f"python -m dataset_converters.{name} --raw DIR --output_dir {folder}"
    )


def ensure_dataset(config: Config) -> Path:
    """Make sure ``<data_path>/<dataset>.inter`` exists; build ml-100k on first use."""
    check_dataset(config)
    folder = Path(config["data_path"])
    if config["dataset"] == "ml-100k" and not (folder / "ml-100k.inter").is_file():
        from dataset_converters.ml100k import build_ml100k

        getLogger().info(f"building the ml-100k CTR files into {folder} (first use)")
        build_ml100k(folder)
    return folder


def default_output_dir(model: str, dataset: str) -> Path:
    """``saved/<model>-<dataset>-<time>``; under torchrun ``saved/<model>-<dataset>-torchrun-<run id>``, so that
    every rank names the same folder (their clocks may straddle a second; ``--standalone`` gives each launch its
    own run id)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if distributed.launched_world_size() > 1 and run_id not in ("", "none"):
        return Path("saved") / f"{model}-{dataset}-torchrun-{run_id}"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("saved") / f"{model}-{dataset}-{stamp}"


def claim_output_dir(path: Path) -> Path:
    """Create ``path`` as a new folder, or ``path-2``, ``path-3``, ... when another run holds the name already:
    two runs started in the same second would otherwise share ``saved/<model>-<dataset>-<time>`` and
    overwrite each other's checkpoints."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise UsageError(f"{path}: no free folder name (tried -2 to -999); pass --output_dir")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in (*VERSIONED_PACKAGES, "recbole-histllm"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def code_version() -> dict[str, Any]:
    """Which code made a run: the package version and, in a git checkout, the commit and whether tracked
    files differed from it (``dirty``); commit and dirty are None outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    version = {"package": package_versions().get("recbole-histllm"), "commit": None, "dirty": None}
    if not (root / ".git").exists():
        return version
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return version
    if commit.returncode == 0:
        version.update(commit=commit.stdout.strip(), dirty=bool(status.stdout.strip()))
    return version


def write_predictions(path: Path, dataset, data_struct) -> int:
    """Write ``user_id,item_id,label,score`` (raw ids; then ``impression_id`` on datasets with an
    ``IMPRESSION_FIELD``) for every scored row; return the count."""
    users = dataset.id2token(dataset.uid_field, data_struct["data.user"].numpy())
    items = dataset.id2token(dataset.iid_field, data_struct["data.item"].numpy())
    labels = data_struct["data.label"].squeeze(-1).numpy()
    scores = data_struct["rec.score"].squeeze(-1).numpy()
    impression = impression_field(dataset.config)
    extra = [dataset.id2token(impression, data_struct["data.impression"].numpy())] \
        if impression and "data.impression" in data_struct else []
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "label", "score"] + (["impression_id"] if extra else []))
        for row in zip(users, items, labels, scores, *extra):
            writer.writerow([row[0], row[1], f"{row[2]:g}", repr(float(row[3])), *row[4:]])
    return len(scores)


def subsample_test(test_data, config: Config):
    """The test loader restricted to a fixed random subset of test users (all their rows) whose rows
    add up to at least ``test_rows``; ``test_data`` itself when ``test_rows`` is unset or covers all.

    Whole users are kept so that UAUC sees every row of the users it scores; the subset depends only
    on the seed and the split, so runs of different models with the same ``test_rows`` score the same rows.
    """
    budget = config_value(config, "test_rows")
    dataset = test_data._dataset
    if budget is None or int(budget) >= len(dataset):
        return test_data
    users = dataset.inter_feat[dataset.uid_field].numpy()
    unique, counts = np.unique(users, return_counts=True)
    order = np.random.default_rng(int(config["seed"])).permutation(len(unique))
    take = int(np.searchsorted(np.cumsum(counts[order]), int(budget))) + 1
    rows = np.nonzero(np.isin(users, unique[order[:take]]))[0]
    subset = dataset.copy(dataset.inter_feat[torch.from_numpy(rows)])
    getLogger().info(f"test_rows={budget}: testing on {len(rows)} of {len(dataset)} test rows "
                     f"({take} of {len(unique)} users, fixed by the seed)")
    return type(test_data)(config, subset, test_data._sampler, shuffle=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return str(value)


def run(
    model: str,
    dataset: str,
    config_file_list: list[str] | None = None,
    config_dict: dict[str, Any] | None = None,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``dataset``, evaluate on valid and test, write the result files.

    Returns the content of ``result.json`` and ``output_dir``, the folder that received ``result.json``,
    ``test_predictions.csv`` and the best checkpoint (default: a new ``saved/<model>-<dataset>-<time>``).
    """
    config_dict = dict(config_dict or {})
    claim = not output_dir and distributed.launched_world_size() == 1  # a default name: make it this run's own
    output_dir = Path(output_dir) if output_dir else default_output_dir(model, dataset)
    try:
        config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    except (NotImplementedError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise UsageError(f"bad configuration for {model} on {dataset}: {err}") from err
    unknown = config.unknown_keys()
    if unknown:
        raise UsageError(
            f"unknown config key(s) {', '.join(unknown)} (from the command line or "
            f"{' '.join(config_file_list or []) or 'no file'}); see properties/ for the keys"
        )
    check_config(config)  # every bad value at once, before any data or model is built
    check_dataset(config)
    if claim:
        output_dir = claim_output_dir(output_dir)
    else:
        output_dir.mkdir(parents=True, exist_ok=True)
    config["checkpoint_dir"] = str(output_dir)
    init_seed(config["seed"], config["reproducibility"])
    with distributed.main_first():  # RecBole creates ./log/<model> unguarded: ranks would race for it
        init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    code = code_version()  # the checkout this run imported: a commit or an edit during a long run must not relabel it

    times: dict[str, float] = {}
    start = time.time()
    with distributed.main_first():  # under torchrun rank 0 builds a missing ml-100k folder alone
        ensure_dataset(config)
    data = create_dataset(config)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)
    full_test_rows = len(test_data._dataset)
    test_data = subsample_test(test_data, config)
    times["data"] = time.time() - start

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = config.model_class(config, train_data._dataset).to(config["device"])
    logger.info(net)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    best = {"epoch": None}

    def record_best(epoch: int, valid_score: float) -> None:  # RecBole's fit: after each validation
        if getattr(trainer, "cur_step", None) == 0:  # early_stopping resets it when the score improved
            best["epoch"] = epoch

    start = time.time()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=True, show_progress=config["show_progress"], callback_fn=record_best
    )
    times["train"] = time.time() - start
    start = time.time()
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=config["show_progress"])
    times["test"] = time.time() - start

    predictions = trainer.eval_collector.last_data_struct  # under torchrun: every rank's rows, gathered
    n_rows = len(predictions["rec.score"])
    if n_rows != len(test_data._dataset):
        logger.warning(f"test predictions: {n_rows} rows scored, the test split has {len(test_data._dataset)}")
    result = {
        "model": config["model"],
        "dataset": config["dataset"],
        "seed": config["seed"],
        "best_epoch": best["epoch"] if best["epoch"] is not None else getattr(trainer, "best_epoch", None),
        "best_valid_score": best_valid_score,
        "best_valid_result": {k: float(v) for k, v in (best_valid_result or {}).items()},
        "test_result": {k: float(v) for k, v in (test_result or {}).items()},
        "test_rows": n_rows,
        "test_rows_in_split": full_test_rows,
        "wall_time_s": times,
        "stages": getattr(trainer, "stage_summaries", None),
        "precision": getattr(net, "precision", None),  # LLM models: "bf16 autocast" or "float32" (CPU-dependent)
        "checkpoint": trainer.saved_model_file,
        "versions": package_versions(),
        "code": code,
        "config": config.final_config_dict,
        "finished": datetime.now().isoformat(timespec="seconds"),
    }
    finish_code = code_version()
    if finish_code != code:  # the checkout changed while the run trained: say so, keep what it started from
        result["code_at_finish"] = finish_code
        logger.warning(f"the checkout changed during the run: started at {code}, finished at {finish_code}")
    if distributed.is_main():  # under torchrun every rank holds the same results; rank 0 writes them
        write_predictions(output_dir / "test_predictions.csv", test_data._dataset, predictions)
        with open(output_dir / "result.json", "w", encoding="utf-8") as handle:
            json.dump(_jsonable(result), handle, indent=2)
    logger.info(set_color("best valid ", "yellow") + f": {result['best_valid_result']}")
    logger.info(set_color("test result", "yellow") + f": {result['test_result']}")
    return {**result, "output_dir": str(output_dir)}  # (not in result.json: a folder may be moved)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: bad input -> one line on stderr and exit code 2 (``--debug``: traceback)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in EVAL_ONLY_FLAGS for a in argv):
        print("error: --eval_only re-scores a finished run without training: "
              "python run_recbole_histllm.py --eval_only --run=DIR (recbole_histllm.cli)", file=sys.stderr)
        return 2

    def train() -> int:
        args = parse_args(argv)
        model, dataset = args.pop("model"), args.pop("dataset")
        files = args.pop("config_files", "").split()
        output_dir = args.pop("output_dir", "") or None
        args.pop("debug", None)
        result = run(model, dataset, files, args, output_dir)
        print(f"results written to {result['output_dir']}")
        return 0

    return run_command(train, wants_debug(argv))


if __name__ == "__main__":
    sys.exit(main())
