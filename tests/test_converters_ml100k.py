"""ml-100k converter on recbole's bundled copy: contract and no history leakage."""

from __future__ import annotations

from collections import defaultdict

import pytest

from dataset_converters.core import INTER_HEADER, read_text_table
from dataset_converters.ml100k import build_ml100k

MAX_HISTORY = 20


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ml-100k"
    summary = build_ml100k(out, max_history=MAX_HISTORY)
    return out, summary


def _rows(out):
    with open(out / "ml-100k.inter", encoding="utf-8") as f:
        assert f.readline().rstrip("\n") == INTER_HEADER
        return [line.rstrip("\n").split("\t") for line in f]


def test_summary(ml100k):
    _, s = ml100k
    assert (s["user"], s["item"], s["positive"] + s["negative"]) == (943, 1682, 100000)
    assert s["train"] + s["valid"] + s["test"] == 100000
    assert (s["train"], s["valid"], s["test"]) == (80808, 9596, 9596)
    assert s["positive"] == 55375  # ratings >= 4
    assert s["malformed_total"] == 0


def test_no_leakage(ml100k):
    out, _ = ml100k
    rows = _rows(out)
    liked_at = defaultdict(dict)  # user -> item -> timestamp of the like
    for user, item, label, ts, _ in rows:
        if label == "1":
            liked_at[user][item] = float(ts)
    prev = None
    for user, item, label, ts, hist in rows:
        assert label in ("0", "1")
        t = float(ts)
        if prev is not None and prev[0] == user:
            assert t >= prev[1], "rows must be sorted by user then time"
        prev = (user, t)
        items = hist.split(" ") if hist else []
        assert len(items) <= MAX_HISTORY
        assert item not in items or liked_at[user][item] < t
        times = [liked_at[user].get(h) for h in items]
        assert all(x is not None and x < t for x in times), (user, item, ts, hist)
        assert times == sorted(times), "history must be oldest first"
        # complete: the most recent likes strictly before t
        earlier = sorted((x, h) for h, x in liked_at[user].items() if x < t)
        if len(earlier) <= MAX_HISTORY:
            assert len(items) == len(earlier)
        else:
            assert len(items) == MAX_HISTORY


def test_item_and_text(ml100k):
    out, _ = ml100k
    items = (out / "ml-100k.item").read_text(encoding="utf-8").splitlines()
    assert items[0] == "item_id:token" and len(items) == 1683
    text = read_text_table(out / "ml-100k.text")
    assert set(text["item_id"]) == set(items[1:])
    title = dict(zip(text["item_id"], text["title"]))
    assert title["1"] == "Toy Story (1995)"
    assert (text["description"] == "").all()
