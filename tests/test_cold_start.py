"""Cold-start breakdown (``table_<kind>_cold.md/.csv``): train-row counts from the run's split, AUC / UAUC per
item-frequency bucket against an independent computation (pandas split, sklearn per bucket)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import write_tiny_ctr
from sklearn.metrics import roc_auc_score

from recbole_histllm import cold_start as cs
from recbole_histllm import table as tbl
from recbole_histllm.utils import UsageError

ROWS_PER_USER = 6  # RecBole's RS 8:1:1 of 6 time-ordered rows per user: the first 4 train, then 1 valid, 1 test


@pytest.fixture(scope="module")
def sparse_root(tmp_path_factory):
    """A tiny dataset with many items and few rows per user: items with 0, 1, 2... train rows."""
    root = tmp_path_factory.mktemp("cold")
    write_tiny_ctr(root, "sparse", n_users=16, n_items=40, rows_per_user=ROWS_PER_USER, image_dim=None, seed=3)
    return root


def _train_counts_by_hand(root) -> pd.Series:
    inter = pd.read_csv(root / "sparse" / "sparse.inter", sep="\t", dtype=str)
    inter.columns = [c.split(":")[0] for c in inter.columns]
    inter["timestamp"] = inter.timestamp.astype(int)
    train = inter.sort_values("timestamp").groupby("user_id").head(ROWS_PER_USER - 2)
    return train.item_id.value_counts()


def _uauc_by_hand(frame: pd.DataFrame) -> float:
    aucs = [roc_auc_score(g.label, g.score) for _, g in frame.groupby("user_id") if g.label.nunique() == 2]
    return float(np.mean(aucs)) if aucs else math.nan


@pytest.fixture(scope="module")
def sparse_tables(sparse_root, tmp_path_factory):
    """A table of one MF run on the sparse dataset, with the cold-start breakdown at edges 0,1,3."""
    out = tmp_path_factory.mktemp("tables")
    assert tbl.main(["--dataset=sparse", f"--data_path={sparse_root}", "--models=MF", "--epochs=1",
                     "--cold_buckets=0,1,3", f"--out={out}"]) == 0
    return out


def test_table_writes_buckets_that_match_sklearn_on_the_runs_split(sparse_root, sparse_tables):
    out = sparse_tables
    run = next((out / "sparse").glob("MF-*/seed2020"))
    counts = cs.train_item_counts(run, str(sparse_root))
    by_hand = _train_counts_by_hand(sparse_root)
    assert counts.sort_index().to_dict() == by_hand.sort_index().to_dict()
    predictions = pd.read_csv(run / "test_predictions.csv", dtype={"user_id": str, "item_id": str})
    n = predictions.item_id.map(by_hand).fillna(0).astype(int)
    assert (n == 0).any() and (n > 3).any()  # the fixture has cold and frequent test items
    csv = pd.read_csv(out / "sparse" / "table_main_cold.csv", dtype={"rows": str, "items": str})
    assert list(csv.bucket) == ["0", "1", "2-3", ">3"]
    for bucket, mask in zip(csv.bucket, (n == 0, n == 1, (n >= 2) & (n <= 3), n > 3)):
        part, record = predictions[mask], csv[csv.bucket == bucket].iloc[0]
        assert int(record.rows) == len(part) and int(record["items"]) == part.item_id.nunique()
        auc = roc_auc_score(part.label, part.score) if part.label.nunique() == 2 else math.nan
        for value, expected in ((record.auc_mean, auc), (record.uauc_mean, _uauc_by_hand(part))):
            assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected, abs=1e-9)
    # an item counted as cold has no row at all in the train split
    cold = set(predictions.item_id[n == 0])
    assert cold and not cold & set(counts.index)
    text = (out / "sparse" / "table_main_cold.md").read_text()
    assert "| Method | 0: AUC | 0: UAUC | 1: AUC |" in text and f"| test rows | {int(csv.rows[0])} (" in text
    assert f"| {int(csv.rows[3])} ({int(csv['items'][3])} items) | {int(csv.uauc_users[3])} users |" in text


def _frame(rows: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "label", "score"]).set_index(["user_id", "item_id"])


def test_empty_and_single_label_buckets_show_a_dash():
    frame = _frame([("u1", "a", 1, 0.9), ("u1", "b", 1, 0.2),  # bucket 0: positives only
                    ("u1", "c", 0, 0.1), ("u2", "c", 1, 0.7), ("u2", "d", 0, 0.3), ("u1", "d", 1, 0.6)])
    counts = pd.Series({"c": 50, "d": 60})  # a and b: no train rows; nothing in 1-5 or 6-20
    records = cs.bucket_metrics(frame, counts, cs.DEFAULT_EDGES)
    assert [(r["bucket"], r["rows"], r["items"]) for r in records] == [("0", 2, 2), ("1-5", 0, 0), ("6-20", 0, 0),
                                                                       (">20", 4, 2)]
    assert all(math.isnan(r["auc"]) and math.isnan(r["uauc"]) for r in records[:3])
    big = frame.iloc[2:].reset_index()
    assert records[3]["auc"] == pytest.approx(roc_auc_score(big.label, big.score))
    assert records[3]["uauc"] == pytest.approx(_uauc_by_hand(big)) and records[3]["uauc_users"] == 2
    table = pd.DataFrame([{"column": "", "label": "MF", "model": "MF", "seeds": 1,
                           **{f"{m}_{s}": r[m] if s == "mean" else math.nan for m in cs.METRICS
                              for s in ("mean", "std")}, "bucket": r["bucket"]} for r in records])
    sizes = {r["bucket"]: (f"{r['rows']} ({r['items']} items)", f"{r['uauc_users']} users") for r in records}
    text = cs.to_markdown(table, sizes, "caption", seeds=1)
    assert "| MF | - | - | - | - | - | - | **" in text
    assert "| test rows | 2 (2 items) | 0 users | 0 (0 items) | 0 users |" in text


def test_bucket_names_and_custom_edges():
    assert cs.bucket_names((0, 5, 20)) == ["0", "1-5", "6-20", ">20"]
    assert cs.bucket_names((2, 3, 10)) == ["0-2", "3", "4-10", ">10"]
    assert list(cs.bucket_of(np.array([0, 2, 3, 4, 10, 11]), (2, 3, 10))) == [0, 0, 1, 2, 2, 3]
    assert cs.parse_edges(" 0, 5,20") == (0, 5, 20)


@pytest.mark.parametrize("text", ["5,0", "0,5,5", "-1,3", "a,b", "", "1.5"])
def test_bad_edges_are_one_line_errors(text, capsys):
    with pytest.raises(UsageError, match="strictly increasing"):
        cs.parse_edges(text)
    assert tbl.main(["--dataset=tiny", "--models=MF", f"--cold_buckets={text}", "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--cold_buckets" in err


def test_without_the_dataset_the_main_table_is_still_written(sparse_root, sparse_tables, tmp_path, capsys):
    out = tmp_path / "tables"
    args = ["--dataset=sparse", "--models=MF", "--epochs=1", "--reuse_only", f"--runs={sparse_tables}",
            f"--out={out}", f"--data_path={tmp_path / 'nowhere'}"]
    stale = [out / "sparse" / "table_main_cold.md", out / "sparse" / "table_main_cold.csv"]
    stale[0].parent.mkdir(parents=True)
    for path in stale:
        path.write_text("from an earlier build")
    capsys.readouterr()
    assert tbl.main(args) == 0
    printed = capsys.readouterr().out
    assert "warning: cold-start table not written: unknown dataset 'sparse'" in printed
    assert (out / "sparse" / "table_main.md").is_file()
    assert not [p for p in stale if p.exists()]  # a former cold-start table is not left as if it were this one's
