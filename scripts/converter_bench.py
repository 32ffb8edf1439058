"""Converter benchmark: seconds and peak memory of the Netflix (or MIND) converter for N synthetic rows.

Writes official-format Netflix Prize files (``combined_data_1..4.txt``: a ``<movie_id>:`` line, then
``customer_id,rating,YYYY-MM-DD`` lines; ``movie_titles.csv``) with N ratings (cached in ``--workdir``),
runs ``dataset_converters.netflix.build_netflix`` on them in a fresh process per N and prints wall
seconds and peak RSS (the child's ``ru_maxrss``), also per million ratings, so the growth in N shows::

    OMP_NUM_THREADS=1 python scripts/converter_bench.py --sizes 1M,3M,10M [--sample_users 5000]
    python scripts/converter_bench.py --sizes 1M --repo /path/to/other/checkout   # another version's converter
    python scripts/converter_bench.py --dataset mind --sizes 300k,1M               # MIND: N impression rows
    python scripts/converter_bench.py --dataset mind --sizes 1M,4M --stage parse --old 9520623  # old vs new

The synthetic files look like the first N ratings of the prize files (which are sorted by movie): about
5,628 ratings per movie (17,770 movies for 100M), raters drawn from 480,189 customers (ids in
1..2,649,429) whatever N, ratings with the prize's shares, dates 1999-11-11..2005-12-31. So
``--sample_users 5000`` keeps about 1% of the rows at any N, as on the real files. Times are wall
seconds and CPU seconds (user + system) of the converter process: on a shared machine CPU seconds are
the steadier figure.

``--dataset mind`` writes MIND-format ``behaviors.tsv`` and ``news.tsv`` instead, shaped like MINDsmall
train: about N impression rows in impressions of about 37 distinct candidates (4% clicked), up to
50,000 users whose history (0-50 news) every impression line repeats, up to 51,282 news.

``--old REV`` also times the converters of git revision REV (``git archive`` of ``dataset_converters``
into ``--workdir``), one row each beside the current one, on the same files. ``--stage parse`` times
only the raw-file parser (MIND: ``load_behaviors`` of behaviors.tsv; Netflix: ``parse_ratings``) and
adds what its result holds (``held MB``: arrays, each distinct string object once, and MIND's prior
histories), so the parser's own memory, peak minus held (minus the ~75 MB of an idle interpreter with
pandas), shows how it grows with N.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dataset_converters.cli import Parser, int_at_least, run_main  # noqa: E402

RATINGS_PER_MOVIE = 5_628
MAX_MOVIES = 17_770
CUSTOMERS = 480_189
MAX_CUSTOMER_ID = 2_649_429
FIRST_DAY, LAST_DAY = date(1999, 11, 11), date(2005, 12, 31)
RATING_P = (0.046, 0.101, 0.287, 0.336, 0.230)  # the prize data's rating shares

MIND_NEWS, MIND_USERS, MIND_CANDIDATES, MIND_CLICK_P = 51_282, 50_000, 37, 0.04

CHILD = """
import importlib, json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from dataset_converters.core import ConversionReport
name, stage, raw = sys.argv[5], sys.argv[6], Path(sys.argv[2])
module = importlib.import_module("dataset_converters." + name)
start = time.perf_counter()
use = resource.getrusage(resource.RUSAGE_SELF)
cpu0 = use.ru_utime + use.ru_stime
if stage == "build":
    result = getattr(module, "build_" + name)(raw, sys.argv[3], sample_users=int(sys.argv[4]) or None)
elif name == "mind":
    result, prior = module.load_behaviors([raw / "behaviors.tsv"], ConversionReport())
else:
    result = module.parse_ratings(module.rating_files(raw), ConversionReport())
seconds = time.perf_counter() - start
use = resource.getrusage(resource.RUSAGE_SELF)
out = {"seconds": seconds, "cpu_seconds": use.ru_utime + use.ru_stime - cpu0, "peak_rss_mb": use.ru_maxrss / 1024}
if stage == "build":
    out.update(rows=result["rows"], held_mb=None)
else:  # what the parser's result holds: its arrays, and each distinct object once (MIND: and the histories)
    columns = [result[c] for c in result] if name == "mind" else []  # MIND's ids: categorical codes + distinct ids
    arrays = [a for s in columns for a in ((s.cat.codes.to_numpy(), s.cat.categories.to_numpy())
                                           if s.dtype.name == "category" else (s.to_numpy(),))] or list(result)
    held = sum(a.nbytes for a in arrays)
    objects = {id(x): x for a in arrays if a.dtype == object for x in a.tolist()}
    if name == "mind":
        objects.update({id(x): x for h in prior.values() for x in (h, *h)})
    held += sum(sys.getsizeof(x) for x in objects.values())
    out.update(rows=len(arrays[0]), held_mb=held / 2**20)
print(json.dumps(out))
"""


def parse_size(text: str) -> int:
    """'10M' / '500k' / '2000' -> int."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    try:
        value = int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text} (e.g. 3M, 500k, 2000)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def write_netflix(folder: Path, n_ratings: int, seed: int = 0, n_files: int = 4) -> Path:
    """Write ``n_ratings`` synthetic ratings in the prize format into ``folder``; returns it."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_movies = min(MAX_MOVIES, max(1, round(n_ratings / RATINGS_PER_MOVIE)))
    n_users = min(CUSTOMERS, n_ratings)
    customers = np.sort(rng.choice(MAX_CUSTOMER_ID, size=n_users, replace=False) + 1).astype(str).astype(object)
    n_days = (LAST_DAY - FIRST_DAY).days + 1
    days = np.array([(FIRST_DAY + timedelta(d)).isoformat() for d in range(n_days)], dtype=object)
    stars = np.array(["1", "2", "3", "4", "5"], dtype=object)
    per_movie = np.bincount(rng.integers(0, n_movies, n_ratings), minlength=n_movies)
    n_files = min(n_files, n_movies)  # no empty file
    bounds = np.linspace(0, n_movies, n_files + 1).round().astype(int)
    for f in range(n_files):
        with open(folder / f"combined_data_{f + 1}.txt", "w", encoding="ascii", newline="\n") as out:
            for movie in range(bounds[f], bounds[f + 1]):
                k = int(per_movie[movie])
                users = customers[rng.integers(0, n_users, k)]
                rates = stars[rng.choice(5, size=k, p=RATING_P)]
                when = days[rng.integers(0, n_days, k)]
                out.write(f"{movie + 1}:\n")
                if k:
                    out.write("\n".join(map(",".join, zip(users, rates, when))) + "\n")
    with open(folder / "movie_titles.csv", "w", encoding="latin-1", newline="\n") as out:
        out.writelines(f"{m},{1950 + m % 56},Movie {m}, Part {m % 7}\n" for m in range(1, n_movies + 1))
    return folder


def write_mind(folder: Path, n_rows: int, seed: int = 0) -> Path:
    """Write MIND-format ``behaviors.tsv`` / ``news.tsv`` with ``n_rows`` impression rows; returns ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_news = min(MIND_NEWS, max(100, n_rows // 100))
    n_users = min(MIND_USERS, max(1, n_rows // 117))
    n_imp = max(1, n_rows // MIND_CANDIDATES)
    news = np.array([f"N{i + 1}" for i in range(n_news)], dtype=object)
    histories = [" ".join(news[rng.choice(n_news, rng.integers(0, 51), replace=False)]) for _ in range(n_users)]
    per_imp = np.minimum(1 + np.bincount(rng.integers(0, n_imp, n_rows - n_imp), minlength=n_imp), n_news)
    start = datetime(2019, 11, 9)
    with open(folder / "behaviors.tsv", "w", encoding="utf-8", newline="\n") as out:
        for imp, k in enumerate(per_imp.tolist()):
            user = int(rng.integers(0, n_users))
            t = start + timedelta(seconds=int(rng.integers(0, 6 * 86400)))
            when = f"{t.month}/{t.day}/{t.year} {(t.hour - 1) % 12 + 1}:{t:%M:%S %p}"  # 11/9/2019 8:05:02 AM
            clicks = (rng.random(k) < MIND_CLICK_P).astype(int).astype(str)
            shown = " ".join(map("-".join, zip(news[rng.choice(n_news, k, replace=False)], clicks)))
            out.write(f"{imp + 1}\tU{user + 1}\t{when}\t{histories[user]}\t{shown}\n")
    with open(folder / "news.tsv", "w", encoding="utf-8", newline="\n") as out:
        out.writelines(f"{n}\tnews\tnewsworld\tTitle of {n}\tAbstract of {n}.\thttps://assets.msn.com/{n}\t[]\t[]\n"
                       for n in news)
    return folder


def run_one(repo: Path, raw: Path, out: Path, sample_users: int, dataset: str = "netflix",
            stage: str = "build") -> dict:
    """Convert (``stage="parse"``: only parse) ``raw`` with ``repo``'s converter in a fresh process; its
    seconds, peak RSS, rows (and, parsing, the MB its result holds)."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(repo), str(raw), str(out), str(sample_users), dataset, stage],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"converter failed on {raw}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def checkout(repo: Path, rev: str, workdir: Path) -> Path:
    """A folder holding ``dataset_converters`` as it is at git revision ``rev`` of ``repo`` (kept in ``workdir``)."""
    git = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", f"{rev}^{{commit}}"],
                         capture_output=True, text=True, check=False)
    if git.returncode:
        raise ValueError(f"--old: no git revision {rev} in {repo}")
    folder = workdir / f"code_{git.stdout.strip()}"
    if not (folder / "dataset_converters").is_dir():
        archive = subprocess.run(["git", "-C", str(repo), "archive", git.stdout.strip(), "dataset_converters"],
                                 capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(folder.with_suffix(".part"), filter="data")
        folder.with_suffix(".part").rename(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("netflix", "mind"), default="netflix", help="converter to time")
    parser.add_argument("--sizes", default="1M,3M,10M", help="comma-separated numbers of input rows (1M, 500k, ...)")
    parser.add_argument("--sample_users", type=int_at_least(0), default=5000, help="--sample_users of the run (0: off)")
    parser.add_argument("--workdir", default="/tmp/converter_bench", help="where the synthetic files are cached")
    parser.add_argument("--repo", default=str(REPO), help="checkout whose dataset_converters is timed")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the synthetic data")
    parser.add_argument("--old", default=None, help="also time the converters of this git revision of --repo")
    parser.add_argument("--stage", choices=("build", "parse"), default="build",
                        help="build: the whole conversion; parse: only the raw-file parser")
    args = parser.parse_args(argv)
    sizes = [parse_size(s.strip()) for s in args.sizes.split(",") if s.strip()]
    work = Path(args.workdir)
    codes = {"current": Path(args.repo)}
    if args.old:
        old = checkout(Path(args.repo), args.old, work)
        codes[old.name.removeprefix("code_")] = old
    what = "parser" if args.stage == "parse" else f"converter, --sample_users {args.sample_users or 'off'}"
    print(f"{args.dataset} {what}; current: {args.repo}")
    print(f"{'input rows':>11} {'code':>8} {'rows out':>9} {'wall s':>7} {'wall s/M':>8} {'CPU s':>6} {'CPU s/M':>7} "
          f"{'peak MB':>8} {'MB/M':>6} {'held MB':>8}")
    for n in sizes:
        if args.dataset == "netflix":
            raw = work / f"netflix_v2_{n}_seed{args.seed}"
            if not (raw / "movie_titles.csv").is_file():
                write_netflix(raw.with_suffix(".part"), n, args.seed).rename(raw)
        else:
            raw = work / f"mind_{n}_seed{args.seed}"
            if not (raw / "news.tsv").is_file():
                write_mind(raw.with_suffix(".part"), n, args.seed).rename(raw)
        per_m = n / 1e6
        for code, repo in codes.items():
            r = run_one(repo, raw, work / "out" / args.dataset, args.sample_users, args.dataset, args.stage)
            held = "-" if r["held_mb"] is None else f"{r['held_mb']:.1f}"
            print(f"{n:>11,} {code:>8} {r['rows']:>9,} {r['seconds']:>7.1f} {r['seconds'] / per_m:>8.2f} "
                  f"{r['cpu_seconds']:>6.1f} {r['cpu_seconds'] / per_m:>7.2f} {r['peak_rss_mb']:>8.0f} "
                  f"{r['peak_rss_mb'] / per_m:>6.0f} {held:>8}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, errors=(FileNotFoundError, ValueError, RuntimeError)))
