"""netflix converter (Netflix Prize format) on generated fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from dataset_audit import check_history, same_dataset

from dataset_converters import netflix
from dataset_converters.core import read_inter, read_text_table


def make_raw(root: Path) -> Path:
    raw = root / "raw"
    raw.mkdir()
    (raw / "combined_data_1.txt").write_text(
        "1:\n"
        "1001,5,2005-09-06\n"
        "1002,3,2005-05-13\n"
        "1003,4,2005-01-01\n"
        "2:\n"
        "1001,4,2005-09-06\n"  # rated (1001, 2) twice:
        "1001,2,2005-09-07\n"  # the later rating wins (a dislike)
        "1002,4,2005-06-01\n"
        "bad,line\n"  # malformed: 2 fields
        "1003,6,2005-01-02\n",  # malformed: rating 6
        encoding="ascii",
    )
    (raw / "combined_data_2.txt").write_text(
        "1004,5,2005-01-01\n"  # malformed: rating before any movie header
        "3:\n"
        "1001,5,2005-10-01\n"
        "1002,1,2005-13-01\n"  # malformed: month 13
        "1003,5,2005-02-01\n"
        "4:\n"
        "1001,4,2005-11-01\n"
        "7:\n"
        "1002,5,2005-07-01\n"  # movie 7 has no title
        "1002,4,2005-0",  # truncated last line
        encoding="ascii",
    )
    titles = (
        "1,2003,Dinosaur Planet\n"
        "2,NULL,Isle of Man TT 2004 Review\n"
        "3,2004,The Rise and Fall of ECW, Part 2, Extended\n"  # unquoted commas in the title
        "4,2001,Amélie, la fabuleuse\n"  # latin-1 bytes
    )
    (raw / "movie_titles.csv").write_bytes(titles.encode("latin-1"))
    return raw


@pytest.fixture()
def converted(tmp_path):
    raw = make_raw(tmp_path)
    out = tmp_path / "netflix"
    return out, netflix.build_netflix(raw, out, max_history=3)


def test_netflix_summary_titles_and_report(converted):
    out, s = converted
    # rows: 1001 x {1,2,3,4}, 1002 x {1,2}, 1003 x {1,3}
    assert (s["user"], s["item"], s["positive"] + s["negative"]) == (3, 4, 8)
    assert s["positive"] == 6 and s["negative"] == 2
    assert s["malformed"]["combined_data_1.txt"] == {"expected 3 fields, got 2": 1, "rating not in 1..5": 1}
    assert s["malformed"]["combined_data_2.txt"] == {
        "rating without a valid movie header": 1,
        "invalid date": 1,
        "truncated last line (no trailing newline)": 1,
    }
    assert s["dropped"]["duplicate_interaction"] == 1
    assert s["dropped"]["missing_meta_rows_dropped"] == 1
    assert any("latin-1" in k for k in s["notes"])
    titles = dict(read_text_table(out / "netflix.text")[["item_id", "title"]].values.tolist())
    assert titles == {
        "1": "Dinosaur Planet (2003)",
        "2": "Isle of Man TT 2004 Review",
        "3": "The Rise and Fall of ECW, Part 2, Extended (2004)",
        "4": "Amélie, la fabuleuse (2001)",
    }
    inter = read_inter(out / "netflix.inter")
    u = inter[inter.user_id == "1001"]
    assert u["item_id"].tolist() == ["1", "2", "3", "4"]
    assert u["label"].tolist() == ["1", "0", "1", "1"]
    assert u["history"].tolist() == ["", "1", "1", "1 3"]  # the kept duplicate is the later day
    assert float(u["timestamp"].iloc[0]) == 1125964800.0  # 2005-09-06 UTC


def test_netflix_no_leakage(converted):
    out, _ = converted
    assert check_history(out, max_history=3) == []


def test_netflix_sampling_deterministic(tmp_path):
    raw = make_raw(tmp_path)
    a = netflix.build_netflix(raw, tmp_path / "a", sample_users=2, seed=3, missing_meta="keep")
    b = netflix.build_netflix(raw, tmp_path / "b", sample_users=2, seed=3, missing_meta="keep")
    assert a["user"] == b["user"] == 2 and a["users_before_sampling"] == 3
    assert (tmp_path / "a" / "a.inter").read_bytes() == (tmp_path / "b" / "b.inter").read_bytes()
    # the first pass does not count malformed lines twice
    assert a["malformed"]["combined_data_1.txt"]["rating not in 1..5"] == 1


def test_netflix_cli_kcore(tmp_path, capsys):
    raw = make_raw(tmp_path)
    s = netflix.main(["--raw", str(raw), "--out", str(tmp_path / "k"), "--user_core", "3"])
    assert s["user"] == 1 and s["dropped"]["kcore"] == 4
    assert "#Positive" in capsys.readouterr().out


PARITY = Path(__file__).parent / "data" / "netflix_parity"


@pytest.mark.parametrize(
    ("name", "options"),
    [("full", {"max_history": 3, "missing_meta": "keep"}), ("sample", {"sample_users": 25, "seed": 5})],
)
@pytest.mark.parametrize("block_bytes", [netflix.BLOCK_BYTES, 97])
def test_netflix_parser_matches_line_by_line_parser(tmp_path, monkeypatch, name, options, block_bytes):
    """Golden output of the line-by-line parser on a fixture with BOM, CRLF, blank and whitespace lines,
    padded fields, latin-1 bytes, Unicode digits, bad headers, leap days, a truncated last line and 6%
    random corruption (tests/data/netflix_parity): the vectorised parser reproduces it byte for byte, also
    when the blocks cut lines (97 bytes)."""
    monkeypatch.setattr(netflix, "BLOCK_BYTES", block_bytes)
    out = tmp_path / name
    netflix.build_netflix(PARITY / "raw", out, **options)
    assert same_dataset(out, PARITY / name)


def test_netflix_fast_dates_match_reference():
    """The vectorised date arithmetic agrees with date_to_timestamp on valid and invalid calendar dates."""
    dates = [f"{y:04d}-{m:02d}-{d:02d}" for y in (1970, 1999, 2000, 2004, 2005, 2099, 2100)
             for m in range(0, 14) for d in (0, 1, 15, 28, 29, 30, 31, 32)]
    buf = b"7:\n" + b"".join(f"{i + 1},3,{d}\n".encode() for i, d in enumerate(dates))
    got, bad, movie, _ = netflix._scan_block(buf, -1)
    stamps = dict(zip(got.user.tolist(), got.timestamp.tolist()))
    for i, d in enumerate(dates):
        assert stamps.get(i + 1) == netflix.date_to_timestamp(d), d
    assert {reason for _, reason, _ in bad} == {"invalid date"} and movie == 7


def write_raw(root: Path, files: dict[str, bytes]) -> Path:
    raw = root / "raw"
    raw.mkdir()
    for name, data in files.items():
        (raw / name).write_bytes(data)
    (raw / "movie_titles.csv").write_text("1,2000,A\n2,2001,B\n")
    return raw


def test_netflix_bad_input_counted_with_line(tmp_path, caplog):
    raw = write_raw(tmp_path, {
        "combined_data_1.txt": b"5,4,2005-01-01\n1:\n5,4,2005-01-01\n6,4,2005-02-30\n7,x,2005-01-01\n"
                               b"8,4.5,2005-01-01\n",
        "combined_data_2.txt": b"",
        "combined_data_3.txt": b"2:\n5,1,2005-01-02\n",
    })
    s = netflix.build_netflix(raw, tmp_path / "out")
    assert s["rows"] == 2
    assert s["malformed"] == {
        "combined_data_1.txt": {"rating without a valid movie header": 1, "invalid date": 1, "rating not in 1..5": 2},
        "combined_data_2.txt": {"empty file": 1},
    }
    logged = caplog.text
    assert "combined_data_1.txt:1: rating without a valid movie header" in logged
    assert "combined_data_1.txt:4: invalid date | '6,4,2005-02-30'" in logged
    assert "combined_data_1.txt:5: rating not in 1..5" in logged


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"combined_data_1.txt": b""}, "no valid rating line in combined_data_1.txt (1 malformed lines)"),
        ({"combined_data_1.txt": b"5,4,2005-01-01\n"}, "no valid rating line"),
    ],
)
def test_netflix_no_ratings_is_one_line_error(tmp_path, capsys, files, message):
    from dataset_converters.cli import run_main

    raw = write_raw(tmp_path, files)
    assert run_main(netflix.main, ["--raw", str(raw), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_netflix_huge_ids_are_counted_not_overflowed(tmp_path):
    raw = write_raw(tmp_path, {"combined_data_1.txt": b"1:\n5,4,2005-01-01\n123456789012345678901,4,2005-01-01\n"
                                                     b"99999999999999999999:\n6,4,2005-01-01\n"})
    s = netflix.build_netflix(raw, tmp_path / "out")
    assert s["rows"] == 1
    assert s["malformed"]["combined_data_1.txt"] == {
        "customer id out of range": 1, "movie id out of range": 1, "rating without a valid movie header": 1}


@pytest.mark.parametrize("ending", [b"\n2:\n6,4,2005-01-03\n", b""])
def test_netflix_overlong_line_is_skipped_not_held(tmp_path, monkeypatch, ending):
    """A line over MAX_LINE_BYTES (here 64) is counted and skipped while being read, terminated or not."""
    monkeypatch.setattr(netflix, "MAX_LINE_BYTES", 64)
    monkeypatch.setattr(netflix, "BLOCK_BYTES", 16)
    raw = write_raw(tmp_path, {"combined_data_1.txt": b"1:\n5,4,2005-01-01\n" + b"x" * 500 + ending})
    s = netflix.build_netflix(raw, tmp_path / "out")
    assert s["rows"] == (2 if ending else 1)
    assert s["malformed"]["combined_data_1.txt"] == {"line longer than 64 bytes (skipped)": 1}
