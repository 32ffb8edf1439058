"""Hold items out of a converted dataset: their interactions leave ``.inter``, their text/images stay, so an
LLM run on the new dataset meets them only at scoring time (``recbole_histllm.predict``).

    python scripts/held_out_items.py --dataset=ml-100k [--data_path=dataset] [--n_items=10] [--min_rows=20] \\
        [--max_rows=60] [--seed=2020]

writes ``<data_path>/<dataset>-held/`` and ``<data_path>/<dataset>-held/held_pairs.csv`` (the removed rows:
``user_id,item_id,timestamp,label``; give the first three columns to ``predict``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from dataset_converters.cli import Parser, int_at_least, run_main
from dataset_converters.core import hold_out_items, read_inter


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="held_out_items.py", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data_path", default="dataset")
    parser.add_argument("--n_items", type=int_at_least(1), default=10)
    parser.add_argument("--min_rows", type=int_at_least(1), default=20, help="least interactions of a held item")
    parser.add_argument("--max_rows", type=int_at_least(1), default=60, help="most interactions of a held item")
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args(argv)
    source = Path(args.data_path) / args.dataset
    counts = read_inter(source / f"{args.dataset}.inter").item_id.value_counts()
    order = lambda token: (len(token), token)  # noqa: E731 - numeric order for digit ids
    pool = sorted(counts[(counts >= args.min_rows) & (counts <= args.max_rows)].index, key=order)
    if len(pool) < args.n_items:
        raise ValueError(f"{source}: {len(pool)} items have {args.min_rows}-{args.max_rows} rows, "
                         f"fewer than --n_items={args.n_items}")
    items = sorted(np.random.default_rng(args.seed).choice(pool, args.n_items, replace=False).tolist(), key=order)
    out = Path(args.data_path) / f"{args.dataset}-held"
    held = hold_out_items(source, items, out)
    held[["user_id", "item_id", "timestamp", "label"]].to_csv(out / "held_pairs.csv", index=False)
    print(f"held out {len(items)} items ({' '.join(items)}): {len(held)} rows, {int((held.label == '1').sum())} "
          f"positives -> {out}")


if __name__ == "__main__":
    sys.exit(run_main(main))
