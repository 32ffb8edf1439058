"""Writes the MIND parity fixture's raw files and, with ``--golden``, the golden outputs beside them.

    python tests/data/mind_parity/make_raw.py tests/data/mind_parity [--golden]

The golden outputs came from the line-by-line parser (commit 9520623, before the numpy block parser):
``full``: ``build_mind(raw, "full", max_history=3, missing_meta="keep")``; ``merged``:
``build_mind([raw, raw2], "merged")``; ``fixture``: ``build_mind(<tests/test_converters_mind.make_raw>,
"fixture", max_history=3)``; ``sampled``, ``sampled_keep`` (from commit 5ce91e3, before the ids stayed
codes until sampled): ``build_mind([raw, raw2], "sampled", max_history=3, sample_users=20)``,
``build_mind(raw, "sampled_keep", sample_users=15, sample_items=25, missing_meta="keep", user_core=2, seed=7)``.
``warnings.txt``: the log lines of ``full`` (the first few bad lines of each
file, with file, line and field).
"""

import logging
import random
import sys
from pathlib import Path

root = Path(sys.argv[1])
raw, raw2 = root / "raw", root / "raw2"
raw.mkdir(parents=True, exist_ok=True)
raw2.mkdir(parents=True, exist_ok=True)
rnd = random.Random(15)
news_ids = [f"N{i}" for i in range(1, 41)]
news = [f"{n}\tnews\tnewsus\tTitle {n}\tAbstract {n}.\thttps://assets.msn.com/{n}\t[]\t[]" for n in news_ids[:36]]
news += ["N37\tnews\tbroken", "N38\tnews\tnewsus\t \tempty title\turl\t[]\t[]", "N1\tnews\tnewsus\tDup\t\t\t[]\t[]"]
(raw / "news.tsv").write_text("\n".join(news) + "\n", encoding="utf-8")
T = "11/15/2019 8:55:22 AM"
# every bad-line case of behaviors.tsv and the lines the vectorised scan sends to the reference rules
special = [
    b"\xef\xbb\xbf1\tU1\t11/11/2019 9:05:58 AM\tN1 N2 N99\tN3-1 N4-0\r\n",  # BOM, CRLF
    b"2\tU2\t11/12/2019 1:00:00 PM\t\tN3-0 N5-1\n",  # empty history
    b"\n", b"   \n", b"\t\t\t\t\n", b"\x0c\n", b"\r\r\n",  # blank lines
    b"3\tU1\t11/13/2019 10:00:00 am\tN1  N2\tN5-1 N4-0 N3-0\n",  # lowercase am, double space in history
    b"4\tU2\t11/14/2019 8:55:22 PM\t\tN4-1 N1-0 N7-1\r\r\n",  # two CRs
    b"5\tU3\t11/15/2019 8:55:22 AM\tN1\tN2 N3\n",  # no click labels
    b"6\tU3\tyesterday\tN1\tN2-1\n",  # invalid time
    b"7\tU3\t\tN1\tN2-1 N3-0\n",  # missing time
    b"3\tU1\t11/16/2019 1:00:00 AM\tN1\tN2-1\n",  # duplicate impression id (3 is valid above)
    b"8\tU3\t11/16/2019 1:00:00 AM\tN1\n",  # 4 fields
    b"9\tU3\t11/16/2019 1:00:00 AM\tN1\tN2-1\textra\n",  # 6 fields
    b"10\tU?\t" + T.encode() + b"\tN1\tN2-1 N3-0\n",  # user placeholder
    b"11\tu11\t" + T.encode() + b"\tN1\tN2-1\n", b"12\tU\t" + T.encode() + b"\tN1\tN2-1\n",
    b"13\tU13\t" + T.encode() + b"\tN1\tN2-1 N3 N4-0\n",  # a token without -0/-1
    b"14\tU14\t" + T.encode() + b"\tN1\tN2-2 N3-0\n", b"15\tU15\t" + T.encode() + b"\tN1\t-1 N3-0\n",
    b"16\tU16\t" + T.encode() + b"\tN1\tN2-1-0 N3-1\n",  # news id with a dash: N2-1
    b"17\tU17\t" + T.encode() + b"\tN1\t \n", b"18\tU18\t" + T.encode() + b"\tN1\t\n",  # no impressions
    b"19\tU19\t" + T.encode() + b"\tN1\t N2-1  N3-0 \n",  # padded, double space
    b" 20 \t U20 \t " + T.encode() + b" \t N1 \tN4-1\n",  # padded fields
    b"21 x\tU21\t" + T.encode() + b"\tN1\tN2-1\n", b"\tU22\t" + T.encode() + b"\tN1\tN2-1\n",  # bad impression ids
    b"\"23\"\tU23\t" + T.encode() + b"\tN1\tN2-1\n", b"24\tU24\t" + T.encode() + b"\tN1 'N2\tN3-1\n",  # quotes
    b"25\tU25\t" + T.encode() + b"\tN1\tN'2-1 N3-0\n",
    b"26\tU\xd9\xa3\t" + T.encode() + b"\tN1\tN2-1\n",  # Arabic-Indic digit: a \d digit
    b"27\tU27\t11/15/2019 8:55:60 AM\tN1\tN2-1\n", b"28\tU28\t2/30/2019 8:55:22 AM\tN1\tN2-1\n",  # no such times
    b"29\tU29\t11/15/2019  9:05:58 PM\tN1\tN2-1\n", b"30\tU30\t1/5/2019 12:00:00 AM\tN1\tN2-1\n",
    b"31\tU31\t11/15/19 8:55:22 AM\tN1\tN2-1\n", b"32\tU32\t11/15/2019 13:55:22 PM\tN1\tN2-1\n",
    b"33\tU33\t11/15/2019 8:55:22 AM\tN1\tN\xe92-1 N3-0\n",  # latin-1 byte
    b"34\tU34\t11/15/2019 8:55:22 AM\tN1\tN\xc3\xa92-1 N3-0\n",  # UTF-8 news id
    b"35\tU35\t11/15/2019 8:55:22 AM\tN1\tN2-1\x0bN3-0\n", b"36\tU36\t11/15/2019 8:55:22\xa0AM\tN1\tN2-1\n",
    b"37\tU1\t11/10/2019 7:00:00 AM\tN9 N8\tN5-0 N6-1\n",  # U1's earliest impression: its history wins
    b"38\tU38\t11/15/2019 8:55:22 AM\tN1\tN2-1 N2-0\n",  # one news twice in an impression
    b"6\tU3\t11/17/2019 1:00:00 AM\tN1\tN2-1\n",  # id of a skipped line: not a duplicate
    b"6\tU3\t11/18/2019 1:00:00 AM\tN1\tN3-1\n",  # now it is
    b"6\tU?\t11/18/2019 1:00:00 AM\tN1\tN3-1\n",  # a user error comes before the duplicate
]
users = [f"U{rnd.randint(1, 60)}" for _ in range(25)]
bad = ["{i}\t{u}\t{t}\t{h}", "{i}\t{u}\t{t}\t{h}\t{s}\tx", "{i}\tU?\t{t}\t{h}\t{s}", "{i}\t{u}\t\t{h}\t{s}",
       "{i}\t{u}\t{t}\t{h}\tN1 N2-1", "{i}\t{u}\t{t}\t{h}\tN1-1 N2-x", "{i}\t{u}\t{t}x\t{h}\t{s}",
       "1\t{u}\t{t}\t{h}\t{s}", "{i}\t{u}\t{t}\t{h}\t{s} ", "{i}\t{u}\t{t}\t{h}\t{s}  N3-0", "",
       "{i} \t{u}\t{t}\t{h}\t{s}", "{i}\t{u}\t{t}\t{h}\t"]
history = {u: " ".join(rnd.sample(news_ids, rnd.randint(0, 6))) for u in users}
lines = bytearray(b"".join(special))
for i in range(100, 400):
    u = rnd.choice(users)
    t = f"11/{rnd.randint(9, 15)}/2019 {rnd.randint(1, 12)}:{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d} " \
        f"{rnd.choice('AP')}M"
    s = " ".join(f"{n}-{int(rnd.random() < 0.2)}" for n in rnd.sample(news_ids, rnd.randint(1, 8)))
    line = rnd.choice(bad) if rnd.random() < 0.08 else "{i}\t{u}\t{t}\t{h}\t{s}"
    lines += (line.format(i=i, u=u, t=t, h=history[u], s=s) + "\n").encode()
lines += b"400\tU1\t11/17/2019 1:00:00 AM\tN1\tN2-"  # truncated last line
(raw / "behaviors.tsv").write_bytes(bytes(lines))
(raw2 / "news.tsv").write_text(news[0] + "\nN40\tnews\tnewsus\tForty\t\t\t[]\t[]\n", encoding="utf-8")
(raw2 / "behaviors.tsv").write_text("1\tU2\t11/20/2019 9:00:00 AM\tN5\tN40-1 N3-0\n"
                                    "2\tU1\t11/9/2019 9:00:00 AM\tN7\tN1-1\n", encoding="utf-8")

if "--golden" in sys.argv:
    sys.path[:0] = [str(Path(__file__).resolve().parents[3]), str(Path(__file__).resolve().parents[2])]
    import tempfile

    from test_converters_mind import make_raw

    from dataset_converters.mind import build_mind

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logging.getLogger("dataset_converters").addHandler(Keep())
    logging.getLogger("dataset_converters").setLevel(logging.INFO)
    build_mind(raw, root / "full", max_history=3, missing_meta="keep")
    (root / "warnings.txt").write_text("\n".join(records) + "\n", encoding="utf-8")
    build_mind([raw, raw2], root / "merged")
    build_mind([raw, raw2], root / "sampled", max_history=3, sample_users=20)
    build_mind(raw, root / "sampled_keep", sample_users=15, sample_items=25, missing_meta="keep", user_core=2, seed=7)
    with tempfile.TemporaryDirectory() as tmp:
        build_mind(make_raw(Path(tmp)), root / "fixture", max_history=3)
