"""Is the rank blend's gain LLM signal or two MF fits averaged? For one seed: the test AUC / UAUC of the whole-split
MF run (``--mf``), of a HistLLM run's own stage-0 MF (``MF-stage0.pth`` in ``--stage0``, scored from its raw-token
tables on that run's test rows), of each ``--runs`` folder, and of each of them rank-averaged with the MF run (as
``recbole_histllm.table --blend=MF``), all on the rows every one of them scored. With ``--refit``, ``--stage0`` may be
a compact run (result.json + predictions): its stage 0 is refit in a scratch folder by the run's own sequence
(seed, data, model, ``LLMTrainer._stage0``), and its valid score is checked against the recorded one. Writes nothing
into the runs.

    python docs/results/scripts/mf_pair_blend.py --mf docs/results/runs_59cc9e7_gn5/ml-100k/MF-ff9ecd1d/seed2020 \
        --stage0 saved/tables/ml-100k/<HistLLM row>/seed2020 \
        --runs docs/results/runs_82f45a5_bf16/ml-100k/<row>/seed2020
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import torch

from recbole_histllm.run_files import common_rows, metrics_on, read_predictions
from recbole_histllm.table import rank_blend


def refit_stage0(run: Path, scratch: Path) -> Path:
    """Stage 0 of a recorded run, refit as its run did it (the same seed calls before it); the checkpoint's path."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_histllm.run_io import read_result, rebuild_config
    from recbole_histllm.trainer import LLMTrainer

    result = read_result(run)
    config = rebuild_config(result, {"show_progress": False})
    config["checkpoint_dir"] = str(scratch)
    init_seed(config["seed"], config["reproducibility"])
    train, valid, _ = data_preparation(config, create_dataset(config))
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    trainer = LLMTrainer(config, config.model_class(config, train._dataset).to(config["device"]))
    trainer._stage0(train, valid)
    recorded = result["stages"]["stage0"]["best_valid_score"]
    refit = trainer.stage_summaries["stage0"]["best_valid_score"]
    print(f"{run}: stage-0 valid AUC refit {refit}, recorded {recorded}" + ("" if refit == recorded else " (DIFFER)"))
    return scratch / "MF-stage0.pth"


def stage0_scores(run: Path, checkpoint: Path | None = None) -> pd.DataFrame:
    """The run's stage-0 MF logit ``u.i`` on the run's test rows, looked up by raw token in the checkpoint."""
    frame = read_predictions(run)
    state = torch.load(checkpoint or run / "MF-stage0.pth", map_location="cpu", weights_only=False)
    tables = {}
    for kind in ("user", "item"):
        tokens = [str(t) for t in state["other_parameter"][f"{kind}_tokens"]]
        weight = state["state_dict"][f"{kind}_embedding.weight"].float()
        index = torch.tensor([tokens.index(t) for t in frame.index.get_level_values(f"{kind}_id")])
        tables[kind] = weight[index]
    return frame.assign(score=(tables["user"] * tables["item"]).sum(-1).numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mf", type=Path, required=True, help="the whole-split MF run (test_predictions)")
    parser.add_argument("--stage0", type=Path, required=True, help="a run folder holding MF-stage0.pth")
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="LLM runs (test_predictions)")
    parser.add_argument("--refit", action="store_true", help="refit --stage0's stage 0 (a compact run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = refit_stage0(args.stage0, Path(scratch)) if args.refit else None
        held = stage0_scores(args.stage0, checkpoint)
    frames = {"MF (whole split)": read_predictions(args.mf), "stage-0 MF (held out)": held}
    frames.update({run.parent.name: read_predictions(run) for run in args.runs})
    rows = common_rows({(i, 0): frame for i, frame in enumerate(frames.values())})[0]  # one seed
    print(f"{len(rows)} common test rows")
    for name, frame in frames.items():
        alone = metrics_on(frame.loc[rows])
        line = f"{name}: AUC {alone['auc']:.4f} UAUC {alone['uauc']:.4f}"
        if name != "MF (whole split)":
            blend = metrics_on(rank_blend(frame, frames["MF (whole split)"], rows))
            line += f"; + MF (rank mean): AUC {blend['auc']:.4f} UAUC {blend['uauc']:.4f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
