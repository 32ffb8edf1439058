"""``python -m recbole_histllm.table``: rows, runs reused, metrics from predictions, paper layout."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from recbole_histllm import table as tbl
from recbole_histllm.utils import UsageError


def test_parse_rows_presets_labels_and_overrides():
    rows = tbl.parse_rows("MF,w/o UHEM,Fast MF=MF:learning_rate=0.01;epochs=2,HistLLM(Transformer):history_len=3")
    assert [(r.label, r.model) for r in rows] == [("MF", "MF"), ("w/o UHEM", "HistLLM"), ("Fast MF", "MF"),
                                                  ("HistLLM(Transformer)", "HistLLM")]
    assert rows[1].overrides == {"history_encoder": "none"}
    assert rows[2].overrides == {"learning_rate": 0.01, "epochs": 2}
    assert rows[3].overrides == {"history_encoder": "transformer", "history_len": 3}
    with pytest.raises(UsageError, match="key=value"):
        tbl.parse_rows("MF:epochs")


def test_relative_improvement_and_marks_follow_the_paper():
    frame = pd.DataFrame({"group": ["Trad. Multi. Rec.", "Our Method"], "column": "",
                          "label": ["VBPR", "HistLLM(Transformer)"],
                          "auc_mean": [0.6273, 0.8160], "uauc_mean": [0.5154, 0.6975],
                          "auc_std": [math.nan, math.nan], "uauc_std": [math.nan, math.nan]})
    frame = tbl.add_relative_improvement(frame, "HistLLM(Transformer)")
    assert frame.rel_imp[0] == pytest.approx(0.327, abs=5e-4)  # Table 2: VBPR on movie, 32.7%
    text = tbl.to_markdown(frame, "main", "caption")
    assert "| Trad. Multi. Rec. | VBPR | <u>0.6273</u> | <u>0.5154</u> | 32.7% |" in text
    assert "| Our Method | HistLLM(Transformer) | **0.8160** | **0.6975** | - |" in text


def test_table_runs_reuses_and_recomputes(tiny_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "tables"
    args = ["--dataset=tiny", f"--data_path={tiny_root}", "--models=MF,Slow MF=MF:learning_rate=0.0001",
            "--seeds=2", "--epochs=2", f"--out={out}"]
    assert tbl.main(args) == 0
    csv = pd.read_csv(out / "tiny" / "table_main.csv")
    assert list(csv.label) == ["MF", "Slow MF"] and list(csv.seeds) == [2, 2]
    assert csv.rel_imp.isna().all()  # no HistLLM row: nothing to improve on
    runs = sorted((out / "tiny").glob("*/seed*/test_predictions.csv"))
    assert len(runs) == 4
    # the table's numbers are the mean over seeds of sklearn on each run's predictions
    mf = [pd.read_csv(p) for p in runs if p.parts[-3].startswith("MF-")]
    aucs = [roc_auc_score(f.label, f.score) for f in mf]
    assert csv.auc_mean[0] == pytest.approx(sum(aucs) / 2, abs=1e-9)
    assert csv.auc_std[0] == pytest.approx(pd.Series(aucs).std(), abs=1e-9)
    text = (out / "tiny" / "table_main.md").read_text()
    assert "Trad. Multi. Rec." in text and "**" in text
    # a second call reuses every run: launching anything would fail
    monkeypatch.setattr(tbl, "launch", lambda *a, **k: pytest.fail("a finished run was launched again"))
    capsys.readouterr()
    assert tbl.main(args) == 0
    assert capsys.readouterr().out.count("reused") == 4


def test_runs_on_a_test_subset_compare_on_common_rows(tiny_root, tmp_path):
    """A whole-split run is reused for a test_rows table and restricted to the rows the others scored."""
    search = tmp_path / "runs"
    common = ["--dataset=tiny", f"--data_path={tiny_root}", "--epochs=1"]
    assert tbl.main([*common, "--models=MF", f"--out={search}"]) == 0  # whole test split
    assert tbl.main([*common, "--models=MF,Other=MF:learning_rate=0.01", "--test_rows=8", f"--runs={search}",
                     f"--out={tmp_path / 'tables'}"]) == 0
    csv = pd.read_csv(tmp_path / "tables" / "tiny" / "table_main.csv")
    full = pd.read_csv(next(search.glob("tiny/MF-*/seed2020/test_predictions.csv")))
    assert 8 <= csv.test_rows[0] < len(full)
    other = pd.read_csv(next((tmp_path / "tables").glob("tiny/Other-*/seed2020/test_predictions.csv")))
    kept = full.merge(other[["user_id", "item_id"]], on=["user_id", "item_id"])
    assert len(kept) == len(other) == csv.test_rows[0]
    assert csv.auc_mean[0] == pytest.approx(roc_auc_score(kept.label, kept.score), abs=1e-9)
    assert not list((tmp_path / "tables" / "tiny").glob("MF-*"))  # MF itself was reused, not rerun


def test_history_table_writes_png(tiny_root, tmp_path):
    out = tmp_path / "tables"
    assert tbl.main(["--dataset=tiny", f"--data_path={tiny_root}", "--table=history", "--history=1,3",
                     "--models=MF", "--epochs=1", f"--out={out}"]) == 0
    csv = pd.read_csv(out / "tiny" / "table_history.csv")
    assert list(csv.column) == [1, 3]
    png = (out / "tiny" / "history.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_table_kind_exits_2(capsys):
    assert tbl.main(["--dataset=tiny", "--table=nope"]) == 2
    assert "expected one of" in capsys.readouterr().err


def test_reuse_matches_configs_and_tolerates_keys_added_later(tmp_path):
    result = tmp_path / "result.json"
    result.write_text('{"config": {"model": "MF", "learning_rate": 0.001, "test_rows": 3000}}')
    assert tbl._matches(result, {"model": "MF", "learning_rate": 0.001}, 1500)  # nested subsets
    assert not tbl._matches(result, {"model": "MF", "learning_rate": 0.001}, None)  # whole split asked
    assert not tbl._matches(result, {"model": "MF", "learning_rate": 0.01}, 3000)
    assert tbl._matches(result, {"model": "MF", "load_in_4bit": False, "ddp_backend": None}, 3000)
    assert not tbl._matches(result, {"model": "MF", "load_in_4bit": True}, 3000)


def test_reuse_only_builds_from_finished_runs_and_marks_missing_seeds(tiny_root, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    common = ["--dataset=tiny", f"--data_path={tiny_root}", "--epochs=1"]
    assert tbl.main([*common, "--models=MF", f"--out={runs}"]) == 0  # MF, seed 2020 only
    monkeypatch.setattr(tbl, "launch", lambda *a, **k: pytest.fail("--reuse_only launched a run"))
    out = tmp_path / "tables"
    args = [*common, "--models=MF,Other=MF:learning_rate=0.5", "--seeds=2", "--reuse_only", f"--runs={runs}",
            f"--out={out}"]
    capsys.readouterr()
    assert tbl.main(args) == 0
    assert "3 of 4 runs missing" in capsys.readouterr().out
    csv = pd.read_csv(out / "tiny" / "table_main.csv")
    assert list(csv.seeds) == [1, 0] and math.isnan(csv.auc_mean[1]) and not math.isnan(csv.auc_mean[0])
    text = (out / "tiny" / "table_main.md").read_text()
    assert "| MF (1 of 2 seeds) |" in text and "| Other (0 of 2 seeds) | n/a | n/a |" in text
    assert tbl.main([*common, "--models=Other=MF:learning_rate=0.5", "--reuse_only", f"--runs={runs}",
                     f"--out={out}"]) == 2  # nothing finished: a usage error, not an empty table
