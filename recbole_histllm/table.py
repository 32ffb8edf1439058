r"""The paper's tables and its history-length figure as commands (Table 2, 3, 4; Fig. 2 and 4).

    python -m recbole_histllm.table --dataset=movie --seeds=3 \
        [--table=main|ablation|backbone|history] [--models=MF,VBPR,...,HistLLM(Transformer)] \
        [--llm_paths=A,B] [--history=1,3,5,10,20] [--out=saved/tables] [--runs=DIR,...] \
        [--dry_run] [--reuse_only] [--any_config_key=value ...]

Every row is a model with config overrides, written ``Label=Model:key=value;key=value``, a bare
model name, or one of :data:`PRESETS` (``HistLLM(GRU)``, ``w/o UHEM``, ...). Each row and seed is
one CLI run (``python -m recbole_histllm.quick_start``, the CLI of ``run_recbole_histllm.py``)
in ``<out>/<dataset>/<label>-<hash>/seed<k>``; a finished
run (its ``result.json``) is reused, from there or from any folder under ``--runs`` whose recorded
config equals the run's config, so a table builds incrementally and survives a kill (the LLM
stages resume from their checkpoints). Keys given on the command line are passed to every run.
``--dry_run`` lists what would run; ``--reuse_only`` builds the table from the finished runs alone
(a row or seed without one is reported, not run; rows with fewer seeds than asked are marked).

Metrics are recomputed from each run's ``test_predictions.csv`` (sklearn AUC; UAUC as the
evaluator) on the rows that every run of the table scored, so runs tested on a ``test_rows`` subset
and runs tested on the whole split compare on the same rows. Outputs: ``table_<kind>.md`` (paper
layout: mean ± std over seeds, best bold, second underlined, HistLLM's relative improvement
averaged over AUC and UAUC as the paper's "Rel. Imp.") and ``table_<kind>.csv``; the history table
also writes ``history.png`` (test AUC against n).
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from recbole_histllm.evaluator import user_auc
from recbole_histllm.utils import UsageError

#: Named rows: label -> (model, overrides). HistLLM(Transformer) is the paper's reference row.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "HistLLM(GRU)": ("HistLLM", {"history_encoder": "gru"}),
    "HistLLM(Transformer)": ("HistLLM", {"history_encoder": "transformer"}),
    "w/o UHEM": ("HistLLM", {"history_encoder": "none"}),
    "w/o KE": ("HistLLM", {"use_knowledge": False}),
    "w/o VMA": ("HistLLM", {"use_visual": False}),
    "w/o CIA": ("HistLLM", {"use_collaborative": False}),
    "TALLRec_desc": ("TALLRec", {"tallrec_desc": True}),
}
#: Table 2's groups, by model name (the paper's labels; ZeroShot stands where Rec-GPT4V is).
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("Trad. Multi. Rec.", ("MF", "VBPR", "BM3", "MG", "LGMRec")),
    ("LLM Rec. w/o Vis. Feat.", ("TALLRec", "CoLLM", "BinLLM")),
    ("LLM Rec. w/ Vis. Feat.", ("ZeroShot", "TALLRec-image", "CoLLM-image", "BinLLM-image")),
    ("Our Method", ("HistLLM",)),
]
DEFAULT_ROWS = {
    "main": "MF,VBPR,BM3,MG,LGMRec,TALLRec,CoLLM,BinLLM,ZeroShot,TALLRec-image,CoLLM-image,BinLLM-image,"
    "HistLLM(GRU),HistLLM(Transformer)",
    "ablation": "HistLLM=HistLLM,w/o UHEM,w/o KE,w/o VMA",
    "backbone": "TALLRec-image,CoLLM-image,BinLLM-image,HistLLM",
    "history": "TALLRec,TALLRec_desc,TALLRec-image,HistLLM",
}
#: Config keys that do not change what a run computes (reuse ignores them).
VOLATILE_KEYS = {"checkpoint_dir", "show_progress", "test_rows", "eval_batch_size", "data_path", "gpu_id",
                 "use_gpu", "device", "local_rank", "single_spec", "nproc", "world_size", "offset", "ip", "port",
                 "state", "log_wandb", "wandb_project", "worker"}


@dataclass
class Row:
    """One table row: a label, a model and its overrides (plus a column value for backbone/history)."""

    label: str
    model: str
    overrides: dict[str, Any] = field(default_factory=dict)
    column: str = ""

    def run_dir(self, root: Path, extra: dict[str, Any]) -> Path:
        spec = json.dumps([self.model, self.overrides, extra], sort_keys=True, default=str)
        slug = "".join(c if c.isalnum() or c in "-_()" else "_" for c in self.label)
        return root / f"{slug}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"


def _value(text: str) -> Any:
    """A command-line value as YAML would read it (True, 3, 0.1, ~ -> None, else the string)."""
    import yaml

    if text.strip() in ("~", "None", "null", ""):
        return None
    return yaml.safe_load(text)


def parse_rows(spec: str) -> list[Row]:
    """``Label=Model:key=value;key=value,...`` (label and overrides optional; presets by label)."""
    rows = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        label, body = item.split("=", 1) if "=" in item.split(":", 1)[0] else ("", item)
        if not label and body in PRESETS:
            model, overrides = PRESETS[body]
            rows.append(Row(body, model, dict(overrides)))
            continue
        model, _, options = body.partition(":")
        overrides = {}
        for pair in filter(None, options.split(";")):
            if "=" not in pair:
                raise UsageError(f"row '{item}': override '{pair}' is not key=value")
            key, value = pair.split("=", 1)
            overrides[key.strip()] = _value(value)
        if model in PRESETS:
            label = label or model
            base_model, base = PRESETS[model]
            model, overrides = base_model, {**base, **overrides}
        rows.append(Row(label or body, model, overrides))
    if not rows:
        raise UsageError("no rows: --models is empty")
    return rows


def group_of(model: str) -> str:
    return next((name for name, models in GROUPS if model in models), "Other")


# ---- runs -----------------------------------------------------------------------------------------
def expected_config(row: Row, dataset: str, seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    """The (JSON-normalised) config a fresh CLI run of this row would record, volatile keys removed."""
    from recbole_histllm.config import Config
    from recbole_histllm.quick_start import _jsonable

    config = Config(model=row.model, dataset=dataset, config_dict={**extra, **row.overrides, "seed": seed})
    return {k: v for k, v in _jsonable(config.final_config_dict).items() if k not in VOLATILE_KEYS}


def _matches(result_file: Path, expected: dict[str, Any], test_rows: Any) -> bool:
    try:
        result = json.loads(result_file.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    recorded = result.get("config", {})
    # a key the run does not record came later than the run: it matches when asked for its "off" value
    if any(recorded[k] != v if k in recorded else v not in (None, False) for k, v in expected.items()):
        return False
    done = recorded.get("test_rows")
    # a whole-split run serves any subset; subsets are nested (one seeded user order), so does a larger one
    return done is None or (test_rows is not None and int(done) >= int(test_rows))


def find_run(row: Row, dataset: str, seed: int, extra: dict[str, Any], own: Path, search: list[Path]) -> Path | None:
    """A finished run of this row: in its own folder, else any ``result.json`` under ``search``."""
    expected = expected_config(row, dataset, seed, extra)
    candidates = [own / "result.json"] + [p for root in search for p in sorted(root.rglob("result.json"))]
    return next((p.parent for p in candidates if p.is_file() and _matches(p, expected, extra.get("test_rows"))),
                None)


def launch(row: Row, dataset: str, seed: int, extra: dict[str, Any], out: Path) -> None:
    """One CLI run in ``out`` (resumes its stages after a kill); its log goes to ``out/run.log``."""
    out.mkdir(parents=True, exist_ok=True)
    args = {**extra, **row.overrides, "seed": seed, "show_progress": False}
    cmd = [sys.executable, "-m", "recbole_histllm.quick_start", f"--model={row.model}", f"--dataset={dataset}",
           f"--output_dir={out}"]
    cmd += [f"--{k}={'~' if v is None else v}" for k, v in args.items()]
    print(f"  running: {' '.join(cmd[1:])}", flush=True)
    with open(out / "run.log", "a", encoding="utf-8") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"run failed (exit {code}): see {out / 'run.log'}")


# ---- metrics --------------------------------------------------------------------------------------
def read_predictions(run: Path) -> pd.DataFrame:
    frame = pd.read_csv(run / "test_predictions.csv", dtype={"user_id": str, "item_id": str})
    return frame.set_index(["user_id", "item_id"])


def metrics_on(frame: pd.DataFrame) -> dict[str, float]:
    labels = frame["label"].to_numpy() > 0.5
    auc = float(roc_auc_score(labels, frame["score"])) if 0 < labels.sum() < len(labels) else math.nan
    users = frame.index.get_level_values("user_id").to_numpy()
    return {"auc": auc, "uauc": user_auc(users, frame["score"].to_numpy(), labels)[0]}


def score_runs(runs: dict[tuple[int, int], Path]) -> tuple[dict[tuple[int, int], dict[str, float]], int, set[int]]:
    """Metrics of every (row index, seed) run on the rows that every run scored; the row count and the
    sizes of the runs' own test sets (one size: all runs scored the same rows)."""
    frames = {key: read_predictions(path) for key, path in runs.items()}
    common = None
    for frame in frames.values():
        common = frame.index if common is None else common.intersection(frame.index)
    sizes = {len(f) for f in frames.values()}
    return {key: metrics_on(f.loc[common]) for key, f in frames.items()}, len(common), sizes


# ---- rendering ------------------------------------------------------------------------------------
def summarise(rows: list[Row], seeds: list[int], scores: dict[tuple[int, int], dict[str, float]]) -> pd.DataFrame:
    records = []
    for i, row in enumerate(rows):
        per_seed = [scores[(i, s)] for s in seeds if (i, s) in scores]
        record = {"group": group_of(row.model), "column": row.column, "label": row.label, "model": row.model,
                  "overrides": json.dumps(row.overrides, sort_keys=True), "seeds": len(per_seed)}
        for metric in ("auc", "uauc"):
            values = np.array([s[metric] for s in per_seed], dtype=float)
            record[f"{metric}_mean"] = float(values.mean()) if len(values) else math.nan
            record[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        records.append(record)
    return pd.DataFrame(records)


def add_relative_improvement(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The paper's Rel. Imp.: the reference row over each row, averaged over AUC and UAUC."""
    ref = table[table.label == reference]
    if ref.empty:
        table["rel_imp"] = math.nan
        return table
    ra, ru = ref.iloc[0]["auc_mean"], ref.iloc[0]["uauc_mean"]
    table["rel_imp"] = [((ra / a - 1) + (ru / u - 1)) / 2 if g != "Our Method" else math.nan
                        for a, u, g in zip(table.auc_mean, table.uauc_mean, table.group)]
    return table


def _cell(mean: float, std: float, rank: int) -> str:
    text = "n/a" if math.isnan(mean) else f"{mean:.4f}" + ("" if math.isnan(std) else f" ± {std:.4f}")
    return f"**{text}**" if rank == 0 else f"<u>{text}</u>" if rank == 1 else text


def _ranks(values: pd.Series) -> list[int]:
    order = sorted({v for v in values if not math.isnan(v)}, reverse=True)
    return [order.index(v) if not math.isnan(v) else -1 for v in values]


def to_markdown(table: pd.DataFrame, kind: str, caption: str, seeds: int = 1) -> str:
    """The table in the paper's layout; a row with fewer than ``seeds`` runs says how many it has."""
    with_groups = kind == "main"
    lead = ["Group", "Method"] if with_groups else (["Backbone", "Method"] if kind == "backbone" else
                                                     ["n", "Method"] if kind == "history" else ["Method"])
    header = lead + ["AUC", "UAUC"] + (["Rel. Imp."] if with_groups else [])
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    blocks = [table] if kind in ("main", "ablation") else [g for _, g in table.groupby("column", sort=False)]
    for block in blocks:
        auc_rank, uauc_rank = _ranks(block.auc_mean), _ranks(block.uauc_mean)
        previous = None
        for j, (_, r) in enumerate(block.iterrows()):
            cells = []
            if with_groups:
                cells.append(r.group if r.group != previous else "")
                previous = r.group
            elif kind in ("backbone", "history"):
                cells.append(r.column if j == 0 else "")
            done = int(r.get("seeds", seeds))
            label = r.label if done >= seeds else f"{r.label} ({done} of {seeds} seeds)"
            cells += [label, _cell(r.auc_mean, r.auc_std, auc_rank[j]), _cell(r.uauc_mean, r.uauc_std, uauc_rank[j])]
            if with_groups:
                cells.append("-" if math.isnan(r.rel_imp) else f"{100 * r.rel_imp:.1f}%")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_history(table: pd.DataFrame, path: Path, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, block in table.groupby("label", sort=False):
        block = block[block.auc_mean.notna()]  # lengths without a finished run (--reuse_only) are skipped
        n = block.column.astype(int)
        ax.errorbar(n, block.auc_mean, yerr=block.auc_std.fillna(0), marker="o", capsize=3, label=label)
    ax.set_xticks(sorted({int(c) for c in table.column}))
    ax.set_xlabel("history length n (items in the prompt / encoded by UHEM)")
    ax.set_ylabel("test AUC")
    ax.set_title(f"Test AUC against history length ({dataset})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- command line ---------------------------------------------------------------------------------
def expand(kind: str, rows: list[Row], llm_paths: list[str], history: list[int]) -> list[Row]:
    """Backbone and history tables: every row once per backbone / history length."""
    if kind == "backbone":
        if not llm_paths:
            raise UsageError("--table=backbone needs --llm_paths=PATH,PATH")
        return [Row(r.label, r.model, {**r.overrides, "llm_path": p}, Path(p).name or p)
                for p in llm_paths for r in rows]
    if kind == "history":
        return [Row(r.label, r.model, {**r.overrides, "history_len": n}, str(n)) for n in history for r in rows]
    return rows


def build(dataset: str, kind: str, rows: list[Row], seeds: list[int], extra: dict[str, Any], out: Path,
          search: list[Path], dry_run: bool = False, reuse_only: bool = False) -> pd.DataFrame | None:
    """Find or run every (row, seed), score them on their common rows, write the table files.

    With ``reuse_only`` the missing (row, seed) runs are skipped: the table holds what has finished.
    """
    root = out / dataset
    runs: dict[tuple[int, int], Path] = {}
    missing = []
    for i, row in enumerate(rows):
        for seed in seeds:
            own = row.run_dir(root, extra) / f"seed{seed}"
            found = find_run(row, dataset, seed, extra, own, search)
            print(f"[{row.column + ' ' if row.column else ''}{row.label} seed {seed}] "
                  f"{'reused ' + str(found) if found else 'to run in ' + str(own)}", flush=True)
            if found:
                runs[(i, seed)] = found
            else:
                missing.append((i, seed, own))
    if dry_run:
        return None
    if reuse_only:
        if missing:
            print(f"--reuse_only: {len(missing)} of {len(rows) * len(seeds)} runs missing, left out", flush=True)
        if not runs:
            raise UsageError("--reuse_only: none of the table's runs has finished (see the list above)")
    else:
        for i, seed, own in missing:
            launch(rows[i], dataset, seed, extra, own)
            runs[(i, seed)] = own
    scores, n_common, sizes = score_runs(runs)
    table = summarise(rows, seeds, scores)
    if kind == "main":
        ours = table[table.group == "Our Method"].label
        # the paper's reference row, else the last HistLLM row; a table without HistLLM has no Rel. Imp.
        reference = "HistLLM(Transformer)" if "HistLLM(Transformer)" in set(ours) else \
            (ours.iloc[-1] if len(ours) else "")
        table = add_relative_improvement(table, reference)
    note = ("all runs scored the same rows" if len(sizes) == 1 else
            f"runs scored {sorted(sizes)} rows; metrics on the {n_common} rows all of them scored")
    caption = (f"{dataset}: test AUC / UAUC over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}), "
               f"{n_common} test rows ({note}).")
    root.mkdir(parents=True, exist_ok=True)
    table.assign(test_rows=n_common).to_csv(root / f"table_{kind}.csv", index=False)
    (root / f"table_{kind}.md").write_text(to_markdown(table, kind, caption, len(seeds)), encoding="utf-8")
    if kind == "history":
        plot_history(table, root / "history.png", dataset)
    return table


def main(argv: list[str] | None = None) -> int:
    from recbole_histllm.quick_start import parse_args

    try:
        argv = sys.argv[1:] if argv is None else argv
        if any(a in ("-h", "--help") for a in argv):
            print(__doc__)
            return 0
        argv = [a if "=" in a or a == "--debug" else f"{a}=True" for a in argv]  # bare --dry_run
        args = parse_args(["--model=table", *argv])
        args.pop("model")
        dataset = args.pop("dataset")
        kind = args.pop("table", "main")
        if kind not in DEFAULT_ROWS:
            raise UsageError(f"--table={kind}: expected one of {', '.join(DEFAULT_ROWS)}")
        rows = parse_rows(args.pop("models", DEFAULT_ROWS[kind]))
        seeds = list(range(2020, 2020 + int(args.pop("seeds", "1"))))
        llm_paths = [p for p in args.pop("llm_paths", "").split(",") if p]
        history = [int(n) for n in args.pop("history", "1,3,5,10,20").split(",") if n]
        out = Path(args.pop("out", "saved/tables"))
        search = [Path(p) for p in args.pop("runs", "").split(",") if p]
        dry_run = args.pop("dry_run", "False").lower() in ("true", "1")
        reuse_only = args.pop("reuse_only", "False").lower() in ("true", "1")
        args.pop("debug", None)
        extra = {k: _value(v) for k, v in args.items()}
        table = build(dataset, kind, expand(kind, rows, llm_paths, history), seeds, extra, out, search, dry_run,
                      reuse_only)
    except (UsageError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if table is not None:
        print((out / dataset / f"table_{kind}.md").read_text(encoding="utf-8"))
        print(f"written: {out / dataset / f'table_{kind}.md'} and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
