"""MIND converter (behaviors.tsv / news.tsv format) on generated fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from dataset_audit import check_history, same_dataset

from dataset_converters import core, mind
from dataset_converters.core import read_inter, read_text_table


def _news(nid: str, title: str, abstract: str) -> str:
    return "\t".join([nid, "news", "newsworld", title, abstract, f"https://assets.msn.com/{nid}", "[]", "[]"])


def make_raw(root: Path, name: str = "raw") -> Path:
    raw = root / name
    raw.mkdir()
    news = [
        _news("N1", "Title, with commas", "Abstract one."),
        _news("N2", "Café crème", ""),  # non-ASCII, empty abstract
        _news("N3", "Three", "Three abstract"),
        _news("N4", "Four", "Four abstract"),
        _news("N5", "Five", "Five abstract"),
        "N6\tnews\tbroken",  # malformed: 3 fields
    ]
    (raw / "news.tsv").write_text("\n".join(news) + "\n", encoding="utf-8")
    behaviors = [
        "1\tU1\t11/11/2019 9:05:58 AM\tN1 N2 N99\tN3-1 N4-0",  # N99: absent from news.tsv
        "2\tU2\t11/12/2019 1:00:00 PM\t\tN3-0 N5-1",  # empty history
        "3\tU1\t11/13/2019 10:00:00 AM\tN1 N2 N99\tN5-1 N4-0 N3-0",
        "4\tU2\t11/14/2019 8:55:22 PM\t\tN4-1 N1-0 N7-1",  # N7: no metadata
        "5\tU1\t11/14/2019 8:55:22 PM\tN1 N2 N99\tN5-1",  # same news clicked again later
        "6\tU3\t11/15/2019 8:55:22 AM\tN1\tN2 N3",  # test-split style: no labels
        "7\tU3\tyesterday\tN1\tN2-1",  # bad time
        "3\tU1\t11/16/2019 1:00:00 AM\tN1\tN2-1",  # duplicate impression id
        "8\tU3\t11/16/2019 1:00:00 AM\tN1",  # 4 fields
        "9\tU3\t11/17/2019 1:00:00 AM\tN1\tN2-",  # truncated last line
    ]
    (raw / "behaviors.tsv").write_text("\n".join(behaviors), encoding="utf-8")
    return raw


@pytest.fixture()
def converted(tmp_path):
    raw = make_raw(tmp_path)
    out = tmp_path / "mind"
    return out, mind.build_mind(raw, out, max_history=3)


def test_mind_rows_labels_history(converted):
    out, s = converted
    assert (s["user"], s["positive"], s["negative"]) == (2, 5, 5)
    assert s["item"] == 5 and s["item_in_inter"] == 4  # N2 appears only in histories
    assert s["malformed"]["news.tsv"] == {"expected 8 fields, got 3": 1}
    assert s["malformed"]["behaviors.tsv"] == {
        "impressions without click labels": 1,
        "invalid time": 1,
        "duplicate impression id": 1,
        "expected 5 fields, got 4": 1,
        "truncated last line (no trailing newline)": 1,
    }
    assert s["dropped"]["missing_meta_rows_dropped"] == 1  # N7
    assert s["dropped"]["prior_history_missing_meta_dropped"] == 1  # N99 of U1
    inter = read_inter(out / "mind.inter")
    u1 = inter[inter.user_id == "U1"]
    assert u1["item_id"].tolist() == ["N3", "N4", "N5", "N4", "N3", "N5"]
    assert u1["label"].tolist() == ["1", "0", "1", "0", "0", "1"]
    # prior history N1 N2 (N99 dropped) then clicks strictly earlier, at most 3
    assert u1["history"].tolist() == ["N1 N2", "N1 N2", "N1 N2 N3", "N1 N2 N3", "N1 N2 N3", "N2 N3 N5"]
    u2 = inter[inter.user_id == "U2"]
    assert u2["history"].tolist() == ["", "", "N5", "N5"]
    text = read_text_table(out / "mind.text")
    assert list(text.columns) == ["item_id", "title", "description", "abstract"]
    titles = dict(zip(text["item_id"], text["title"]))
    assert titles["N1"] == "Title, with commas" and titles["N2"] == "Café crème"


def test_mind_no_leakage(converted):
    out, _ = converted
    assert check_history(out, max_history=3, prior_history={"U1": ["N1", "N2"]}) == []


def test_mind_keep_missing_and_merge(tmp_path):
    first = make_raw(tmp_path, "train")
    second = tmp_path / "dev"
    second.mkdir()
    (second / "news.tsv").write_text(_news("N8", "Eight", "") + "\n", encoding="utf-8")
    (second / "behaviors.tsv").write_text("1\tU2\t11/20/2019 9:00:00 AM\tN5\tN8-1 N3-0\n", encoding="utf-8")
    out = tmp_path / "merged"
    s = mind.build_mind([first, second], out, missing_meta="keep")
    assert s["dropped"]["missing_meta_rows_kept"] == 1
    assert s["dropped"]["prior_history_missing_meta_kept"] == 1
    inter = read_inter(out / "merged.inter")
    assert inter[inter.user_id == "U2"]["history"].tolist()[-2:] == ["N5 N4 N7", "N5 N4 N7"]
    text = read_text_table(out / "merged.text")
    assert set(text["item_id"]) >= {"N7", "N8", "N99"}
    assert text.loc[text.item_id == "N99", "title"].item() == ""
    assert check_history(out, max_history=20, prior_history={"U1": ["N1", "N2", "N99"]}) == []


def test_mind_cli_images(tmp_path, capsys):
    raw = make_raw(tmp_path)
    images = tmp_path / "img"
    images.mkdir()
    (images / "N3.jpg").write_bytes(b"x")
    (images / "N2.png").write_bytes(b"x")
    s = mind.main(["--raw", str(raw), "--out", str(tmp_path / "news"), "--images", str(images)])
    assert s["with_image"] == 2
    assert "#With image" in capsys.readouterr().out


def test_mind_impression_column_and_target_in_history(converted, tmp_path):
    out, s = converted
    inter = read_inter(out / "mind.inter")
    assert (out / "mind.inter").read_text().splitlines()[0].endswith("\timpression_id:token")
    assert inter.groupby("impression_id")["user_id"].nunique().max() == 1
    assert inter[inter.user_id == "U1"]["impression_id"].tolist() == ["1", "1", "3", "3", "3", "5"]
    # U1 clicked N3 (impression 1) and N5 (impression 3) and is shown them again later: kept and counted
    assert s["target_in_history"] == 2
    # Table-1 split counts by whole impressions, as the plugin splits: U1 has impressions of 2, 3, 1 rows
    # (1 / 1 / 1 impressions), U2 of 2, 2 rows (1 / 0 / 1)
    assert (s["train"], s["valid"], s["test"]) == (2 + 2, 3, 1 + 2)
    second = tmp_path / "dev"
    second.mkdir()
    (second / "news.tsv").write_text(_news("N8", "Eight", "") + "\n", encoding="utf-8")
    (second / "behaviors.tsv").write_text("1\tU2\t11/20/2019 9:00:00 AM\tN5\tN8-1 N3-0\n", encoding="utf-8")
    mind.build_mind([tmp_path / "raw", second], tmp_path / "merged")
    merged = read_inter(tmp_path / "merged" / "merged.inter")
    assert {"0_1", "1_1"} <= set(merged["impression_id"])  # ids restart per folder: prefixed by its index


BAD_LINES = {
    "missing time": "7\tU3\t\tN1\tN2-1 N3-0",
    "user id: not U<digits>": "8\tU?\t11/15/2019 8:55:22 AM\tN1\tN2-1 N3-0",
    "impressions: a token without -0/-1 click label": "9\tU3\t11/15/2019 8:55:22 AM\tN1\tN2-1 N3 N4-0",
}


def test_mind_bad_behaviors_lines_are_counted_skips(tmp_path, caplog):
    raw = tmp_path / "raw"
    raw.mkdir()
    news = [_news("N1", "One", "a"), _news("N2", "Two", "b"), _news("N3", "Three", "c"), "N4\tnews",
            "N5"]  # two rows with fewer columns
    (raw / "news.tsv").write_text("\n".join(news) + "\n", encoding="utf-8")
    good = "1\tU1\t11/11/2019 9:05:58 AM\tN1\tN2-1 N3-0"
    (raw / "behaviors.tsv").write_text("\n".join([good, *BAD_LINES.values()]) + "\n", encoding="utf-8")
    s = mind.build_mind(raw, tmp_path / "mind")
    assert s["malformed"]["behaviors.tsv"] == dict.fromkeys(BAD_LINES, 1)
    assert s["malformed"]["news.tsv"] == {"expected 8 fields, got 2": 1, "expected 8 fields, got 1": 1}
    assert s["rows"] == 2 and s["malformed_total"] == 5
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("behaviors.tsv:2: missing time") for m in logged)  # file, line, field
    assert any(m.startswith("behaviors.tsv:3: user id") for m in logged)


@pytest.mark.parametrize("broken", ["behaviors.tsv", "news.tsv"])
def test_mind_empty_or_unusable_file_is_one_line_error(tmp_path, capsys, broken):
    from dataset_converters.cli import run_main

    raw = make_raw(tmp_path)
    (raw / broken).write_text("")
    assert run_main(mind.main, ["--raw", str(raw), "--out", str(tmp_path / "mind")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {raw / broken}: empty file, expected "
                   + ("impression lines of 5 tab-separated fields" if broken == "behaviors.tsv"
                      else "news rows of 8 tab-separated fields")]
    (raw / "behaviors.tsv").write_text(BAD_LINES["missing time"] + "\n")
    (raw / "news.tsv").write_text(_news("N1", "One", "a") + "\n")
    assert run_main(mind.main, ["--raw", str(raw), "--out", str(tmp_path / "mind")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {raw / 'behaviors.tsv'}: no usable line (1 missing time), expected impression lines of 5 "
        "tab-separated fields")
    assert not (tmp_path / "mind").exists()


PARITY = Path(__file__).parent / "data" / "mind_parity"


@pytest.mark.parametrize("block_bytes", [None, 97, 1])
def test_mind_block_parser_matches_line_by_line_parser(tmp_path, monkeypatch, caplog, block_bytes):
    """Golden outputs of the line-by-line parser (tests/data/mind_parity/make_raw.py) on a behaviors.tsv
    with every bad-line case (field counts, missing/invalid times, ``U?`` users, tokens without -0/-1,
    duplicate ids before and after a valid one, padded fields, quotes, BOM, CRLF, latin-1 and Unicode
    digits, blank and truncated lines), two merged folders, this file's fixture and two sampled runs (users,
    items, k-core, missing_meta keep and drop): the block parser writes the same files byte for byte and logs
    the same lines, also when blocks cut lines."""
    if block_bytes:
        monkeypatch.setattr(mind, "BLOCK_BYTES", block_bytes)
        monkeypatch.setattr(core, "WRITE_ROWS", block_bytes)  # .inter written a few rows at a time
    caplog.set_level("INFO", logger="dataset_converters")
    runs = {"full": ([PARITY / "raw"], {"max_history": 3, "missing_meta": "keep"}),
            "merged": ([PARITY / "raw", PARITY / "raw2"], {}),
            "fixture": ([make_raw(tmp_path)], {"max_history": 3}),
            # sampling (golden: commit 5ce91e3, before the ids stayed codes until sampled): same users and rows
            "sampled": ([PARITY / "raw", PARITY / "raw2"], {"max_history": 3, "sample_users": 20}),
            "sampled_keep": ([PARITY / "raw"], {"sample_users": 15, "sample_items": 25, "missing_meta": "keep",
                                                "user_core": 2, "seed": 7})}
    for name, (raws, options) in runs.items():
        caplog.clear()
        mind.build_mind(raws, tmp_path / name, **options)
        assert same_dataset(tmp_path / name, PARITY / name), name
        if name == "full":
            logged = [r.getMessage() for r in caplog.records]
            assert logged == (PARITY / "warnings.txt").read_text(encoding="utf-8").splitlines()


def test_mind_scan_sends_only_plain_lines_to_the_fast_path():
    """The vectorised scan cuts the impressions of plain lines and leaves every other line to _parse_line."""
    buf = (b"1\tU1\t11/11/2019 9:05:58 AM\tN1 N2\tN3-1 N4-0 N5-1-0\r\n"  # plain (one \r allowed)
           b"2\tU2\t11/11/2019 9:05:58 AM\t\tN3-1  N4-0\n"  # double space
           b"3\tU3\t11/11/2019 9:05:58 AM\t\tN3-1 N4\n"  # no label
           b"4\tU4\t11/11/2019 9:05:58 AM\t\tN\xc3\xa9-1\n"  # non-ASCII
           b"\n5\tU5\t11/11/2019 9:05:58 AM\tN1\tN6-0\n")
    scan = mind._scan_block(buf)
    assert scan.fast.tolist() == [True, False, False, False, False, True]
    assert scan.news == ["N3", "N4", "N5-1", "N6"] and scan.clicks.tolist() == [1, 0, 0, 0]
    assert scan.n_tokens.tolist() == [3, 0, 0, 0, 0, 1] and scan.first_token[5] == 3
    lines = buf.decode().splitlines()
    reasons = [mind._parse_line(line)[1] for line in lines[1:3]]  # the double space is fine there
    assert reasons == [None, "impressions: a token without -0/-1 click label"]
    assert mind._parse_line(lines[3])[2][3] == [("N\u00e9", 1)] and mind._parse_line(lines[4]) == (None, None, None)


def test_mind_fast_time_matches_strptime():
    """_time_of agrees with parse_time (strptime) on plain and unusual times, valid or not."""
    values = [f"{m}/{d}/{y} {h}:{mi}:{s} {p}" for m in ("0", "1", "02", "12", "13") for d in ("0", "1", "29", "31")
              for y in ("0000", "2000", "2019", "2100") for h in ("0", "00", "1", "09", "12", "13")
              for mi in ("0", "05", "59", "60") for s in ("00", "59", "60", "61") for p in ("AM", "PM")]
    values += ["11/15/2019 8:55:22 am", "11/15/2019  8:55:22 PM", "11/15/2019 8:55:22 XM", "11/15/2019 8:55:22",
               "\u0661\u0661/15/2019 8:55:22 AM", "11/15/2019 8:55:22 AM ", "", "11-15-2019 8:55:22 AM"]
    assert [mind._time_of(v) for v in values] == [mind.parse_time(v) for v in values]
