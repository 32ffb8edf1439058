"""Efficiency benchmark (the paper's Fig. 5): HistLLM against "w/o UHEM" on one backbone, one run.

    python -m recbole_histllm.bench --dataset=ml-100k [--llm_path=PATH|random:qwen2-1.5b] \
        [--history=1,5,10,20] [--rows=64] [--batch_size=8] [--device=cpu|cuda] [--out=DIR]

For every history length n and both variants it measures, on the same rows: LLM input tokens
per sample, stage-2 training samples/s (LoRA frozen, UHEM + mapping modules trained), inference
samples/s and peak GPU memory; it prints the ratios side by side and writes ``bench.csv`` and
``bench.png``. Random weights of a real backbone's shape (``random:qwen2-1.5b``) give the same
speed as the real weights.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = {"HistLLM": {"history_encoder": "gru"}, "w/o UHEM": {"history_encoder": "none"}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(dataset: str, overrides: dict):
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_histllm.config import Config
    from recbole_histllm.model.histllm import HistLLM
    from recbole_histllm.quick_start import ensure_dataset

    config = Config(model="HistLLM", dataset=dataset, config_dict=overrides)
    init_seed(config["seed"], config["reproducibility"])
    ensure_dataset(config)
    train, _, _ = data_preparation(config, create_dataset(config))
    model = HistLLM(config, train._dataset).to(config["device"])
    return config, model, train._dataset


def measure(model, dataset, rows: torch.Tensor, batch_size: int, device: torch.device, steps: int) -> dict:
    """Tokens/sample, stage-2 training and inference samples/s, peak memory for one model."""
    model.set_stage(2)
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    tokens = np.concatenate([model.prompt_lengths(dataset[b]) for b in batches])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def train_pass(items):
        model.train()
        for b in items:
            loss = model.calculate_loss(dataset[b].to(device))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    @torch.no_grad()
    def infer_pass(items):
        model.eval()
        for b in items:
            model.predict(dataset[b].to(device))

    train_pass(batches[:1])  # warm-up (allocator, kernels)
    infer_pass(batches[:1])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    train_pass(batches[:steps])
    _sync(device)
    train_s = time.perf_counter() - start
    train_peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    infer_pass(batches)
    _sync(device)
    infer_s = time.perf_counter() - start
    infer_peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    trained = sum(len(b) for b in batches[:steps])
    return {
        "tokens_per_sample": float(tokens.mean()),
        "train_samples_per_s": trained / train_s,
        "infer_samples_per_s": len(rows) / infer_s,
        "train_peak_gib": train_peak,
        "infer_peak_gib": infer_peak,
    }


def plot(records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("tokens_per_sample", "LLM input tokens per sample"),
              ("train_samples_per_s", "stage-2 training (samples/s)"),
              ("infer_samples_per_s", "inference (samples/s)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, label) in zip(axes, panels):
        for variant, marker in zip(VARIANTS, "os"):
            pts = [(r["history"], r[key]) for r in records if r["variant"] == variant]
            ax.plot(*zip(*pts), marker=marker, label=variant)
        ax.set_xlabel("history length n (items)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default="dataset/")
    parser.add_argument("--llm_path", default=None)
    parser.add_argument("--history", default="1,5,10,20")
    parser.add_argument("--rows", type=int, default=64, help="rows scored per point (inference)")
    parser.add_argument("--train_steps", type=int, default=4, help="stage-2 training steps per point")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", help="weights dtype (bf16 autocast is on either way)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="saved/bench")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    histories = [int(n) for n in args.history.split(",")]
    base = {"data_path": args.data_path, "llm_path": args.llm_path, "llm_dtype": args.dtype,
            "use_gpu": device.type == "cuda", "show_progress": False, "state": "WARNING",
            "max_prompt_tokens": 4096}
    records = []
    for n in histories:
        for variant, switch in VARIANTS.items():
            config, model, dataset = _build(args.dataset, {**base, **switch, "history_len": n})
            lengths = (dataset.inter_feat[config["HISTORY_FIELD"]] > 0).sum(1)
            pool = torch.nonzero(lengths >= n).flatten()  # rows that have n history items
            rows = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[: args.rows]]
            result = measure(model, dataset, rows, args.batch_size, device, args.train_steps)
            records.append({"history": n, "variant": variant, **result})
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()}"
    llm = args.llm_path or "SmolLM2-135M-Instruct"
    with open(out / "bench.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["device", "llm", *records[0]])
        writer.writeheader()
        for r in records:
            writer.writerow({"device": name, "llm": llm, **r})
    plot(records, out / "bench.png", f"HistLLM vs w/o UHEM — {llm} on {name}, {args.dataset}")
    print(f"\n{llm} on {name}, {args.dataset}, batch {args.batch_size}")
    print(f"{'n':>3} | {'tokens UHEM/none':>18} | {'train s/s UHEM/none':>22} | {'infer s/s UHEM/none':>22} |"
          f" {'peak GiB UHEM/none':>18}")
    for n in histories:
        h, w = (next(r for r in records if r["history"] == n and r["variant"] == v) for v in VARIANTS)
        print(f"{n:>3} | {h['tokens_per_sample']:6.1f}/{w['tokens_per_sample']:6.1f} ="
              f" {h['tokens_per_sample'] / w['tokens_per_sample']:4.2f}x |"
              f" {h['train_samples_per_s']:6.1f}/{w['train_samples_per_s']:6.1f} ="
              f" {h['train_samples_per_s'] / w['train_samples_per_s']:5.2f}x |"
              f" {h['infer_samples_per_s']:6.1f}/{w['infer_samples_per_s']:6.1f} ="
              f" {h['infer_samples_per_s'] / w['infer_samples_per_s']:5.2f}x |"
              f" {h['train_peak_gib']:6.2f}/{w['train_peak_gib']:6.2f}")
    print(f"written: {out / 'bench.csv'}, {out / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
