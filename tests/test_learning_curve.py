"""scripts/learning_curve.py: valid metrics against cumulative training rows, shared stages once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import learning_curve  # noqa: E402


def write_run(path: Path, stage1_source: str | None) -> Path:
    epochs = [{"epoch": k, "loss": 0.6, "auc": 0.7 + k / 100, "uauc": 0.6} for k in range(3)]
    stage1 = {"rows_trained": 1024, "valid_rows": 800, "epochs": [{**epochs[0], "auc": 0.52}]}
    if stage1_source:
        stage1["source"] = stage1_source
    result = {"model": "HistLLM", "seed": 2020, "stages": {
        "stage0": {"model": "MF", "source": "trained", "time_s": 3.0},
        "stage1": stage1,
        "stage2": {"rows_trained": 3072, "valid_rows": 800, "epochs": epochs}}}
    path.mkdir(parents=True)
    (path / "result.json").write_text(json.dumps(result))
    return path


def test_curve_counts_rows_cumulatively_and_skips_given_stages(tmp_path):
    own = write_run(tmp_path / "a", None)
    shared = write_run(tmp_path / "b", "given")
    out = tmp_path / "curve"
    assert learning_curve.main([str(own), str(shared), "--out", str(out)]) == 0
    frame = pd.read_csv(out.with_suffix(".csv"))
    assert frame[frame.stage == "stage2"].rows.tolist() == [1024, 2048, 3072] * 2
    assert frame[frame.stage == "stage1"].rows.tolist() == [1024]  # the given stage 1 is not counted again
    assert frame[frame.stage == "stage2"].valid_auc.tolist()[:3] == [0.7, 0.71, 0.72]
    assert out.with_suffix(".png").stat().st_size > 1000


def test_curve_of_a_run_still_training_from_its_stage_files(tmp_path):
    import torch

    run = tmp_path / "seed2021"
    run.mkdir()
    history = [{"epoch": k, "loss": 0.6, "auc": 0.74 + k / 100, "uauc": 0.6} for k in range(3)]
    torch.save({"done": False, "epoch": 2, "history": history, "rows": 3072}, run / "HistLLM-stage2.pth")
    torch.save({"done": True, "summary": {"rows_trained": 0, "epochs": []}}, run / "HistLLM-stage1.pth")
    out = tmp_path / "curve"
    assert learning_curve.main([str(run), "--out", str(out)]) == 0
    frame = pd.read_csv(out.with_suffix(".csv"))
    assert frame.stage.tolist() == ["stage2"] * 3 and frame.rows.tolist() == [1024, 2048, 3072]
    assert frame.seed.tolist() == [2021] * 3 and frame.model.tolist() == ["HistLLM"] * 3
