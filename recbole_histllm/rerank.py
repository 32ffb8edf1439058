"""Re-rank a trained MF's top candidates with a trained LLM recommender (both finished runs).

    python -m recbole_histllm.rerank --run=LLM_RUN --mf_run=MF_RUN [--rerank_k=50] [--rerank_users=N]
        [--output_dir=DIR] [--any_config_key=value ...]

For each test user with at least one test positive (``rerank_users``: a seed-fixed sample of them), the
candidates are the ``rerank_k`` items the MF-style run scores highest among the items the user has no
train row with (and that have train rows at all: an ID model cannot place the others), and nothing else.
The LLM run scores every candidate, its history being the user's likes
strictly before their first test row. Both orderings of the same candidates are measured with RecBole's
metric functions (``recbole.evaluator.metrics``) against the user's test positives (all of them, also
those MF did not propose): Recall@10, NDCG@10 and MRR over the whole candidate list (MRR@K).
``candidate_recall`` is Recall@K, the same for both: the share of positives that MF put among the candidates.
Writes ``rerank.json`` and ``rerank_candidates.csv`` (one row per user and candidate) into ``--output_dir``.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from recbole.evaluator.metrics import MRR, NDCG, Recall

from recbole_histllm.quick_start import claim_output_dir, default_output_dir
from recbole_histllm.run_io import Run, cli_main, load_run
from recbole_histllm.utils import InputError, UsageError

USAGE = ("usage: python -m recbole_histllm.rerank --run=LLM_RUN --mf_run=MF_RUN [--rerank_k=50] "
         "[--rerank_users=N] [--output_dir=DIR]")
CUTOFF = 10
DEFAULT_K = 50


def ranking_metrics(scores: np.ndarray, positive: np.ndarray, n_positive: np.ndarray) -> dict[str, float]:
    """Mean Recall@10, NDCG@10, MRR@K and Recall@K (``candidate_recall``) of candidates ordered by ``scores``
    (users x K; ties keep the candidate order), ``positive`` marking the test positives among them and
    ``n_positive`` each user's number of test positives, by RecBole's metric functions."""
    k = scores.shape[1]
    order = np.argsort(-scores, axis=1, kind="stable")
    pos_index = np.take_along_axis(positive, order, axis=1).astype(bool)
    config = {"topk": [CUTOFF, k], "metric_decimal_place": 4}
    cut = min(CUTOFF, k) - 1
    return {
        f"recall@{CUTOFF}": float(Recall(config).metric_info(pos_index, n_positive)[:, cut].mean()),
        f"ndcg@{CUTOFF}": float(NDCG(config).metric_info(pos_index, n_positive)[:, cut].mean()),
        "mrr": float(MRR(config).metric_info(pos_index)[:, k - 1].mean()),
        "candidate_recall": float(Recall(config).metric_info(pos_index, n_positive)[:, k - 1].mean()),
    }


def _same_ids(a: Run, b: Run) -> None:
    for field in (a.dataset.uid_field, a.dataset.iid_field):
        if list(a.dataset.field2id_token[field]) != list(b.dataset.field2id_token[field]):
            raise InputError(f"--run={a.folder} and --mf_run={b.folder} are not runs of the same dataset "
                             f"({field} ids differ)")


def test_users(run: Run, n_users: int | None, seed: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Internal ids of the (sampled) test users with a test positive, and each one's test positive items."""
    test = run.test_data._dataset
    users = test.inter_feat[test.uid_field].numpy()
    items = test.inter_feat[test.iid_field].numpy()
    liked = test.inter_feat[run.config["LABEL_FIELD"]].numpy() > 0.5
    positives = {int(u): np.unique(items[liked & (users == u)]) for u in np.unique(users[liked])}
    chosen = np.array(sorted(positives), dtype=np.int64)
    if n_users is not None and n_users < len(chosen):
        chosen = np.sort(chosen[np.random.default_rng(seed).permutation(len(chosen))[:n_users]])
    return chosen, {u: positives[u] for u in chosen.tolist()}


def first_test_times(run: Run, users: np.ndarray) -> np.ndarray:
    """Raw timestamp of each user's first test row (from the ``.inter`` file: full precision)."""
    test = run.test_data._dataset
    frame = pd.DataFrame({"user_id": test.id2token(test.uid_field, test.inter_feat[test.uid_field].numpy()),
                          "item_id": test.id2token(test.iid_field, test.inter_feat[test.iid_field].numpy())})
    raw = run.raw_interactions()
    first = frame.merge(raw, on=["user_id", "item_id"]).groupby("user_id")["timestamp"].min()
    return first.reindex(test.id2token(test.uid_field, users)).to_numpy(dtype=float)


def rerank(llm: Run, mf: Run, k: int, n_users: int | None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Candidates from ``mf``, re-scored by ``llm``; returns the metrics of both and the candidate rows."""
    _same_ids(llm, mf)
    ds = mf.dataset
    users, positives = test_users(mf, n_users, int(llm.config["seed"]))
    if len(users) == 0:
        raise InputError(f"--mf_run={mf.folder}: no test user has a test positive")
    n_items = ds.item_num
    k = min(k, n_items - 1)
    train = mf.train_data._dataset
    seen = set(zip(train.inter_feat[train.uid_field].numpy().tolist(),
                   train.inter_feat[train.iid_field].numpy().tolist()))
    all_items = np.arange(1, n_items)
    mf_all = mf.score_ids(np.repeat(users, len(all_items)), np.tile(all_items, len(users)),
                          [[]] * (len(users) * len(all_items)), np.full(len(users) * len(all_items), np.inf))
    mf_all = mf_all.reshape(len(users), len(all_items))
    candidates = np.zeros((len(users), k), dtype=np.int64)
    learnt = mf.train_counts("item")[all_items] > 0  # an ID model cannot place an item it never trained on
    for row, user in enumerate(users.tolist()):
        allowed = learnt & np.array([(user, int(i)) not in seen for i in all_items])
        scores = np.where(allowed, mf_all[row], -np.inf)
        candidates[row] = all_items[np.argsort(-scores, kind="stable")[:k]]
    mf_scores = np.take_along_axis(mf_all, candidates - 1, axis=1)
    stamps = np.repeat(first_test_times(mf, users), k)
    raw_users = list(ds.id2token(ds.uid_field, np.repeat(users, k)))
    start = time.time()
    llm_scores = llm.score_ids(np.repeat(users, k), candidates.reshape(-1), llm.histories(raw_users, stamps),
                               stamps).reshape(len(users), k)
    llm_s = time.time() - start
    positive = np.array([np.isin(candidates[r], positives[u]) for r, u in enumerate(users.tolist())])
    n_positive = np.array([len(positives[u]) for u in users.tolist()], dtype=np.int64)
    result = {
        "llm": ranking_metrics(llm_scores, positive, n_positive),
        "mf": ranking_metrics(mf_scores, positive, n_positive),
        "users": len(users), "rerank_k": k, "llm_rows": int(llm_scores.size), "llm_score_s": round(llm_s, 1),
    }
    rows = pd.DataFrame({
        "user_id": raw_users, "item_id": ds.id2token(ds.iid_field, candidates.reshape(-1)),
        "mf_score": mf_scores.reshape(-1), "llm_score": llm_scores.reshape(-1),
        "positive": positive.reshape(-1).astype(int), "user_positives": np.repeat(n_positive, k),
    })
    return result, rows


def command(args: dict[str, str]) -> int:
    """``--run``, ``--mf_run``, ``--rerank_k``, ``--rerank_users``, ``--output_dir``; other keys: config overrides."""
    mf_dir = args.pop("mf_run", None)
    if not mf_dir:
        raise UsageError(f"--mf_run=DIR is required. {USAGE}")
    output_dir = args.pop("output_dir", None)
    llm_dir = args.pop("run")
    llm = load_run(llm_dir, **args)
    mf = load_run(mf_dir, **{key: value for key, value in args.items() if key == "data_path"})
    if llm.result["dataset"] != mf.result["dataset"]:
        raise InputError(f"--run is on {llm.result['dataset']}, --mf_run on {mf.result['dataset']}")
    k = int(llm.config["rerank_k"]) if "rerank_k" in llm.config else DEFAULT_K  # (no property default: config.py)
    n_users = llm.config["rerank_users"] if "rerank_users" in llm.config else None
    result, rows = rerank(llm, mf, k, None if n_users is None else int(n_users))
    result.update(run=str(llm_dir), mf_run=str(mf_dir), model=llm.result["model"], mf_model=mf.result["model"],
                  dataset=llm.result["dataset"], seed=llm.config["seed"],
                  finished=datetime.now().isoformat(timespec="seconds"))
    if output_dir:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
    else:
        out = claim_output_dir(default_output_dir(f"rerank-{llm.result['model']}", llm.result["dataset"]))
    rows.to_csv(out / "rerank_candidates.csv", index=False)
    (out / "rerank.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"{result['users']} users x {result['rerank_k']} MF candidates ({mf.result['model']} -> "
          f"{llm.result['model']}):")
    for name in ("mf", "llm"):
        print(f"  {name:4s} " + "  ".join(f"{key} {value:.4f}" for key, value in result[name].items()))
    print(f"results written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli_main(argv, USAGE, command)


if __name__ == "__main__":
    sys.exit(main())
