"""Valid AUC / UAUC against training rows, per LLM stage, from runs' result.json files (or, for a run that
is still training or was stopped, from its ``<Model>-stage{k}.pth`` files, rewritten after every epoch).

    python scripts/learning_curve.py RUN_DIR [RUN_DIR ...] --out docs/results/learning_curve_ml100k

Every stage epoch records its valid metrics; rows are counted cumulatively within the stage. A
stage taken from another run (``source: given``, e.g. a shared stage 1) is skipped, so each
trained stage is counted once. Writes ``<out>.csv`` and ``<out>.png`` (one panel per stage).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def stage_files_result(run: Path) -> dict:
    """What ``result.json`` would hold for the curve, read from the stage files of an unfinished run: each
    ``<Model>-stage{k}.pth`` holds the epochs so far (``history``, ``rows``) or, once done, its summary."""
    import torch

    stages, model = {}, None
    for path in sorted(run.glob("*-stage[1-9]*.pth")):
        name, stage = path.stem.rsplit("-", 1)
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("done"):
            stages[stage] = saved["summary"]
        else:
            stages[stage] = {"epochs": saved["history"], "rows_trained": saved["rows"], "valid_rows": None}
        model = name
    seed = run.name.removeprefix("seed")
    return {"model": model, "seed": int(seed) if seed.isdigit() else None, "stages": stages}


def curve_rows(run: Path) -> list[dict]:
    """One row per (stage, epoch) that ``run`` trained itself."""
    finished = run / "result.json"
    result = json.loads(finished.read_text(encoding="utf-8")) if finished.is_file() else stage_files_result(run)
    rows = []
    for stage, summary in (result.get("stages") or {}).items():
        epochs = (summary or {}).get("epochs") if isinstance(summary, dict) else None
        if not epochs or summary.get("source") == "given":
            continue
        per_epoch = summary["rows_trained"] / len(epochs)
        for k, epoch in enumerate(epochs, 1):
            rows.append({"run": str(run), "model": result["model"], "seed": result["seed"], "stage": stage,
                         "rows": int(round(k * per_epoch)), "valid_auc": epoch["auc"], "valid_uauc": epoch["uauc"],
                         "loss": round(epoch["loss"], 4), "valid_rows": summary.get("valid_rows")})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", required=True, type=Path, help="path without suffix for .csv and .png")
    args = parser.parse_args(argv)
    frame = pd.DataFrame([r for run in args.runs for r in curve_rows(run)])
    if frame.empty:
        parser.error("no trained stage epochs in the given runs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out.with_suffix(".csv"), index=False)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = sorted(frame.stage.unique())
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.6), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        for (model, seed), block in frame[frame.stage == stage].groupby(["model", "seed"]):
            ax.plot(block.rows, block.valid_auc, marker="o", label=f"{model} seed {seed}")
        ax.set(title=f"{stage}: valid AUC", xlabel="training rows", ylabel="AUC")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    print(frame.to_string(index=False))
    print(f"written: {args.out.with_suffix('.csv')} and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
