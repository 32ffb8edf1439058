"""Are poster embeddings meaningful? Nearest neighbours should share a genre beyond chance.

Reads ``image:float_seq`` / ``has_image:float`` from a RecBole ``.item`` file written by
``python -m recbole_histllm.features.visual`` (item ids = MovieLens movieIds), joins genres
from The Movies Dataset (``links_small.csv`` movieId -> tmdbId, ``movies_metadata.csv``
``genres``), and compares, over posters with at least one genre:

- nearest neighbour by cosine similarity (self excluded): shares >= 1 genre / the same
  primary (first listed) genre, and precision@k (share of the k nearest that share a genre);
- mean genre-set Jaccard of the pair, and per genre: given a poster has genre g, how often its
  nearest neighbour has g too;
- the same rates for a random pair, computed exactly over all ordered pairs i != j.

``--pixel_baseline`` adds a trivial control: 8x8 RGB thumbnails of the same posters.

    python scripts/poster_genre_check.py --item_file dataset/movie/movie.item \
        --raw ../shared/data/movie/raw [--images ../shared/data/movie/posters --pixel_baseline]
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RAW = ROOT.parent / "shared" / "data" / "movie" / "raw"


def read_embeddings(item_file: Path, item_field: str = "item_id") -> dict[str, np.ndarray]:
    """item id -> embedding for rows with ``has_image`` 1."""
    with open(item_file, encoding="utf-8") as handle:
        names = [h.split(":")[0] for h in handle.readline().rstrip("\n").split("\t")]
        id_col, img_col, has_col = names.index(item_field), names.index("image"), names.index("has_image")
        out = {}
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            if len(fields) > has_col and float(fields[has_col]) == 1.0:
                out[fields[id_col]] = np.array(fields[img_col].split(), dtype=np.float32)
    return out


def read_genres(raw: Path) -> dict[str, list[str]]:
    """MovieLens movieId -> genre names (in the metadata's order), via links tmdbId."""
    links = pd.read_csv(raw / "links_small.csv", dtype=str)
    meta = pd.read_csv(raw / "movies_metadata.csv", dtype=str, usecols=["id", "genres"])
    meta = meta.drop_duplicates("id")
    by_tmdb: dict[str, list[str]] = {}
    for tmdb, text in zip(meta["id"], meta["genres"], strict=True):
        try:
            names = [g["name"] for g in ast.literal_eval(text)]
        except (ValueError, SyntaxError, TypeError, KeyError):
            continue
        if names:
            by_tmdb[str(tmdb).strip()] = names
    out = {}
    for movie, tmdb in zip(links["movieId"], links["tmdbId"], strict=True):
        if isinstance(tmdb, str) and tmdb.strip():
            key = tmdb.strip().split(".")[0]
            if key in by_tmdb:
                out[movie.strip()] = by_tmdb[key]
    return out


def genre_scores(features: np.ndarray, genres: list[list[str]], k: int = 10, center: bool = True) -> dict:
    """Nearest-neighbour genre agreement vs the exact random-pair rate."""
    x = features.astype(np.float64)
    if center:
        x = x - x.mean(0, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    vocab = sorted({g for gs in genres for g in gs})
    index = {g: i for i, g in enumerate(vocab)}
    multi = np.zeros((len(genres), len(vocab)), dtype=np.float32)
    for row, gs in enumerate(genres):
        multi[row, [index[g] for g in gs]] = 1
    primary = np.array([index[gs[0]] for gs in genres])
    share = (multi @ multi.T) > 0
    n = len(genres)

    order = np.argsort(-sim, axis=1)[:, :k]
    nn = order[:, 0]
    rows = np.arange(n)
    nn_any = float(share[rows, nn].mean())
    nn_primary = float((primary[nn] == primary).mean())
    prec_k = float(share[rows[:, None], order].mean())

    inter = multi @ multi.T
    sizes = multi.sum(1)
    jaccard = inter / (sizes[:, None] + sizes[None, :] - inter)
    nn_jaccard = float(jaccard[rows, nn].mean())
    rand_jaccard = float((jaccard.sum() - n) / (n * (n - 1)))

    np.fill_diagonal(share, False)
    rand_any = float(share.sum() / (n * (n - 1)))
    counts = np.bincount(primary, minlength=len(vocab)).astype(np.float64)
    rand_primary = float((counts * (counts - 1)).sum() / (n * (n - 1)))
    per_genre = {}
    for g in np.argsort(-counts)[:8]:
        mask = primary == g
        per_genre[vocab[g]] = {
            "posters": int(mask.sum()),
            "nn_same_primary": round(float((primary[nn[mask]] == g).mean()), 3),
            "random_same_primary": round(float((counts[g] - 1) / (n - 1)), 3),
        }
    has = {}
    gcounts = multi.sum(0)
    for g in np.argsort(-gcounts):
        if gcounts[g] < 50:
            continue
        mask = multi[:, g] > 0
        has[vocab[g]] = {
            "posters": int(mask.sum()),
            "nn_has_genre": round(float(multi[nn[mask], g].mean()), 3),
            "random_has_genre": round(float((gcounts[g] - 1) / (n - 1)), 3),
        }
    return {
        "posters": n,
        "nn_share_any_genre": round(nn_any, 4),
        "random_share_any_genre": round(rand_any, 4),
        "nn_same_primary_genre": round(nn_primary, 4),
        "random_same_primary_genre": round(rand_primary, 4),
        f"precision_at_{k}_share_any": round(prec_k, 4),
        "nn_genre_jaccard": round(nn_jaccard, 4),
        "random_genre_jaccard": round(rand_jaccard, 4),
        "lift_any": round(nn_any / rand_any, 2),
        "lift_primary": round(nn_primary / rand_primary, 2),
        "per_primary_genre": per_genre,
        "per_genre": has,
    }


def pixel_features(ids: list[str], images: Path, size: int = 8) -> np.ndarray:
    """Trivial control: ``size`` x ``size`` RGB thumbnails."""
    from PIL import Image

    out = []
    for item in ids:
        with Image.open(images / f"{item}.jpg") as im:
            out.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32).ravel())
    return np.stack(out)


def main(argv: list[str] | None = None) -> dict:
    """Print and return the genre agreement of poster embeddings (and controls)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--item_file", required=True, type=Path, help=".item file with image:float_seq")
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW, help="links_small.csv, movies_metadata.csv folder")
    parser.add_argument("--images", type=Path, default=None, help="poster folder (for --pixel_baseline)")
    parser.add_argument("--pixel_baseline", action="store_true", help="also score 8x8 RGB thumbnails")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)

    embeddings = read_embeddings(args.item_file)
    genres = read_genres(args.raw)
    ids = sorted((i for i in embeddings if i in genres), key=lambda s: (len(s), s))
    print(f"{len(embeddings)} posters with embeddings, {len(ids)} of them with genres", file=sys.stderr)
    feats = np.stack([embeddings[i] for i in ids])
    gs = [genres[i] for i in ids]
    results = {
        "item_file": str(args.item_file),
        "dim": int(feats.shape[1]),
        "embedding_centered": genre_scores(feats, gs, args.k, center=True),
        "embedding_raw": genre_scores(feats, gs, args.k, center=False),
    }
    if args.pixel_baseline:
        if args.images is None:
            parser.error("--pixel_baseline needs --images")
        results["pixels_8x8_centered"] = genre_scores(pixel_features(ids, args.images), gs, args.k, center=True)
    keys = [
        "nn_share_any_genre",
        "random_share_any_genre",
        "nn_same_primary_genre",
        "random_same_primary_genre",
        f"precision_at_{args.k}_share_any",
        "nn_genre_jaccard",
        "random_genre_jaccard",
        "lift_any",
        "lift_primary",
    ]
    names = [n for n in results if isinstance(results[n], dict)]
    print(f"{'':28s}" + "".join(f"{n:>22s}" for n in names))
    for key in keys:
        print(f"{key:28s}" + "".join(f"{results[n][key]:>22}" for n in names))
    print("\nper primary genre (centered embeddings): posters, NN same primary, random same primary")
    for genre, row in results["embedding_centered"]["per_primary_genre"].items():
        print(f"  {genre:16s} {row['posters']:5d} {row['nn_same_primary']:8.3f} {row['random_same_primary']:8.3f}")
    print("\nper genre, >= 50 posters (centered embeddings): posters, NN has it, random has it")
    for genre, row in results["embedding_centered"]["per_genre"].items():
        print(f"  {genre:16s} {row['posters']:5d} {row['nn_has_genre']:8.3f} {row['random_has_genre']:8.3f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
