"""movie converter (The Movies Dataset, Kaggle format) on generated fixtures and the real data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from dataset_audit import check_history

from dataset_converters import movie
from dataset_converters.core import read_inter, read_text_table

META_HEADER = (
    "adult,belongs_to_collection,budget,genres,homepage,id,imdb_id,original_language,original_title,overview,"
    "popularity,poster_path,production_companies,production_countries,release_date,revenue,runtime,"
    "spoken_languages,status,tagline,title,video,vote_average,vote_count"
).split(",")


def _meta_row(tmdb: str, title: str, overview: str, date: str) -> list[str]:
    row = dict.fromkeys(META_HEADER, "")
    row.update(id=tmdb, title=title, original_title=title, overview=overview, release_date=date, adult="False")
    return [row[h] for h in META_HEADER]


def make_raw(root: Path) -> Path:
    raw = root / "raw"
    raw.mkdir()
    # ratings: u1 likes 10 then 20 at the same second, dislikes 30, likes 40 (duplicated: latest kept)
    (raw / "ratings_small.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,10,4.0,100\n"
        "1,20,5.0,100\n"
        "1,30,2.5,200\n"
        "1,40,1.0,250\n"
        "1,40,4.5,300\n"  # duplicated rating of the same movie: the later one wins
        "1,50,4.0,400\n"  # movie 50: no metadata
        "2,20,3.0,50\n"
        "2,10,4.0,60\n"
        "2,30,4.0,70\n"
        "x,10,4.0,80\n"  # malformed: non-numeric user
        "2,10,4.0\n"  # malformed: 3 fields
        "2,40,5.0,9",  # truncated last line (no newline)
        encoding="utf-8",
    )
    (raw / "links_small.csv").write_text(
        "movieId,imdbId,tmdbId\n10,0114709,862\n20,0113497,8844\n30,0113228,15602\n40,0114885,31357\n"
        "50,0113041,\n60,0000001,999\n",
        encoding="utf-8",
    )
    with open(raw / "movies_metadata.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(META_HEADER)
        w.writerow(_meta_row("862", "Toy Story", "Woody\tand Buzz.\nA second line.", "1995-10-30"))
        w.writerow(_meta_row("8844", "Crouching Tiger, Hidden Dragon", 'Swords, "quoted".', "2000-07-06"))
        w.writerow(_meta_row("15602", "Amélie", "Paris.", ""))  # no date -> no year
        w.writerow(_meta_row("1997-08-20", "Broken", "shifted row", "x"))  # malformed id
        w.writerow(_meta_row("31357", "Waiting to Exhale", "Friends.", "1995-12-22"))
        w.writerow(_meta_row("862", "Toy Story dup", "", "1995-10-30"))  # duplicate id
    return raw


def make_posters(root: Path) -> Path:
    posters = root / "posters"
    posters.mkdir()
    (posters / "10.jpg").write_bytes(b"\xff\xd8\xff fake jpeg")
    (posters / "30.jpg").write_bytes(b"\xff\xd8\xff fake jpeg")
    (posters / "40.jpg").write_bytes(b"")  # empty file: not an image
    (posters / "999.jpg").write_bytes(b"\xff\xd8\xff")  # not rated
    return posters


@pytest.fixture()
def converted(tmp_path):
    raw = make_raw(tmp_path)
    out = tmp_path / "out" / "movie"
    summary = movie.build_movie(raw, out, make_posters(tmp_path), max_history=2)
    return out, summary


def test_movie_fixture_summary_and_files(converted):
    out, s = converted
    assert (s["user"], s["item"], s["positive"], s["negative"]) == (2, 4, 5, 2)
    assert s["with_image"] == 2
    assert (s["train"], s["valid"], s["test"]) == (2 + 1, 1 + 1, 1 + 1)  # 4 rows -> 2/1/1, 3 -> 1/1/1
    mal = s["malformed"]
    assert mal["ratings_small.csv"] == {
        "non-numeric userId or movieId": 1,
        "expected 4 fields, got 3": 1,
        "truncated last line (no trailing newline)": 1,
    }
    assert mal["links_small.csv"] == {"missing or non-numeric tmdbId": 1}
    assert mal["movies_metadata.csv"] == {"non-numeric id '1997-08-20'": 1, "duplicate id": 1}
    assert s["dropped"]["duplicate_interaction"] == 1
    assert s["dropped"]["missing_meta_rows_dropped"] == 1
    assert s["dropped"]["empty_image_files"] == 1
    text = read_text_table(out / "movie.text")
    assert list(text.columns) == ["item_id", "title", "description", "overview"]
    titles = dict(zip(text["item_id"], text["title"]))
    assert titles == {
        "10": "Toy Story (1995)",
        "20": "Crouching Tiger, Hidden Dragon (2000)",
        "30": "Amélie",
        "40": "Waiting to Exhale (1995)",
    }
    overview = dict(zip(text["item_id"], text["overview"]))
    assert overview["10"] == "Woody and Buzz. A second line."
    assert overview["20"] == 'Swords, "quoted".'
    inter = read_inter(out / "movie.inter")
    u1 = inter[inter["user_id"] == "1"]
    assert u1["item_id"].tolist() == ["10", "20", "30", "40"]
    assert u1["history"].tolist() == ["", "", "10 20", "10 20"]
    assert inter.loc[(inter.user_id == "1") & (inter.item_id == "40"), "label"].item() == "1"
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["item"] == 4


def test_movie_no_leakage(converted):
    out, _ = converted
    assert check_history(out, max_history=2) == []


def test_movie_missing_meta_keep_and_cli(tmp_path, capsys):
    raw = make_raw(tmp_path)
    out = tmp_path / "kept"
    s = movie.main(["--raw", str(raw), "--out", str(out), "--missing_meta", "keep"])
    assert "#Train" in capsys.readouterr().out
    assert s["dropped"]["missing_meta_rows_kept"] == 1 and s["item"] == 5 and s["with_image"] is None
    text = read_text_table(out / "kept.text")
    assert text.loc[text.item_id == "50", "title"].item() == ""
    assert check_history(out, max_history=20) == []


def test_movie_movielens_title_fallback(tmp_path):
    raw = make_raw(tmp_path)
    # a latin-1 MovieLens movies.dat names movie 50, absent from movies_metadata.csv
    (raw / "ml1m_movies.dat").write_bytes("50::Misérables, Les (1995)::Drama\n".encode("latin-1"))
    s = movie.build_movie(raw, tmp_path / "fb")
    assert s["items_titled_from_movielens"] == 1 and "missing_meta_rows_dropped" not in s["dropped"]
    assert any("latin-1" in k for k in s["notes"])
    titles = dict(read_text_table(tmp_path / "fb" / "fb.text")[["item_id", "title"]].values.tolist())
    assert titles["50"] == "Misérables, Les (1995)"


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "movie"


@pytest.mark.skipif(not (REAL / "raw" / "movies_metadata.csv").is_file(), reason="real movie data absent")
def test_movie_real_data(tmp_path):
    out = tmp_path / "movie"
    s = movie.build_movie(REAL / "raw", out, REAL / "posters")
    assert s["user"] > 600 and s["item"] > 3000
    assert 0.8 * s["item"] > s["with_image"] > 0.5 * s["item"]
    rows = s["positive"] + s["negative"]
    assert rows == s["train"] + s["valid"] + s["test"] > 50_000
    assert 0.7 < s["train"] / rows < 0.85
    assert 0.4 < s["positive"] / rows < 0.7
    assert s["malformed_total"] < 100
    inter = read_inter(out / "movie.inter")
    assert set(inter["item_id"]) <= set(read_text_table(out / "movie.text")["item_id"])
    assert check_history(out, max_history=20) == []
