"""scripts/converter_bench.py: official-format synthetic Netflix files and the timing table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import converter_bench  # noqa: E402

from dataset_converters import netflix  # noqa: E402
from dataset_converters.core import ConversionReport  # noqa: E402


def test_synthetic_files_are_prize_format(tmp_path):
    raw = converter_bench.write_netflix(tmp_path / "raw", 30_000, seed=1)
    files = netflix.rating_files(raw)
    assert [f.name for f in files] == [f"combined_data_{i}.txt" for i in range(1, 5)]
    lines = b"".join(f.read_bytes() for f in files).decode("ascii").splitlines()
    headers = [line for line in lines if line.endswith(":")]
    assert len(lines) - len(headers) == 30_000 and headers[0] == "1:"
    report = ConversionReport()
    got = netflix.parse_ratings(files, report)
    assert len(got.user) == 30_000 and report.malformed_total == 0
    assert set(got.rating.tolist()) == {1, 2, 3, 4, 5}
    assert converter_bench.write_netflix(tmp_path / "again", 30_000, seed=1) and all(
        (tmp_path / "again" / f.name).read_bytes() == f.read_bytes() for f in files)


def test_bench_prints_one_row_per_size(tmp_path, capsys):
    assert converter_bench.main(["--sizes", "2k,3000", "--workdir", str(tmp_path), "--sample_users", "50"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert [r.split()[:2] for r in rows] == [["2,000", "current"], ["3,000", "current"]]
    for row in rows:  # ratings, code, rows out, wall s, wall s/M, CPU s, CPU s/M, peak MB, MB/M, held MB
        cells = row.split()
        assert len(cells) == 10 and int(cells[2].replace(",", "")) > 0 and cells[9] == "-"
        assert min(float(c) for c in cells[3:7]) >= 0 and float(cells[7]) > 0


def test_bench_parse_stage_old_and_current_side_by_side(tmp_path, capsys):
    """--old REV times the converters of a git revision beside the current ones on the same files."""
    repo = Path(converter_bench.REPO)
    if subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    argv = ["--dataset", "mind", "--sizes", "3k", "--stage", "parse", "--old", "HEAD", "--workdir", str(tmp_path)]
    assert converter_bench.main(argv) == 0
    rows = [r.split() for r in capsys.readouterr().out.strip().splitlines()[2:]]
    assert [r[1] for r in rows][0] == "current" and len(rows) == 2 and rows[1][1] != "current"
    assert rows[0][2] == rows[1][2] == "3,000"  # the same parsed rows
    assert all(float(r[9]) > 0 for r in rows)  # what the parsed rows hold


@pytest.mark.parametrize("text", ["0", "x", "1.5q"])
def test_bench_bad_size(text):
    with pytest.raises(Exception, match="size|>= 1"):
        converter_bench.parse_size(text)


def test_synthetic_mind_files_convert(tmp_path):
    from dataset_converters import mind

    raw = converter_bench.write_mind(tmp_path / "raw", 2000, seed=1)
    s = mind.build_mind(raw, tmp_path / "mind")
    # 2,000 impression rows, none malformed (rows may shrink if the MIND converter drops some by rule)
    assert 1000 < s["rows"] <= 2000 and s["malformed_total"] == 0 and 0 < s["positive"] < 400
    first = (raw / "behaviors.tsv").read_text().splitlines()[0].split("\t")
    assert len(first) == 5 and mind.parse_time(first[2]) is not None
