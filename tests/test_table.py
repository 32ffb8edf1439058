"""``python -m recbole_histllm.table``: rows, runs reused, metrics from predictions, paper layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

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
    # --blend=MF on the same runs: the other row rank-averaged with MF, printed and written
    assert tbl.main([*args, "--blend=MF"]) == 0
    assert "| Slow MF + MF (rank mean) |" in capsys.readouterr().out
    blend = pd.read_csv(out / "tiny" / "table_main_blend.csv")
    assert list(blend.label) == ["MF", "Slow MF + MF (rank mean)"] and list(blend.seeds) == [2, 2]


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
    # the LLM profile's test_rows=3000 on a 210-row test split scored the whole split: serves a whole-split table
    small = tmp_path / "small.json"
    small.write_text('{"config": {"model": "MF", "test_rows": 3000}, "test_rows": 210, "test_rows_in_split": 210}')
    assert tbl._matches(small, {"model": "MF"}, None)


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


# ---- shared stages and exported runs (fake runs: no training) ------------------------------------------
def _fake_launcher(calls: list):
    """A ``launch`` that records what it was given and writes a finished run as the CLI would: result.json
    (config, stages with their checkpoints), the stage files it trained itself, and test predictions."""
    import zlib

    import numpy as np

    def fake(row, dataset, seed, extra, out, given=None):
        given = {k: str(v) for k, v in (given or {}).items()}
        calls.append((row.label, seed, given))
        out.mkdir(parents=True, exist_ok=True)
        config = {**tbl.expected_config(row, dataset, seed, extra), **given, "checkpoint_dir": str(out)}
        stages = {}
        kind = tbl.stage0_model(row.model, config)
        if kind is not None:
            key = tbl.STAGE0_CHECKPOINT_KEYS[kind]
            checkpoint = given.get(key) or str(out / f"{kind}-stage0.pth")
            if key not in given:
                (out / f"{kind}-stage0.pth").write_bytes(b"stage 0")
            stages["stage0"] = {"model": kind, "checkpoint": checkpoint,
                                "source": "given" if key in given else "trained"}
        if row.model in (*tbl.STAGE1_MODELS, "TALLRec-image"):
            checkpoint = given.get("lora_checkpoint") or str(out / f"{row.model}-stage1.pth")
            if "lora_checkpoint" not in given:
                (out / f"{row.model}-stage1.pth").write_bytes(b"stage 1")
            stages["stage1"] = {"checkpoint": checkpoint,
                                "source": "given" if "lora_checkpoint" in given else "trained"}
        result = {"model": row.model, "dataset": dataset, "seed": seed, "stages": stages, "config": config}
        (out / "result.json").write_text(json.dumps(result))
        rng = np.random.default_rng(zlib.crc32(f"{row.label}/{seed}".encode()))
        users = np.repeat([f"u{u}" for u in range(12)], 4)
        pd.DataFrame({"user_id": users, "item_id": [f"i{j}" for j in range(len(users))],
                      "label": np.tile([1, 0, 1, 0], 12), "score": rng.random(len(users))}).to_csv(
            out / "test_predictions.csv", index=False)

    return fake


@pytest.fixture(autouse=True)
def _lora_checkpoint_key(monkeypatch):
    """``lora_checkpoint`` as the trainer's property files define it (``~``), whether or not they do yet."""
    real = tbl.expected_config

    def expected_config(row, *args):
        config = real(row, *args)
        if row.model in tbl.STAGE1_MODELS or row.model == "TALLRec-image":
            config.setdefault("lora_checkpoint", None)
        return config

    monkeypatch.setattr(tbl, "expected_config", expected_config)


def _run_dir(out, label, seed):
    slug = "".join(c if c.isalnum() or c in "-_()" else "_" for c in label)
    return next((out / "tiny").glob(f"{slug}-*/seed{seed}"))


def test_llm_rows_of_a_seed_share_their_finished_stages(tiny_root, tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(tbl, "launch", _fake_launcher(calls))
    out = tmp_path / "tables"
    # HistLLM: stage 1 on. Every row trains on CPU with one attention kernel (HistLLM.yaml sets eager, the shared
    # default is torch's): the kernel is part of a stage's config, so rows with different kernels share no LoRA.
    # Every stage 0 fits the whole train split (HistLLM.yaml's mf_holdout would hold out its own stage-2 rows).
    args = ["--dataset=tiny", f"--data_path={tiny_root}", "--seeds=2", f"--out={out}", "--stage1_epochs=1",
            "--cpu_train_attention=eager", "--mf_holdout=False",
            "--models=HistLLM,CoLLM,Big LoRA=HistLLM:lora_r=16,BinLLM,TALLRec-image,w/o KE"]
    assert tbl.main(args) == 0
    given = {(label, seed): g for label, seed, g in calls}
    assert len(calls) == 12 and given[("HistLLM", 2020)] == {} and given[("HistLLM", 2021)] == {}
    for seed in (2020, 2021):  # each seed reuses its own seed's stages, never the other's
        first = _run_dir(out, "HistLLM", seed)
        both = {"mf_checkpoint": str(first / "MF-stage0.pth"), "lora_checkpoint": str(first / "HistLLM-stage1.pth")}
        assert given[("CoLLM", seed)] == both
        assert given[("w/o KE", seed)] == both  # the stage-1 prompt shows titles: KE does not change it
        # another LoRA rank: its own stage 1, the shared MF
        assert given[("Big LoRA", seed)] == {"mf_checkpoint": both["mf_checkpoint"]}
        # BinLLM's stage 0 is HashMF (another model): only the LoRA stage is shared
        assert given[("BinLLM", seed)] == {"lora_checkpoint": both["lora_checkpoint"]}
        assert given[("TALLRec-image", seed)] == {}  # its one stage holds image tokens: nothing shared
    text = capsys.readouterr().out
    assert text.count("shared stage 1 (LoRA)") == 6 and text.count("shared stage 0 (MF)") == 6
    # a rerun finds every finished run although runs were given other runs' checkpoints
    monkeypatch.setattr(tbl, "launch", lambda *a, **k: pytest.fail("a finished run was launched again"))
    assert tbl.main(args) == 0
    assert capsys.readouterr().out.count("reused") == 12


def test_a_given_stage_counts_only_with_the_same_stage_config(tiny_root, tmp_path, monkeypatch):
    """Reuse: a checkpoint key set by the runner is no config difference when the checkpoint's run has the
    same stage config (or is not at hand); a stage taken from a run with another stage config is."""
    calls: list = []
    monkeypatch.setattr(tbl, "launch", _fake_launcher(calls))
    out, common = tmp_path / "tables", ["--dataset=tiny", f"--data_path={tiny_root}", "--mf_holdout=False"]
    assert tbl.main([*common, f"--out={out}", "--models=HistLLM,CoLLM"]) == 0
    collm = _run_dir(out, "CoLLM", 2020) / "result.json"
    expected = tbl.expected_config(tbl.Row("CoLLM", "CoLLM"), "tiny", 2020,
                                   {"data_path": str(tiny_root), "mf_holdout": False})
    assert tbl._matches(collm, expected, None)
    assert tbl._matches(collm, {**expected, "lora_checkpoint": None}, None)  # once the key has a default
    assert not tbl._matches(collm, {**expected, "mf_checkpoint": "/elsewhere/MF-stage0.pth"}, None)  # asked for
    producer = _run_dir(out, "HistLLM", 2020) / "result.json"
    result = json.loads(producer.read_text())
    result["config"]["mf_epochs"] = 3  # the MF it was given came from another stage-0 config
    producer.write_text(json.dumps(result))
    assert not tbl._matches(collm, expected, None)
    producer.unlink()  # not at hand (copied or exported runs): trusted
    assert tbl._matches(collm, expected, None)
    # a producer is found only with the same stage config (another seed, dataset or LoRA: none)
    shared = tbl.SharedStages.scan([out])
    assert set(shared.for_run("CoLLM", expected)) == {"mf_checkpoint", "lora_checkpoint"}
    without = {k: v for k, v in expected.items() if k != "lora_checkpoint"}  # a trainer without the key
    assert set(shared.for_run("CoLLM", without)) == {"mf_checkpoint"}
    assert shared.for_run("CoLLM", {**expected, "seed": 2021}) == {}
    assert set(shared.for_run("CoLLM", {**expected, "lora_r": 4})) == {"mf_checkpoint"}
    assert set(shared.for_run("CoLLM", {**expected, "mf_epochs": 4})) == {"lora_checkpoint"}
    assert set(shared.for_run("TALLRec", expected)) == {"lora_checkpoint"}  # TALLRec: no stage 0
    assert shared.for_run("TALLRec", {**expected, "tallrec_desc": True}) == {}  # Fig. 8: another prompt


def test_exported_runs_rebuild_the_table_with_reuse_only(tiny_root, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(tbl, "launch", _fake_launcher(calls))
    out, exported = tmp_path / "tables", tmp_path / "repo" / "runs"
    common = ["--dataset=tiny", f"--data_path={tiny_root}", "--seeds=2", "--models=MF,HistLLM,CoLLM"]
    assert tbl.main([*common, f"--out={out}", f"--export_runs={exported}"]) == 0
    before = pd.read_csv(out / "tiny" / "table_main.csv")
    files = sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file())
    assert len(files) == 12 and all(f.startswith("tiny/") for f in files)
    assert {f.rsplit("/", 1)[1] for f in files} == {"result.json", "test_predictions.csv.gz"}
    gz = next(exported.rglob("test_predictions.csv.gz"))
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
    first = gz.read_bytes()
    assert tbl.main([*common, "--reuse_only", f"--runs={out}", f"--out={tmp_path / 'again'}",
                     f"--export_runs={exported}"]) == 0
    assert gz.read_bytes() == first  # a re-export writes the same bytes (no gzip timestamp)
    import shutil

    shutil.rmtree(out)  # a fresh clone: only the exported runs, no checkpoints
    monkeypatch.setattr(tbl, "launch", lambda *a, **k: pytest.fail("--reuse_only launched a run"))
    rebuilt = tmp_path / "rebuilt"
    assert tbl.main([*common, "--reuse_only", f"--runs={exported}", f"--out={rebuilt}"]) == 0
    after = pd.read_csv(rebuilt / "tiny" / "table_main.csv")
    pd.testing.assert_frame_equal(before, after)
    assert tbl.read_predictions(gz.parent).shape == (48, 2)


def test_export_runs_needs_a_folder(capsys):
    assert tbl.main(["--dataset=tiny", "--export_runs"]) == 2
    assert "--export_runs=DIR" in capsys.readouterr().err


def test_seeds_as_count_or_list():
    from recbole_histllm.table import parse_seeds

    assert parse_seeds("3") == [2020, 2021, 2022]
    assert parse_seeds("2021,2022") == [2021, 2022]
    assert parse_seeds("2022,") == [2022]
    assert parse_seeds("2022") == [2022]  # a single number >= 1000 is a seed, not 2,022 seeds
    for bad in ("0", "x", "1,b", "101", ","):
        with pytest.raises(UsageError):
            parse_seeds(bad)


def test_each_seed_compares_on_its_own_common_rows(tmp_path):
    """test_rows subsets differ by seed: rows of a seed are intersected within that seed only."""
    import numpy as np

    rng = np.random.default_rng(0)
    runs = {}
    for seed, users in ((2020, range(0, 40)), (2021, range(20, 60))):
        for i in range(2):
            rows = [(str(u), str(k), int(rng.random() < 0.5), float(rng.random())) for u in users for k in range(6)]
            if i == 1:
                rows = rows[6:]  # the second row's run lacks one user of this seed
            run = tmp_path / f"r{i}" / f"seed{seed}"
            run.mkdir(parents=True)
            pd.DataFrame(rows, columns=["user_id", "item_id", "label", "score"]).to_csv(
                run / "test_predictions.csv", index=False)
            runs[(i, seed)] = run
    scores, n_common, sizes = tbl.score_runs(runs)
    assert n_common == str(39 * 6) and sizes == {240, 234}  # 39 users per seed, not the 19 both seeds share
    frame = pd.read_csv(runs[(0, 2021)] / "test_predictions.csv").iloc[6:]
    assert scores[(0, 2021)]["auc"] == pytest.approx(roc_auc_score(frame.label, frame.score), abs=1e-12)


def test_code_versions_of_a_tables_runs(tmp_path):

    from recbole_histllm.quick_start import code_version
    from recbole_histllm.table import code_versions

    codes = [{"package": "0.1.0", "commit": "a" * 40, "dirty": False}, {"package": "0.1.0", "commit": "b" * 40,
             "dirty": True}, {"package": "0.1.0", "commit": None, "dirty": None}, None]
    runs = {}
    for i, code in enumerate(codes + codes[:1]):
        run = tmp_path / f"r{i}"
        run.mkdir()
        (run / "result.json").write_text(json.dumps({"code": code} if code else {}))
        runs[(i, 2020)] = run
    assert code_versions(runs) == {"a" * 12: 2, "b" * 12 + "+dirty": 1, "version 0.1.0": 1, "unrecorded": 1}
    here = code_version()
    in_checkout = (Path(__file__).resolve().parent.parent / ".git").exists()
    assert (len(here["commit"] or "") == 40) == in_checkout and here["package"]


def test_runs_of_two_commits_stop_the_table_unless_allowed(tiny_root, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    common = ["--dataset=tiny", f"--data_path={tiny_root}", "--epochs=1"]
    assert tbl.main([*common, "--models=MF,Other=MF:learning_rate=0.5", f"--out={runs}"]) == 0
    other = next(runs.glob("tiny/Other-*/seed2020/result.json"))
    result = json.loads(other.read_text())
    result["code"] = {"package": "0.1.0", "commit": "b" * 40, "dirty": False}
    other.write_text(json.dumps(result))
    monkeypatch.setattr(tbl, "launch", lambda *a, **k: pytest.fail("a mixed table launched a run"))
    args = [*common, "--models=MF,Other=MF:learning_rate=0.5", "--reuse_only", f"--runs={runs}",
            f"--out={tmp_path / 'tables'}"]
    capsys.readouterr()
    assert tbl.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 code versions" in err[0] and "b" * 12 + ": Other x1" in err[0]
    assert "MF x1" in err[0] and "--allow_mixed" in err[0]
    assert not (tmp_path / "tables" / "tiny" / "table_main.md").exists()
    assert tbl.main([*args, "--allow_mixed"]) == 0
    assert "Runs of several code versions" in (tmp_path / "tables" / "tiny" / "table_main.md").read_text()
    # a missing run would be launched on this checkout: a reused run of another commit stops it first
    assert tbl.main([*common, "--models=Other=MF:learning_rate=0.5", "--seeds=2", f"--runs={runs}",
                     f"--out={tmp_path / 'more'}"]) == 2
    assert "(this checkout): Other x1" in capsys.readouterr().err


def test_precisions_of_a_tables_llm_runs(tmp_path):
    from recbole_histllm.table import precisions

    results = [{"stages": {"stage2": {}}, "precision": "float32"}, {"stages": {"stage2": {}}, "precision":
               "bf16 autocast"}, {"stages": {"stage2": {}}}, {"stages": None, "precision": None}, {},
               {"stages": {"stage2": {}}, "precision": "float32"}]
    runs = {}
    for i, result in enumerate(results):
        run = tmp_path / f"r{i}"
        run.mkdir()
        (run / "result.json").write_text(json.dumps(result))
        runs[(i, 2020)] = run
    assert precisions(runs) == {"float32": 2, "bf16 autocast": 1, "unrecorded": 1}  # MF runs left out


def test_a_table_of_two_precisions_says_so(tiny_root, tmp_path, capsys):
    runs = tmp_path / "runs"
    common = ["--dataset=tiny", f"--data_path={tiny_root}", "--epochs=1"]
    models = "--models=MF,Other=MF:learning_rate=0.5"
    assert tbl.main([*common, models, f"--out={runs}"]) == 0
    args = [*common, models, "--reuse_only", f"--runs={runs}", f"--out={tmp_path / 'tables'}"]
    assert tbl.main(args) == 0
    assert "precision" not in (tmp_path / "tables" / "tiny" / "table_main.md").read_text()
    for path, precision in zip(sorted(runs.glob("tiny/*/seed2020/result.json")), ["float32", "bf16 autocast"]):
        result = json.loads(path.read_text())  # as if both were LLM runs, computed on two machines
        path.write_text(json.dumps({**result, "stages": {"stage2": {}}, "precision": precision}))
    capsys.readouterr()
    assert tbl.main(args) == 0
    assert "several precisions (float32 (1), bf16 autocast (1))" in capsys.readouterr().out
    caption = (tmp_path / "tables" / "tiny" / "table_main.md").read_text()
    assert "LLM runs of several precisions: float32 (1), bf16 autocast (1)." in caption


def test_mind_runs_get_the_impression_metrics_recomputed_and_rendered(tmp_path):
    """Predictions with an impression_id column (MIND): MIND's metrics per run, columns in the table."""
    import numpy as np

    from recbole_histllm.evaluator import impression_metrics

    rng = np.random.default_rng(1)
    runs, frames = {}, {}
    for i in range(2):
        rows = [(f"U{u}", f"N{k}", int(rng.random() < 0.3), float(rng.random()), f"{u}-{j}")
                for u in range(12) for j in range(2) for k in range(5 * j, 5 * j + 5)]
        frames[i] = pd.DataFrame(rows, columns=["user_id", "item_id", "label", "score", "impression_id"])
        run = tmp_path / f"r{i}" / "seed2020"
        run.mkdir(parents=True)
        frames[i].to_csv(run / "test_predictions.csv", index=False)
        runs[(i, 2020)] = run
    scores, _, _ = tbl.score_runs(runs)
    f = frames[1]
    expected = impression_metrics(f.impression_id.to_numpy(), f.score.to_numpy(), f.label.to_numpy(), (5, 10))[0]
    assert {k: scores[(1, 2020)][k] for k in expected} == pytest.approx(expected, abs=1e-12)
    rows = tbl.parse_rows("MF,HistLLM")
    table = tbl.add_relative_improvement(tbl.summarise(rows, [2020], scores), "HistLLM")
    text = tbl.to_markdown(table, "main", "caption")
    assert "| Group | Method | AUC | UAUC | Rel. Imp. | Imp. AUC | MRR | nDCG@5 | nDCG@10 |" in text
    assert f"{scores[(0, 2020)]['imp_mrr']:.4f}" in text.splitlines()[4]


def test_blend_with_a_reference_row_matches_an_independent_rank_mean(tmp_path, capsys):
    """--blend=MF: each other row's scores rank-averaged with MF's of the same seed, on the common rows."""
    import numpy as np
    from scipy.stats import rankdata

    rng = np.random.default_rng(3)
    users = [str(u) for u in range(30) for _ in range(8)]
    items = [str(k) for _ in range(30) for k in range(8)]
    labels = (rng.random(240) < 0.4).astype(int)
    root = tmp_path / "runs" / "ml-100k"
    preds = {}
    for label, noise in (("MF", 1.0), ("LLM", 1.5)):
        for seed in (2020, 2021):
            score = labels + noise * rng.standard_normal(240)
            if label == "LLM":
                score = np.round(score * 4) / 4  # ties (exact in binary and in the CSV): they share their mean rank
            frame = pd.DataFrame({"user_id": users, "item_id": items, "label": labels, "score": score})
            if label == "LLM" and seed == 2021:
                frame = frame.iloc[8:]  # one user fewer: the blend is on the seed's common rows
            run = root / f"{label}-x" / f"seed{seed}"
            run.mkdir(parents=True)
            frame.to_csv(run / "test_predictions.csv", index=False)
            preds[(label, seed)] = frame
    runs = {(i, s): root / f"{label}-x" / f"seed{s}" for i, label in enumerate(("MF", "LLM")) for s in (2020, 2021)}
    blended = tbl.blend_scores(runs, reference=0)
    assert set(blended) == {(1, 2020), (1, 2021)}
    for seed, start in ((2020, 0), (2021, 8)):
        mf, llm = preds[("MF", seed)].iloc[start:], preds[("LLM", seed)]
        mean = (rankdata(mf.score.to_numpy()) + rankdata(llm.score.to_numpy())) / (2 * len(llm))
        assert blended[(1, seed)]["auc"] == pytest.approx(roc_auc_score(llm.label, mean), abs=1e-12)
        per_user = [roc_auc_score(llm.label[m], mean[m]) for m in (llm.user_id == u for u in dict.fromkeys(llm.user_id))
                    if llm.label[m].nunique() == 2]
        assert blended[(1, seed)]["uauc"] == pytest.approx(float(np.mean(per_user)), abs=1e-12)
    rows = tbl.parse_rows("MF,LLM=MF:learning_rate=0.5")
    path = tbl.write_blend_table(runs, rows, [2020, 2021], "MF", "ml-100k", "main", root, "232-240")
    text = path.read_text()
    assert "| LLM + MF (rank mean) |" in text and "| MF |" in text
    table = pd.read_csv(root / "table_main_blend.csv")
    expected = np.mean([blended[(1, s)]["auc"] for s in (2020, 2021)])
    assert table.loc[table.label == "LLM + MF (rank mean)", "auc_mean"].item() == pytest.approx(expected)
    with pytest.raises(UsageError, match="--blend=DeepFM: no such row"):
        tbl.write_blend_table(runs, rows, [2020, 2021], "DeepFM", "ml-100k", "main", root, "")


def test_blend_with_an_unknown_row_stops_before_any_run(tiny_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tbl, "launch", lambda *a, **k: pytest.fail("a run was launched"))
    assert tbl.main(["--dataset=tiny", f"--data_path={tiny_root}", "--models=MF", "--blend=DeepFM",
                     f"--out={tmp_path}"]) == 2
    assert "--blend=DeepFM: no such row in --models (MF)" in capsys.readouterr().err


def test_histllms_default_holdout_mf_is_not_given_to_collm(tiny_root, tmp_path, monkeypatch):
    """HistLLM.yaml's mf_holdout fits MF without stage 2's rows: CoLLM (whole split) trains its own stage 0."""
    calls: list = []
    monkeypatch.setattr(tbl, "launch", _fake_launcher(calls))
    out = tmp_path / "tables"
    assert tbl.main(["--dataset=tiny", f"--data_path={tiny_root}", f"--out={out}", "--stage1_epochs=1",
                     "--cpu_train_attention=eager", "--models=HistLLM,CoLLM"]) == 0
    given = {label: g for label, _, g in calls}
    assert given["HistLLM"] == {} and set(given["CoLLM"]) == {"lora_checkpoint"}


def test_stage0_with_mf_holdout_is_shared_only_with_the_same_later_rows():
    stage_config = tbl.stage_config
    base = {"dataset": "ml-100k", "seed": 2020, "mf_embedding_size": 256, "stage2_train_rows": 1024,
            "stage2_epochs": 3, "stage2_learning_rate": 1e-3}
    more_rows = {**base, "stage2_train_rows": 2048}
    other_lr = {**base, "stage2_learning_rate": 5e-4}
    assert stage_config("HistLLM", base, 0) == stage_config("HistLLM", more_rows, 0)  # MF fits every train row
    held = {**base, "mf_holdout": True}
    assert stage_config("HistLLM", held, 0) != stage_config("HistLLM", base, 0)
    assert stage_config("HistLLM", held, 0) != stage_config("HistLLM", {**more_rows, "mf_holdout": True}, 0)
    assert stage_config("HistLLM", held, 0) == stage_config("HistLLM", {**other_lr, "mf_holdout": True}, 0)
    repeated = {**held, "stage2_repeat_rows": True}  # one epoch's rows held out, not three
    assert stage_config("HistLLM", repeated, 0) != stage_config("HistLLM", held, 0)
    assert stage_config("HistLLM", {**held, "stage2_repeat_rows": False}, 0) == stage_config("HistLLM", held, 0)
