"""The CLI end to end: result files, numbers re-checked with sklearn, bad input -> exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from recbole_histllm.quick_start import main

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "run_recbole_histllm.py")]


def recompute(predictions: pd.DataFrame) -> tuple[float, float]:
    auc = roc_auc_score(predictions.label, predictions.score)
    per_user = [
        roc_auc_score(g.label, g.score) for _, g in predictions.groupby("user_id") if g.label.nunique() == 2
    ]
    return auc, float(np.mean(per_user))


@pytest.mark.parametrize("model,epochs", [("MF", 3), ("DeepFM", 1)])
def test_train_and_report_files(model, epochs, ml100k_root, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([f"--model={model}", "--dataset=ml-100k", f"--data_path={ml100k_root}", f"--epochs={epochs}",
                 f"--output_dir={out}", "--show_progress=False"])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith(str(out))
    result = json.loads((out / "result.json").read_text())
    predictions = pd.read_csv(out / "test_predictions.csv", dtype={"user_id": str, "item_id": str})
    assert list(predictions.columns) == ["user_id", "item_id", "label", "score"]
    assert len(predictions) == result["test_rows"] == 9596  # every test row once
    assert not predictions.duplicated(["user_id", "item_id"]).any()
    auc, uauc = recompute(predictions)
    assert result["test_result"]["auc"] == pytest.approx(auc, abs=1e-4)
    assert result["test_result"]["uauc"] == pytest.approx(uauc, abs=1e-4)
    assert auc > 0.6  # above chance (0.5) after a single epoch already
    assert {"best_valid_result", "best_epoch", "config", "wall_time_s", "seed", "versions"} <= set(result)
    assert result["config"]["model"] == model
    # raw ids, as in the data files
    inter = pd.read_csv(ml100k_root / "ml-100k" / "ml-100k.inter", sep="\t", dtype=str)
    assert set(predictions.user_id) <= set(inter["user_id:token"])


def test_test_rows_keeps_whole_users_fixed_by_seed(ml100k_root, tmp_path):
    """``test_rows`` scores a seed-fixed subset of test users with all their rows, and nothing else."""
    common = ["--model=MF", "--dataset=ml-100k", f"--data_path={ml100k_root}", "--epochs=1", "--show_progress=False"]
    assert main([*common, f"--output_dir={tmp_path / 'full'}"]) == 0
    assert main([*common, "--test_rows=1000", "--learning_rate=0.01", f"--output_dir={tmp_path / 'sub'}"]) == 0
    def read(name):
        return pd.read_csv(tmp_path / name / "test_predictions.csv", dtype={"user_id": str, "item_id": str})
    full, sub = read("full"), read("sub")
    result = json.loads((tmp_path / "sub" / "result.json").read_text())
    assert 1000 <= len(sub) == result["test_rows"] < result["test_rows_in_split"] == len(full) == 9596
    kept = full[full.user_id.isin(set(sub.user_id))]
    assert len(kept) == len(sub)  # every row of every kept user, no other row
    key = ["user_id", "item_id"]
    assert kept.sort_values(key)[key].to_numpy().tolist() == sub.sort_values(key)[key].to_numpy().tolist()
    auc, uauc = recompute(sub)
    assert result["test_result"]["auc"] == pytest.approx(auc, abs=1e-4)
    assert result["test_result"]["uauc"] == pytest.approx(uauc, abs=1e-4)


def test_mf_checkpoint_loads_into_another_dataset_object(ml100k_root, tmp_path):
    from recbole.data import create_dataset

    from recbole_histllm.config import Config
    from recbole_histllm.model.mf import load_mf_embeddings

    out = tmp_path / "mf"
    assert main(["--model=MF", "--dataset=ml-100k", f"--data_path={ml100k_root}", "--epochs=1",
                 f"--output_dir={out}", "--show_progress=False"]) == 0
    checkpoint = json.loads((out / "result.json").read_text())["checkpoint"]
    config = Config(model="MF", dataset="ml-100k", config_dict={"data_path": str(ml100k_root)})
    dataset = create_dataset(config)
    users, items = load_mf_embeddings(checkpoint, dataset)
    state = torch.load(checkpoint, weights_only=False)
    assert users.shape == (dataset.user_num, 256) and items.shape == (dataset.item_num, 256)
    # same raw id -> same vector
    token = dataset.field2id_token["item_id"][5]
    row = list(state["other_parameter"]["item_tokens"]).index(token)
    assert torch.equal(items[5], state["state_dict"]["item_embedding.weight"][row])


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--model=NoSuchModel", "--dataset=ml-100k"], "unknown model 'NoSuchModel'"),
        (["--model=MF", "--dataset=no_such_data"], "unknown dataset 'no_such_data'"),
        (["--model=MF", "--dataset=ml-100k", "--learnin_rate=0.1"], "unknown config key(s) learnin_rate"),
        (["--model=MF", "--dataset=ml-100k", "--metrics=['AUC','Nope']"], "no metric named 'Nope'"),
        (["--model=MF"], "--dataset is required"),
        (["--model=MF", "--dataset=ml-100k", "--config_files=missing.yaml"], "config file not found: missing.yaml"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, expected, tmp_path):
    done = subprocess.run(RUN + args, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in done.stderr


def test_yaml_errors_name_file_and_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("epochs: 3\nmetrics: [AUC, UAUC\n")
    (tmp_path / "typo.yaml").write_text("epochz: 3\n")
    done = subprocess.run(RUN + ["--model=MF", "--dataset=ml-100k", "--config_files=bad.yaml"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and "bad.yaml:3:1: YAML syntax error" in done.stderr
    done = subprocess.run(RUN + ["--model=MF", "--dataset=ml-100k", "--config_files=typo.yaml"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and "epochz" in done.stderr and "typo.yaml" in done.stderr


def test_missing_data_folder_names_path_and_converter(tmp_path):
    (tmp_path / "dataset" / "mind").mkdir(parents=True)
    done = subprocess.run(RUN + ["--model=MF", "--dataset=mind"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2
    assert "mind.inter not found" in done.stderr and "dataset_converters.mind" in done.stderr


def test_debug_shows_traceback(tmp_path):
    done = subprocess.run(RUN + ["--model=NoSuchModel", "--dataset=ml-100k", "--debug"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_config_priority_later_wins(tmp_path):
    from recbole_histllm.config import Config

    user = tmp_path / "user.yaml"
    user.write_text("learning_rate: 0.5\nembedding_size: 8\n")
    config = Config(model="MF", dataset="ml-100k", config_file_list=[str(user)], config_dict={"learning_rate": 0.25})
    assert config["learning_rate"] == 0.25  # command line over user file
    assert config["embedding_size"] == 8  # user file over properties/model/MF.yaml
    assert config["reg_weight"] == 0.0001  # properties/model/MF.yaml
    assert config["metrics"] == ["AUC", "UAUC", "LogLoss"]  # properties/overall.yaml
    assert config["threshold"] is None  # ours over RecBole's ml-100k quick-start file


def test_best_epoch_is_the_last_improvement_recbole_kept(ml100k_root, tmp_path, monkeypatch):
    """``best_epoch`` follows RecBole's early stopping (ties keep the later epoch), from fit's callback."""
    from recbole.trainer import Trainer

    scores = iter([0.5, 0.7, 0.6, 0.7, 0.4])
    monkeypatch.setattr(Trainer, "_valid_epoch", lambda self, *a, **k: (s := next(scores), {"auc": s}))
    out = tmp_path / "out"
    assert main(["--model=MF", "--dataset=ml-100k", f"--data_path={ml100k_root}", "--epochs=5", "--stopping_step=10",
                 f"--output_dir={out}", "--show_progress=False"]) == 0
    assert json.loads((out / "result.json").read_text())["best_epoch"] == 3
