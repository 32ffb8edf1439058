"""Wrote the netflix parity fixture's raw files (``python make_raw.py tests/data/netflix_parity``).

The golden outputs beside it came from the line-by-line parser (commit 3453258):
``build_netflix(raw, "full", max_history=3, missing_meta="keep")`` and
``build_netflix(raw, "sample", sample_users=25, seed=5)``.
"""

import random
import sys
from pathlib import Path

root = Path(sys.argv[1])
raw = root / "raw"
raw.mkdir(parents=True, exist_ok=True)
rnd = random.Random(15)
f1 = bytearray(b"\xef\xbb\xbf1:\r\n")
f1 += b"0001001,5,2005-09-06\r\n 1002 , 3 , 2005-05-13 \n\n   \n1003,4,2004-02-29\n1003,4,2005-02-29\n"
f1 += b"1004,05,2005-01-01\n1004,0,2005-01-01\n1004,x,2005-01-01\n10-04,4,2005-01-01\n1004,4,2005-1-01\n"
f1 += b"1004,4,2005-01-01,extra\n1004,4\n1006,4,1999-12-31\n1007,\xe9,2005-01-01\n1008,4,1899-12-31\n"
f1 += "\u0663,4,2005-01-03\n".encode() + b"1009,2,2005-04-31\n1009,2,2005-00-10\n1009,3,2005-12-31\n"
f1 += b"abc:\n1005,4,2005-01-01\n1005,9,bad\n:\n1005,4,2005-01-02\n 2 :\n1005,4,2005-01-02\n1001,2,2005-09-07\r\n"
f1 += b"2:\n1001,4,2005-09-06\n3\t:\n1002,5,2005-03-03\n\x0c\n1003,1,2000-01-01\r\r\n1003,2,2000-01-02\n"
users = [str(rnd.randint(1, 2_649_429)) for _ in range(60)]
bad = ["{u},{r}", "{u},{r},{d},x", "{u},7,{d}", "{u},{r},{d}T", "x{u},{r},{d}", "{u},{r},2005-02-30", "{u}, {r},{d}",
       "{u},{r},{d} ", "{u}:", "", "{u},,{d}", ",{r},{d}", "{u},{r},", "{u};{r};{d}"]
def rand_lines(movies, n):
    out = bytearray()
    for m in movies:
        out += f"{m}:\n".encode()
        for _ in range(n):
            u, r = rnd.choice(users), rnd.randint(1, 5)
            d = f"{rnd.randint(1999, 2005)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"
            t = rnd.choice(bad) if rnd.random() < 0.06 else "{u},{r},{d}"
            out += (t.format(u=u, r=r, d=d) + "\n").encode()
    return out
f1 += rand_lines(range(10, 20), 20)
f2 = bytearray(b"1004,5,2005-01-01\n1004,5,2005-01-02\n7:\n1002,5,2005-07-01\n")
f2 += rand_lines(range(20, 31), 20)
f2 += b"1002,4,2005-0"
(raw / "combined_data_1.txt").write_bytes(bytes(f1))
(raw / "combined_data_2.txt").write_bytes(bytes(f2))
titles = ["1,2003,Dinosaur Planet", "2,NULL,Isle of Man TT 2004 Review", "3,2004,The Rise and Fall of ECW, Part 2",
          "4,2001,Am\u00e9lie"] + [f"{m},{1990 + m % 15},Movie {m}" for m in range(10, 31) if m not in (13, 27)]
(raw / "movie_titles.csv").write_bytes(("\n".join(titles) + "\n").encode("latin-1"))
