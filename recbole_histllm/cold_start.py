r"""Cold-start breakdown of a table: test AUC / UAUC per item-frequency bucket (``table_<kind>_cold.md/.csv``).

An item's frequency is its number of rows (either label) in the TRAIN split of the run that scored it. That
split is rebuilt as ``quick_start`` builds it (``init_seed``, ``create_dataset``, then ``Dataset.build()``,
which ``data_preparation`` calls) from the keys that decide it as the run recorded them in its ``result.json``
(:func:`split_keys`: seed, ``eval_args`` and RecBole's dataset arguments: fields, columns, filters), read
from the table's ``data_path``; runs with the same such keys share one rebuild. Bucket edges ``0,5,20``
(``--cold_buckets``) give the buckets ``0``, ``1-5``, ``6-20`` and ``>20``.

Each bucket is scored as the table scores a run (:func:`recbole_histllm.run_files.metrics_on`: sklearn AUC, UAUC
as the evaluator, over the users with both labels inside the bucket) on the rows every run of the seed scored
(:func:`recbole_histllm.run_files.common_rows`). A metric that is undefined in a bucket (one label only; no user
with both) shows ``-``; a row without a finished run shows ``n/a``. The markdown gives each bucket's test rows
and distinct items, the csv also the users UAUC averaged over.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recbole_histllm import run_files
from recbole_histllm.utils import UsageError

DEFAULT_EDGES = (0, 5, 20)
METRICS = ("auc", "uauc")


def parse_edges(text: str) -> tuple[int, ...]:
    """``--cold_buckets=0,5,20``: strictly increasing train-row counts >= 0 (the upper edge of each bucket)."""
    message = f"--cold_buckets={text}: expected strictly increasing train-row counts >= 0, e.g. 0,5,20"
    try:
        edges = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise UsageError(message) from None
    if edges[0] < 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise UsageError(message)
    return edges


def bucket_names(edges: tuple[int, ...]) -> list[str]:
    """``(0, 5, 20)`` -> ``['0', '1-5', '6-20', '>20']``."""
    names, low = [], 0
    for edge in edges:
        names.append(str(edge) if edge == low else f"{low}-{edge}")
        low = edge + 1
    return [*names, f">{edges[-1]}"]


def bucket_of(counts: np.ndarray, edges: tuple[int, ...]) -> np.ndarray:
    """Bucket index per train-row count: ``count <= edges[0]`` -> 0, ``edges[k-1] < count <= edges[k]`` -> k,
    above the last edge -> ``len(edges)``."""
    return np.searchsorted(np.asarray(edges), np.asarray(counts), side="left")


@functools.lru_cache(maxsize=1)
def split_keys() -> tuple[str, ...]:
    """The config keys that decide a run's rows and its split (not the sampling of its loaders)."""
    from recbole.utils import argument_list

    return ("seed", "reproducibility", "eval_args", *argument_list.dataset_arguments)


def split_spec(result: dict[str, Any], data_path: str | None) -> str:
    """The split keys a run recorded (its data path left out: the table's ``data_path`` is read), as JSON."""
    config = result.get("config") or {}
    spec = {k: config[k] for k in split_keys() if k in config}
    if data_path is not None:
        spec["data_path"] = data_path
    return json.dumps(spec, sort_keys=True, default=str)


@functools.lru_cache(maxsize=8)
def _train_counts(model: str, dataset: str, spec: str) -> pd.Series:
    from recbole.data import create_dataset
    from recbole.utils import init_seed

    from recbole_histllm.config import Config
    from recbole_histllm.quick_start import ensure_dataset

    config = Config(model=model, dataset=dataset, config_dict=json.loads(spec))
    init_seed(config["seed"], config["reproducibility"])  # as quick_start: a shuffled (RO) split depends on it
    ensure_dataset(config)
    train = create_dataset(config).build()[0]
    items = train.id2token(train.iid_field, train.inter_feat[train.iid_field].numpy())
    return pd.Series(items, dtype=str).value_counts()


def train_item_counts(run: Path, data_path: str | None = None) -> pd.Series:
    """``{raw item id: rows in the train split}`` of the split ``run`` was trained on (items absent: 0)."""
    result = run_files.read_result(run / "result.json")
    if result is None:
        raise UsageError(f"{run / 'result.json'}: missing or unreadable")
    config = result.get("config") or {}
    model, dataset = result.get("model") or config.get("model"), result.get("dataset") or config.get("dataset")
    return _train_counts(str(model), str(dataset), split_spec(result, data_path))


def bucket_metrics(frame: pd.DataFrame, counts: pd.Series, edges: tuple[int, ...]) -> list[dict[str, Any]]:
    """Rows, items, AUC, UAUC and UAUC's users per bucket of ``frame`` (``read_predictions``' layout)."""
    items = frame.index.get_level_values("item_id")
    which = bucket_of(counts.reindex(items).fillna(0).to_numpy(dtype=np.int64), edges)
    records = []
    for k, name in enumerate(bucket_names(edges)):
        part = frame[which == k]
        with warnings.catch_warnings():  # a single-label bucket is reported as "-", not warned about
            warnings.simplefilter("ignore", RuntimeWarning)
            metrics = run_files.metrics_on(part)
        records.append({"bucket": name, "rows": len(part), "items": part.index.get_level_values("item_id").nunique(),
                        **metrics})
    return records


def _span(values: list[int]) -> str:
    """One count, or the range of several (over seeds or runs); empty for none."""
    return "" if not values else str(min(values)) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def cold_table(runs: dict[tuple[int, int], Path], rows: list[run_files.Row], seeds: list[int], edges: tuple[int, ...],
               data_path: str | None = None) -> tuple[pd.DataFrame, dict[str, tuple[str, str]]]:
    """One record per (table row, bucket): mean and std over the row's seeds of each metric where it is
    defined, the seeds it is defined in, and the bucket's test rows / items / UAUC users (one number, or the
    range over seeds); and per bucket its test rows (items) and UAUC's users over all the runs, for the markdown."""
    frames = {key: run_files.read_predictions(path) for key, path in runs.items()}
    common = run_files.common_rows(frames)
    per_run = {key: bucket_metrics(frame.loc[common[key[1]]], train_item_counts(runs[key], data_path), edges)
               for key, frame in frames.items()}
    records = []
    for i, row in enumerate(rows):
        done = [per_run[(i, s)] for s in seeds if (i, s) in per_run]
        for k, name in enumerate(bucket_names(edges)):
            cells = [d[k] for d in done]
            record = {"column": row.column, "label": row.label, "model": row.model, "bucket": name,
                      "seeds": len(cells), **{f: _span([c[f] for c in cells]) for f in ("rows", "items", "uauc_users")}}
            for metric in METRICS:
                values = np.array([c[metric] for c in cells if not math.isnan(c[metric])], dtype=float)
                record[f"{metric}_mean"] = float(values.mean()) if len(values) else math.nan
                record[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
                record[f"{metric}_seeds"] = len(values)
            records.append(record)
    sizes = {name: (f"{_span([d[k]['rows'] for d in per_run.values()])} "
                    f"({_span([d[k]['items'] for d in per_run.values()])} items)",
                    f"{_span([d[k]['uauc_users'] for d in per_run.values()])} users")
             for k, name in enumerate(bucket_names(edges))}
    return pd.DataFrame(records), sizes


def to_markdown(table: pd.DataFrame, sizes: dict[str, tuple[str, str]], caption: str, seeds: int,
                column_name: str = "") -> str:
    """Rows = table rows, two columns (AUC, UAUC) per bucket, best of each column bold and second underlined;
    the first line gives each bucket's test rows (distinct items) and the users with both labels UAUC averages.
    Rows with a column value (backbone, history length) come in blocks headed ``column_name``."""
    buckets = list(sizes)
    lead = [column_name, "Method"] if (table.column != "").any() else ["Method"]
    header = lead + [f"{b}: {m.upper()}" for b in buckets for m in METRICS]
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
             "| " + " | ".join([""] * (len(lead) - 1) + ["test rows"] + [x for b in buckets for x in sizes[b]])
             + " |"]
    for column, block in table.groupby("column", sort=False):
        wide = {b: block[block.bucket == b].reset_index(drop=True) for b in buckets}
        ranks = {(b, m): run_files.ranks(wide[b][f"{m}_mean"]) for b in buckets for m in METRICS}
        first = wide[buckets[0]]
        for j in range(len(first)):
            done = int(first.seeds[j])
            label = first.label[j] if done >= seeds else f"{first.label[j]} ({done} of {seeds} seeds)"
            cells = ([column if j == 0 else ""] if len(lead) == 2 else []) + [label]
            for b in buckets:
                for m in METRICS:
                    mean, std = wide[b][f"{m}_mean"][j], wide[b][f"{m}_std"][j]
                    cells.append("n/a" if done == 0 else "-" if math.isnan(mean) else
                                 run_files.cell(mean, std, ranks[(b, m)][j]))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_cold_table(runs: dict[tuple[int, int], Path], rows: list[run_files.Row], seeds: list[int], dataset: str,
                     kind: str, root: Path, edges: tuple[int, ...] = DEFAULT_EDGES, data_path: str | None = None,
                     n_common: str = "") -> Path:
    """Write ``table_<kind>_cold.md`` and ``.csv`` into ``root``; return the markdown's path."""
    table, sizes = cold_table(runs, rows, seeds, edges, data_path)
    caption = (f"{dataset}: test AUC / UAUC per item-frequency bucket (an item's rows in the train split of the "
               f"run's dataset, seed and split; bucket edges {','.join(map(str, edges))}), {len(seeds)} seed(s) "
               f"({', '.join(map(str, seeds))}), {n_common or 'the'} test rows per seed that every run scored. "
               "'-': undefined in the bucket (one label only, or no user with both labels).")
    table.assign(edges=",".join(map(str, edges))).to_csv(root / f"table_{kind}_cold.csv", index=False)
    path = root / f"table_{kind}_cold.md"
    column_name = {"backbone": "Backbone", "history": "n"}.get(kind, "")
    path.write_text(to_markdown(table, sizes, caption, len(seeds), column_name), encoding="utf-8")
    return path
