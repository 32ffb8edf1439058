"""Dataset card: numbers read back from hand-written atomic files, checked against hand counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataset_converters import card
from dataset_converters.cli import run_main

INTER = (
    "user_id:token\titem_id:token\tlabel:float\ttimestamp:float\thistory:token_seq\n"
    "u1\ti1\t1\t86400\t\n"
    "u1\ti2\t0\t172800\ti1\n"
    "u1\ti3\t1\t259200\ti1\n"
    "u2\ti1\t0\t86400\t\n"
    "u2\ti4\t1\t172800\t\n"
)
ITEM = (
    "item_id:token\timage:float_seq\thas_image:float\n"
    "i1\t0.1 0.2\t1\ni2\t0 0\t0\ni3\t0.3 0.1\t1\ni4\t0 0\t0\ni5\t0.5 0.5\t1\n"
)
TEXT = "item_id\ttitle\tdescription\ni1\tA\t\ni2\tB\tabout B\ni3\tC\t\ni4\tD\t\ni5\tE\tabout E\n"


def make_toy(root: Path, inter: str = INTER) -> Path:
    folder = root / "toy"
    folder.mkdir()
    (folder / "toy.inter").write_text(inter)
    (folder / "toy.item").write_text(ITEM)
    (folder / "toy.text").write_text(TEXT)
    return folder


def test_card_numbers(tmp_path):
    c = card.dataset_card(make_toy(tmp_path))
    assert (c["rows"], c["user"], c["item"], c["item_in_inter"]) == (5, 2, 5, 4)
    assert (c["positive"], c["negative"], c["with_image"]) == (3, 2, 3)  # i1, i3, i5 have images
    # per-user 8:1:1 as RecBole splits: 3 rows -> 1/1/1, 2 rows -> 1/0/1
    assert (c["train"], c["valid"], c["test"]) == (2, 1, 2)
    assert c["with_text"] == {"title": 5, "description": 2}
    assert (c["history_mean"], c["history_median"]) == (0.4, 0.0)  # lengths 0 1 1 0 0
    assert (c["rows_per_user_mean"], c["rows_per_user_median"]) == (2.5, 2.5)
    assert (c["first_day"], c["last_day"]) == ("1970-01-02", "1970-01-04")


def test_card_cli_markdown_with_paper_column(tmp_path, capsys):
    folder = make_toy(tmp_path)
    card.main([str(folder), "--paper", "movie"])
    out = capsys.readouterr().out
    assert "| #Rows | 5 | 20,748 |" in out  # the paper's train + valid + test
    assert "| #With image | 3 | 2,381 |" in out
    assert "| #With description | 2 |  |" in out


@pytest.mark.parametrize(
    ("inter", "message"),
    [
        (INTER.replace("u2\ti4\t1", "u2\ti4\tyes"), "toy.inter: line 6: label is not a number"),
        ("user_id:token\titem_id:token\n", "toy.inter: no rows"),
    ],
)
def test_card_bad_input_one_line(tmp_path, capsys, inter, message):
    folder = make_toy(tmp_path, inter)
    assert run_main(card.main, [str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_card_missing_files_one_line(tmp_path, capsys):
    folder = make_toy(tmp_path)
    (folder / "toy.item").unlink()
    assert run_main(card.main, [str(folder)]) == 2
    assert "toy.item not found" in capsys.readouterr().err
