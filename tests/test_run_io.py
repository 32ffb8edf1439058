"""Using a finished run: load_run, predict, --eval_only and rerank on the tiny dataset (random tiny LLM)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FAST_LLM, write_tiny_ctr

from dataset_converters.core import hold_out_items, read_inter
from recbole_histllm import load_run
from recbole_histllm import predict as predict_cli
from recbole_histllm import rerank as rerank_cli
from recbole_histllm.cli import main as run_main
from recbole_histllm.quick_start import run as train

HELD_OUT = [str(i) for i in range(13, 23)]  # 10 items: rows dropped from .inter, kept in .item and .text
STR = {"user_id": str, "item_id": str}


@pytest.fixture(scope="module")
def cold(tmp_path_factory) -> dict:
    """``tinycold``: the tiny dataset (images) whose HELD_OUT items have no interaction at all (so none in
    train) but stay in .item/.text; the full rows are kept aside. An MF run and a HistLLM run on it."""
    root = tmp_path_factory.mktemp("cold")
    write_tiny_ctr(root, "tinyfull", n_users=16, n_items=30)
    full = read_inter(root / "tinyfull" / "tinyfull.inter")
    held = hold_out_items(root / "tinyfull", HELD_OUT, root / "tinycold")
    assert len(held) == full.item_id.isin(HELD_OUT).sum() and (root / "tinycold" / "tinycold.item").is_file()
    kept = read_inter(root / "tinycold" / "tinycold.inter")
    assert not kept.item_id.isin(HELD_OUT).any() and len(kept) + len(held) == len(full)
    assert not any(item in HELD_OUT for h in kept.history for item in h.split())
    runs = root / "runs"
    train("MF", "tinycold", [], {"data_path": str(root), "epochs": 3, "show_progress": False}, runs / "mf")
    train("HistLLM", "tinycold", [], {"data_path": str(root), **FAST_LLM}, runs / "hist")
    return {"root": root, "full": full, "mf": runs / "mf", "hist": runs / "hist"}


def predict(capsys, *args: str) -> tuple[int, str, list[str]]:
    code = predict_cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


def pairs_of(cold, run: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    expected = pd.read_csv(run / "test_predictions.csv", dtype=STR)
    pairs = expected[["user_id", "item_id"]].merge(cold["full"][["user_id", "item_id", "timestamp"]], how="left")
    assert len(pairs) == len(expected) and (pairs.timestamp != "").all()
    return expected, pairs


@pytest.mark.parametrize("name", ["mf", "hist"])
def test_predict_reproduces_the_runs_test_predictions(name, cold, tmp_path, capsys):
    expected, pairs = pairs_of(cold, cold[name])
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    code, _, err = predict(capsys, f"--run={cold[name]}", f"--input={tmp_path / 'pairs.csv'}",
                           f"--output={tmp_path / 'scores.csv'}")
    assert code == 0 and err[-1].endswith(f"written to {tmp_path / 'scores.csv'}")
    got = pd.read_csv(tmp_path / "scores.csv", dtype=STR)
    assert list(got.columns) == ["user_id", "item_id", "timestamp", "score", "status"]
    assert (got.user_id == expected.user_id).all() and (got.item_id == expected.item_id).all()
    run = load_run(cold[name])
    train_items = set(run.dataset.id2token(run.dataset.iid_field, np.flatnonzero(run.train_counts("item"))))
    if name == "mf":  # an ID model: test items it never saw in train are unknown to it, the others scored
        assert (got.status == np.where(got.item_id.isin(train_items), "ok", "unknown_item")).all()
    else:
        assert (got.status == "ok").all()
    ok = got.status == "ok"
    assert ok.sum() >= len(got) // 2
    np.testing.assert_allclose(got.score[ok], expected.score[ok], atol=1e-5, rtol=0)
    assert err[0].startswith(f"{ok.sum()} of {len(got)} rows scored")


def test_history_is_the_likes_strictly_before_the_timestamp(cold):
    run = load_run(cold["hist"])
    inter = read_inter(cold["root"] / "tinycold" / "tinycold.inter")
    stamps = inter.timestamp.astype(float)
    for user, when in [("3", stamps[inter.user_id == "3"].median()), ("3", math.inf), ("5", 0.0)]:
        mine = inter[(inter.user_id == user) & (inter.label == "1") & (stamps < when)]
        expected = mine.assign(t=stamps[mine.index]).sort_values("t", kind="mergesort").item_id.tolist()
        assert run.histories([user], np.array([when])) == [expected]


def test_held_out_items_scored_by_histllm_unknown_to_mf(cold, tmp_path, capsys):
    held = cold["full"][cold["full"].item_id.isin(HELD_OUT)][["user_id", "item_id", "timestamp"]]
    assert held.item_id.nunique() == 10
    run = load_run(cold["hist"])
    assert (run.train_counts("item")[run.dataset.token2id(run.dataset.iid_field, HELD_OUT)] == 0).all()
    held.to_csv(tmp_path / "held.csv", index=False)
    code, out, _ = predict(capsys, f"--run={cold['hist']}", f"--input={tmp_path / 'held.csv'}")
    hist = pd.read_csv(pd.io.common.StringIO(out), dtype=STR)
    assert code == 0 and (hist.status == "ok").all() and np.isfinite(hist.score).all()
    assert hist.score.between(0, 1).all() and hist.score.nunique() > 1  # from each item's own text/image
    code, out, err = predict(capsys, f"--run={cold['mf']}", f"--input={tmp_path / 'held.csv'}")
    mf = pd.read_csv(pd.io.common.StringIO(out), dtype=STR)
    assert code == 0 and (mf.status == "unknown_item").all() and mf.score.isna().all()
    assert err == [f"0 of {len(held)} rows scored; unknown_item: {len(held)}"]


@pytest.mark.parametrize("name", ["mf", "hist"])
def test_bad_rows_get_a_status_and_are_counted(name, cold, tmp_path, capsys):
    rows = ["user_id,item_id,timestamp", "1,3,", "1,3,1000500", "999,3,", "1,9999,", ",3,", "1,3,soon",
            "1,3,1,extra", "2", "", "2,4,nan"]
    (tmp_path / "bad.csv").write_text("\n".join(rows) + "\n")
    code, out, err = predict(capsys, f"--run={cold[name]}", f"--input={tmp_path / 'bad.csv'}")
    got = pd.read_csv(pd.io.common.StringIO(out), dtype=STR, keep_default_na=False)
    assert code == 0 and len(got) == 9  # the blank line carries nothing
    assert got.status.tolist() == ["ok", "ok", "unknown_user", "unknown_item", "malformed", "malformed", "malformed",
                                   "malformed", "malformed"]
    assert err == ["2 of 9 rows scored; malformed: 5, unknown_item: 1, unknown_user: 1"]
    assert (got.score[2:] == "").all() and np.isfinite(got.score[:2].astype(float)).all()
    if name == "hist":  # the history depends on the timestamp: all likes vs those before 1000500
        assert got.score[0] != got.score[1]


def test_unreadable_inputs_exit_2_with_one_line(cold, tmp_path, capsys):
    (tmp_path / "latin1.csv").write_bytes(b"user_id,item_id\n1,caf\xe9\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "noitem.csv").write_text("user_id,movie\n1,3\n")
    (tmp_path / "twice.csv").write_text("user_id,item_id,item_id\n1,3,3\n")
    (tmp_path / "ok.csv").write_text("user_id,item_id\n1,3\n")
    run = f"--run={cold['mf']}"
    cases = {
        (run, f"--input={tmp_path / 'missing.csv'}"): "cannot read --input=",
        (run, f"--input={tmp_path}"): "cannot read --input=",
        (run, f"--input={tmp_path / 'latin1.csv'}"): "cannot read --input=",
        (run, f"--input={tmp_path / 'empty.csv'}"): "line 1 must be a header",
        (run, f"--input={tmp_path / 'noitem.csv'}"): "no item_id",
        (run, f"--input={tmp_path / 'twice.csv'}"): "repeats a column",
        (run,): "--input=FILE is required",
        (f"--input={tmp_path / 'noitem.csv'}",): "--run=DIR is required",
        (f"--run={tmp_path}", f"--input={tmp_path / 'ok.csv'}"): "no result.json",
        (run, f"--input={tmp_path / 'ok.csv'}", "--colour=red"): "unknown config key(s) colour",
        (run, f"--input={tmp_path / 'ok.csv'}", "--eval_batch_size=0"): "--eval_batch_size=0: must be",
        (run, "input.csv"): "expected --key=value",
    }
    for args, message in cases.items():
        code, out, err = predict(capsys, *args)
        assert code == 2 and out == "" and len(err) == 1, (args, err)
        assert err[0].startswith("error: ") and message in err[0], (args, err)


@pytest.mark.parametrize("name", ["mf", "hist"])
def test_eval_only_writes_a_new_folder_with_the_same_scores(name, cold, tmp_path, capsys):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in cold[name].iterdir())
    out = tmp_path / "again"
    assert run_main(["--eval_only", f"--run={cold[name]}", f"--output_dir={out}"]) == 0
    expected = pd.read_csv(cold[name] / "test_predictions.csv", dtype=STR)
    got = pd.read_csv(out / "test_predictions.csv", dtype=STR)
    pd.testing.assert_frame_equal(got.drop(columns="score"), expected.drop(columns="score"))
    np.testing.assert_allclose(got.score, expected.score, atol=1e-6, rtol=0)
    result, original = (json.loads((d / "result.json").read_text()) for d in (out, cold[name]))
    assert result["test_result"] == pytest.approx(original["test_result"], abs=1e-4, nan_ok=True)
    assert result["eval_only_of"] == str(cold[name]) and result["test_rows"] == len(expected)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in cold[name].iterdir()) == before  # the run is untouched
    capsys.readouterr()
    assert run_main(["--eval_only", f"--run={cold[name]}", f"--output_dir={out}"]) == 2  # never overwritten
    assert run_main(["--eval_only", f"--run={cold[name]}", f"--output_dir={cold[name]}"]) == 2
    assert "already holds a result" in capsys.readouterr().err


def test_eval_only_on_a_test_subset(cold, tmp_path):
    out = tmp_path / "sub"
    assert run_main(["--eval_only", f"--run={cold['mf']}", "--test_rows=5", f"--output_dir={out}"]) == 0
    full = pd.read_csv(cold["mf"] / "test_predictions.csv", dtype=STR)
    sub = pd.read_csv(out / "test_predictions.csv", dtype=STR)
    assert 5 <= len(sub) < len(full)
    merged = sub.merge(full, on=["user_id", "item_id", "label"], suffixes=("", "_full"))
    assert len(merged) == len(sub)
    np.testing.assert_allclose(merged.score, merged.score_full, atol=1e-6, rtol=0)


def reference_metrics(frame: pd.DataFrame, column: str, k: int) -> dict[str, float]:
    """Recall@10, NDCG@10 and MRR over the candidate list, written out directly."""
    recall, ndcg, mrr = [], [], []
    for _, group in frame.groupby("user_id", sort=False):
        ranked = group.iloc[np.argsort(-group[column].to_numpy(), kind="stable")]
        hits = ranked.positive.to_numpy()
        n_pos = int(group.user_positives.iloc[0])
        recall.append(hits[:10].sum() / n_pos)
        dcg = sum(1 / math.log2(r + 2) for r in range(min(10, k)) if hits[r])
        ndcg.append(dcg / sum(1 / math.log2(r + 2) for r in range(min(n_pos, 10, k))))
        first = np.flatnonzero(hits)
        mrr.append(1 / (first[0] + 1) if len(first) else 0.0)
    return {"recall@10": np.mean(recall), "ndcg@10": np.mean(ndcg), "mrr": np.mean(mrr)}


def test_rerank_metrics_match_an_independent_computation(cold, tmp_path, capsys):
    out = tmp_path / "rerank"
    code = rerank_cli.main([f"--run={cold['hist']}", f"--mf_run={cold['mf']}", "--rerank_k=12",
                            "--rerank_users=6", f"--output_dir={out}"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "rerank.json").read_text())
    rows = pd.read_csv(out / "rerank_candidates.csv", dtype=STR).astype(
        {"mf_score": float, "llm_score": float, "positive": int, "user_positives": int})
    assert result["users"] == rows.user_id.nunique() == 6 and (rows.groupby("user_id").size() == 12).all()
    assert rows.positive.sum() > 0  # some positives among the candidates: the metrics are not all zero
    run = load_run(cold["mf"])
    train = run.train_data._dataset
    train_pairs = set(zip(train.id2token(train.uid_field, train.inter_feat[train.uid_field].numpy()),
                          train.id2token(train.iid_field, train.inter_feat[train.iid_field].numpy())))
    assert not any((u, i) in train_pairs for u, i in zip(rows.user_id, rows.item_id))
    test = run.test_data._dataset
    test_pos = {(u, i) for u, i, y in zip(test.id2token(test.uid_field, test.inter_feat[test.uid_field].numpy()),
                                          test.id2token(test.iid_field, test.inter_feat[test.iid_field].numpy()),
                                          test.inter_feat["label"].numpy()) if y > 0.5}
    assert rows.positive.tolist() == [int((u, i) in test_pos) for u, i in zip(rows.user_id, rows.item_id)]
    assert (rows.groupby("user_id").user_positives.first()
            == pd.Series([sum(1 for u, _ in test_pos if u == user) for user in rows.user_id.unique()],
                         index=rows.user_id.unique())).all()
    # MF's candidates are its top 12 of the items it knows that the user has no train row with
    for user, group in rows.groupby("user_id"):
        allowed = [i for i in run.dataset.field2id_token["item_id"][1:] if (user, i) not in train_pairs]
        scored = run.score(pd.DataFrame({"user_id": user, "item_id": allowed}))
        top = scored[scored.status == "ok"].nlargest(12, "score")
        assert set(group.item_id) == set(top.item_id) and not set(group.item_id) & set(HELD_OUT)
    for name, column in (("mf", "mf_score"), ("llm", "llm_score")):
        assert result[name] == pytest.approx({**reference_metrics(rows, column, 12),
                                              "candidate_recall": result[name]["candidate_recall"]}, abs=1e-9)
    assert result["llm"]["candidate_recall"] == result["mf"]["candidate_recall"]


def test_rerank_needs_two_runs_of_the_same_dataset(cold, tmp_path, capsys):
    assert rerank_cli.main([f"--run={cold['hist']}"]) == 2
    assert "--mf_run=DIR is required" in capsys.readouterr().err
    assert rerank_cli.main([f"--run={cold['hist']}", f"--mf_run={tmp_path}"]) == 2
    assert "no result.json" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["VBPR", "BM3", "LGMRec", "MG", "DeepFM", "CoLLM", "BinLLM", "TALLRec-image",
                                   "ZeroShot"])
def test_every_model_kind_reloads_with_the_same_scores(model, tiny_root, tmp_path):
    """load_run restores each family (RecBole checkpoints; LLM trainable weights with MF or hash tables)."""
    llm = model in ("CoLLM", "BinLLM", "TALLRec-image", "ZeroShot")
    keys = {**FAST_LLM, "stage2_epochs": 1} if llm else {"epochs": 1, "show_progress": False}
    train(model, "tiny", [], {"data_path": str(tiny_root), **keys}, tmp_path / "run")
    assert run_main(["--eval_only", f"--run={tmp_path / 'run'}", f"--output_dir={tmp_path / 'eval'}"]) == 0
    expected, got = (pd.read_csv(tmp_path / d / "test_predictions.csv", dtype=STR) for d in ("run", "eval"))
    assert (got.item_id == expected.item_id).all() and len(got) == len(expected) > 0
    np.testing.assert_allclose(got.score, expected.score, atol=1e-6, rtol=0)


def test_a_run_recorded_before_a_switch_existed_reloads_with_it_off(tiny_root, tmp_path, caplog):
    """HistLLM's cia_interaction is on by default since 2026-12-04; a run whose result.json predates the key
    trained without it, and its checkpoint has no product branch: it reloads with the switch off, named."""
    train("HistLLM", "tiny", [], {"data_path": str(tiny_root), **FAST_LLM, "stage1_epochs": 0, "stage2_epochs": 1,
                                  "cia_interaction": False, "mf_holdout": False}, tmp_path / "run")
    path = tmp_path / "run" / "result.json"
    result = json.loads(path.read_text())
    for key in ("cia_interaction", "mf_holdout"):
        del result["config"][key]
    path.write_text(json.dumps(result))
    with caplog.at_level("WARNING"):
        run = load_run(tmp_path / "run")
    assert run.config["cia_interaction"] is False and run.model.cia.cross is None
    assert any("cia_interaction, mf_holdout" in r.getMessage() for r in caplog.records)


def test_without_a_timestamp_column_the_history_is_every_like(cold):
    run = load_run(cold["hist"])
    pairs = pd.DataFrame({"user_id": ["1", "2", "3"], "item_id": ["3", "4", "5"]})
    plain = run.score(pairs)
    empty = run.score(pairs.assign(timestamp=""))
    latest = run.score(pairs.assign(timestamp=str(10**9)))  # later than every row of the dataset
    assert (plain.status == "ok").all()
    np.testing.assert_array_equal(plain.score, empty.score)
    np.testing.assert_allclose(plain.score, latest.score, atol=1e-7)


def test_quick_start_alone_refuses_eval_only_and_names_the_command(capsys):
    """Training's entry point never trains on ``--eval_only``: it names the command that re-scores a run."""
    from recbole_histllm import quick_start

    assert quick_start.main(["--eval_only", "--run=somewhere"]) == 2
    assert "python run_recbole_histllm.py --eval_only --run=DIR" in capsys.readouterr().err
