"""Tests of the shared converter core: split counts, history, filters, atomic writing."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from dataset_converters import core


def _frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "label", "timestamp"])


def test_split_counts_match_recbole():
    from recbole.data.dataset import Dataset

    for tot in range(1, 60):
        ids = [int(x) for x in Dataset._calcu_split_ids(None, tot=tot, ratios=[0.8, 0.1, 0.1])]
        bounds = [0] + ids + [tot]
        expected = [bounds[i + 1] - bounds[i] for i in range(3)]
        assert core.split_counts(tot) == expected, tot


def test_history_strictly_earlier_liked_oldest_first():
    df = _frame(
        [
            ("u", "a", 1, 1.0),
            ("u", "b", 1, 2.0),
            ("u", "c", 1, 2.0),  # same time as b: neither sees the other
            ("u", "d", 0, 3.0),  # disliked: never in history
            ("u", "e", 1, 4.0),
            ("u", "f", 1, 5.0),
            ("v", "a", 1, 0.5),
        ]
    )
    out = core.build_history(df, max_history=3, show_progress=False)
    got = {(r.user_id, r.item_id): r.history for r in out.itertuples()}
    assert got[("u", "a")] == ""
    assert got[("u", "b")] == "a"
    assert got[("u", "c")] == "a"
    assert got[("u", "d")] == "a b c"
    assert got[("u", "e")] == "a b c"
    assert got[("u", "f")] == "b c e"  # at most 3, the most recent ones
    assert got[("v", "a")] == ""


def test_history_prior_counts_as_earlier():
    df = _frame([("u", "x", 1, 10.0), ("u", "y", 0, 20.0)])
    out = core.build_history(df, max_history=2, prior_history={"u": ["p1", "p2", "p3"]})
    assert out["history"].tolist() == ["p2 p3", "p3 x"]


def test_history_zero_length():
    out = core.build_history(_frame([("u", "x", 1, 1.0), ("u", "y", 1, 2.0)]), max_history=0)
    assert out["history"].tolist() == ["", ""]


def test_kcore_and_sampling_deterministic():
    rows = [(f"u{u}", f"i{i}", (u + i) % 2, float(i)) for u in range(10) for i in range(u + 1)]
    df = _frame(rows)
    k = core.kcore_filter(df, user_core=3, item_core=3)
    assert k.groupby("user_id").size().min() >= 3
    assert k.groupby("item_id").size().min() >= 3
    a = core.sample_interactions(df, n_users=4, n_items=5, seed=7)
    b = core.sample_interactions(df, n_users=4, n_items=5, seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert a["user_id"].nunique() <= 4 and a["item_id"].nunique() <= 5


def test_duplicates_keep_latest_and_counted():
    report = core.ConversionReport()
    df = _frame([("u", "a", 0, 1.0), ("u", "a", 1, 5.0), ("u", "b", 1, 2.0)])
    out = core.drop_duplicates(df, report=report)
    assert sorted(map(tuple, out.values.tolist())) == [("u", "a", 1, 5.0), ("u", "b", 1, 2.0)]
    assert report.dropped["duplicate_interaction"] == 1


@pytest.mark.parametrize("index", ["range", "shuffled", "repeated"])
@pytest.mark.parametrize("categorical", [False, True])
def test_duplicates_match_sort_then_duplicated(index, categorical):
    """drop_duplicates keeps the rows the plain pandas way keeps (sort by time, stable; duplicated keep=last;
    sort_index): ties and NaN times, str or categorical keys (MIND's codes), a shuffled or repeated index."""
    rng = np.random.default_rng(3)
    n = 400
    df = pd.DataFrame({"user_id": rng.choice(["u1", "u2", "u3", None], n).astype(object),
                       "item_id": rng.choice([f"i{k}" for k in range(9)], n).astype(object),
                       "label": rng.integers(0, 2, n),
                       "timestamp": np.where(rng.random(n) < 0.05, np.nan, rng.integers(0, 20, n).astype(float))})
    if categorical:
        df["item_id"] = df["item_id"].astype("category")
    if index == "shuffled":
        df.index = rng.permutation(n)
    elif index == "repeated":
        df.index = np.repeat(np.arange(n // 2), 2)
    ordered = df.sort_values("timestamp", kind="mergesort")
    want = ordered[~ordered.duplicated(["user_id", "item_id"], keep="last")].sort_index()
    pd.testing.assert_frame_equal(core.drop_duplicates(df), want)
    report = core.ConversionReport()  # no repeated key: the same rows back, nothing counted
    pd.testing.assert_frame_equal(core.drop_duplicates(want, report=report), want.sort_index())
    assert not report.dropped


def test_missing_meta_policy():
    df = _frame([("u", "a", 1, 1.0), ("u", "zz", 1, 2.0)])
    report = core.ConversionReport()
    assert len(core.apply_missing_meta(df, {"a"}, "drop", report)) == 1
    assert report.dropped["missing_meta_rows_dropped"] == 1
    assert len(core.apply_missing_meta(df, {"a"}, "keep", report)) == 2
    assert report.dropped["missing_meta_rows_kept"] == 1
    with pytest.raises(ValueError):
        core.apply_missing_meta(df, {"a"}, "maybe")


def test_finalize_writes_contract(tmp_path):
    inter = _frame([("u1", "a", 1, 1.0), ("u1", "b", 0, 2.0), ("u1", "c", 1, 3.0), ("u2", "c", 1, 1.0)])
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["A\tx", "B\nline", "C\r"], "overview": ["o", "", "p"]})
    out = tmp_path / "toy"
    summary = core.finalize_dataset(inter, items, out, image_items={"a", "zzz"})
    inter_lines = (out / "toy.inter").read_text(encoding="utf-8").splitlines()
    assert inter_lines[0] == core.INTER_HEADER
    assert inter_lines[1:] == ["u1\ta\t1\t1\t", "u1\tb\t0\t2\ta", "u1\tc\t1\t3\ta", "u2\tc\t1\t1\t"]
    assert (out / "toy.item").read_text(encoding="utf-8").splitlines() == ["item_id:token", "a", "b", "c"]
    text = core.read_text_table(out / "toy.text")
    assert list(text.columns) == ["item_id", "title", "description", "overview"]
    assert text["title"].tolist() == ["A x", "B line", "C"]
    assert text["description"].tolist() == ["", "", ""]
    saved = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert saved["with_image"] == 1 and summary["user"] == 2 and summary["item"] == 3
    # u1: 3 rows -> 1/1/1; u2: 1 row -> 1/0/0
    assert (summary["train"], summary["valid"], summary["test"]) == (2, 1, 1)
    assert summary["positive"] == 3 and summary["negative"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]  # no temporary leftovers
    assert "#Train" in core.format_summary(summary, "toy")


def test_text_side_file_parsed_verbatim(tmp_path):
    """One parser of ``.text``: cells as written (spaces, quotes, numbers as str), BOM and CRLF dropped,
    blank lines skipped, short rows padded; the frame is the same rows."""
    path = tmp_path / "x.text"
    path.write_bytes("\ufeffitem_id\ttitle\tdescription\r\n001\t A \"b\r\n\n2\t1.0\tNA\n3".encode())
    header, rows = core.read_text_rows(path)
    assert header == ["item_id", "title", "description"]
    assert rows == [["001", ' A "b', ""], ["2", "1.0", "NA"], ["3", "", ""]]
    frame = core.read_text_table(path)
    assert list(frame.columns) == header and frame.values.tolist() == rows


@pytest.mark.parametrize("content, where", [("", "x.text: empty"), ("item_id\ttitle\n1\ta\n2\tb\tc\n", "x.text:3:")])
def test_text_side_file_errors_name_file_and_line(tmp_path, content, where):
    path = tmp_path / "x.text"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=where):
        core.read_text_table(path)


def test_atomic_writer_keeps_old_on_failure(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "ds.inter").write_text("old\n")
    with pytest.raises(RuntimeError):
        with core.atomic_output_dir(out) as tmp:
            (tmp / "ds.inter").write_text("half")
            raise RuntimeError("killed")
    assert (out / "ds.inter").read_text() == "old\n"
    assert os.listdir(tmp_path) == ["ds"]
    with core.atomic_output_dir(out) as tmp:
        (tmp / "ds.inter").write_text("new\n")
    assert (out / "ds.inter").read_text() == "new\n"
    assert os.listdir(tmp_path) == ["ds"]


def test_report_counts_all_shows_few(caplog):
    report = core.ConversionReport(show=2)
    with caplog.at_level("WARNING", logger="dataset_converters"):
        for i in range(7):
            report.bad("dir/f.csv", i + 1, "bad thing", "x,y")
    assert report.malformed == {"f.csv": {"bad thing": 7}}
    assert report.malformed_total == 7
    assert sum("bad thing" in r.getMessage() for r in caplog.records) == 2
