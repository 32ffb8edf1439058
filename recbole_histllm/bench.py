"""Efficiency benchmark (the paper's Fig. 5): HistLLM against "w/o UHEM" on one backbone, one run.

    python -m recbole_histllm.bench --dataset=ml-100k [--llm_path=PATH|random:qwen2-1.5b] \
        [--history=1,5,10,20] [--rows=64] [--batch_size=8] [--device=cpu|cuda] [--output_dir=DIR]
    python -m recbole_histllm.bench --speed --dataset=ml-100k [--rows=96] [--threads=1] [--precision|--kernels] ...

``--speed``: the speed switches (``prefix_cache``, ``length_buckets``) off and then on, in one run on
the same rows of one HistLLM: stage-1 training (LoRA on the TALLRec prompt), stage-2 training (LoRA
frozen) and inference (stage 2 on test rows, the trainer's ``score_rows``) in rows/s, side by side
with their ratios and the LLM tokens per row (padding included, the cached prefix excluded); writes
``speed.csv``. ``--speed --precision`` compares float32 with bf16 autocast instead (both with the switches on;
bf16 is forced even where :func:`recbole_histllm.llm.bf16_supported` says it does not pay off, to measure that).
``--speed --kernels`` compares torch's attention kernel with every LoRA adapter run against both speed-ups (CPU
training steps on the math kernel, ``cpu_train_attention=math``; LoRA adapters that add zero bypassed), switches on.
The history sweep below is the default mode.

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


def _device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's thread count and torch's capability (AVX2, AVX512: whether bf16 is native)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU x{torch.get_num_threads()} {torch.backends.cpu.get_cpu_capability()}"


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


SPEED_SWITCHES = ("prefix_cache", "length_buckets")


def _llm_tokens(model, dataset, batches: list[torch.Tensor], prefix_runs: int) -> float:
    """LLM input tokens per row over ``batches`` (each padded to its longest row) in the current stage;
    with the prefix cache on, the shared prefix counts once per ``prefix_runs`` instead of once per row."""
    total, rows = 0, 0
    shared = len(model.builders[model.stage].prefix_ids) if prefix_runs >= 0 else 0
    for b in batches:
        lengths = model.prompt_lengths(dataset[b])
        total += (int(lengths.max()) - shared) * len(b)
        rows += len(b)
    return (total + shared * max(prefix_runs, 0)) / max(rows, 1)


COMPARISONS = {"switches": ("off", "on"), "precision": ("fp32", "bf16"), "kernels": ("torch", "fast")}


def speed(config, model, train_ds, test_ds, rows: int, batch_size: int, device: torch.device, seed: int = 0,
          compare: str = "switches") -> list:
    """rows/s of stage-1 training, stage-2 training and inference in the two settings of ``compare``
    (:data:`COMPARISONS`): ``switches``, the speed switches off, then on; ``precision``, the switches on and the
    LLM in float32, then under (forced) bf16 autocast; ``kernels``, the switches on and torch's attention kernel
    with every LoRA adapter run (``cpu_train_attention`` ~, ``bypass_zero_lora`` off), then both speed-ups
    (:meth:`~recbole_histllm.model.llm_recommender.LLMRecommender.backbone_speedups`: ``cpu_train_attention=math``,
    zero LoRA bypassed)."""
    from recbole_histllm.llm import load_partial_state_dict, lora_state_dict
    from recbole_histllm.trainer.llm_trainer import LLMTrainer

    gen = torch.Generator().manual_seed(seed)
    train_rows = torch.randperm(len(train_ds), generator=gen)[:rows]
    test_rows = np.sort(torch.randperm(len(test_ds), generator=gen)[:rows].numpy())
    trainer = LLMTrainer(config, model)
    eval_size = int(config["eval_batch_size"])
    records = []

    untrained = lora_state_dict(model.llm)  # each phase starts from the model as built (stage 2 after no stage 1)

    def train_phase(stage: int, on: bool) -> dict:
        load_partial_state_dict(model.llm, untrained)
        model.invalidate_prefix_cache()
        model.set_stage(stage)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        batches = trainer.train_batches(train_ds, train_rows, batch_size, stage, 0)
        model.train()

        def step(b):
            model.calculate_loss(train_ds[b].to(device)).backward()
            optimizer.step()
            optimizer.zero_grad()

        step(batches[0][: max(1, batch_size // 2)])  # warm-up (allocator, kernels)
        model.invalidate_prefix_cache()
        _sync(device)
        start = time.perf_counter()
        for b in batches:
            step(b)
        _sync(device)
        seconds = time.perf_counter() - start
        frozen = not any("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
        runs = (1 if frozen else len(batches)) if on else -1
        return {"rows_per_s": len(train_rows) / seconds, "tokens_per_row": _llm_tokens(model, train_ds, batches, runs)}

    def infer_phase(on: bool) -> dict:
        load_partial_state_dict(model.llm, untrained)
        model.set_stage(2)
        trainer.score_rows(test_ds, test_rows[:2])  # warm-up
        model.invalidate_prefix_cache()
        _sync(device)
        start = time.perf_counter()
        trainer.score_rows(test_ds, test_rows)
        _sync(device)
        seconds = time.perf_counter() - start
        order = test_rows
        if on:  # score_rows' order: longest first
            order = test_rows[np.argsort(-model.row_lengths(test_ds, test_rows), kind="stable")]
        batches = [torch.as_tensor(order[i : i + eval_size]) for i in range(0, len(order), eval_size)]
        return {"rows_per_s": len(test_rows) / seconds, "tokens_per_row": _llm_tokens(model, test_ds, batches,
                                                                                        1 if on else -1)}

    phases = (("stage-1 training", lambda on: train_phase(1, on)), ("stage-2 training", lambda on: train_phase(2, on)),
              ("inference (test)", infer_phase))
    for phase, run in phases:
        if phase.startswith("stage-1") and 1 not in model.training_stages():
            continue
        for on in (False, True):
            for key in SPEED_SWITCHES:
                config[key] = on or compare != "switches"
            if compare == "kernels":
                config["cpu_train_attention"] = "math" if on else None
                model.bypass_zero_lora = on
                result = run(True)
            elif compare == "precision":  # own autocast off: the context decides (bf16 even where not native)
                model.bf16 = False
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on):
                    result = run(True)
            else:
                result = run(on)
            setting = COMPARISONS[compare][on]
            records.append({"phase": phase, "setting": setting, **result})
    return records


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
    parser.add_argument("--dtype", default="float32",
                        help="weights dtype (bf16 autocast where the device runs it natively, either way)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output_dir", "--out", dest="out", default="saved/bench",
                        help="where the CSV and plots go (--out: the former name)")
    parser.add_argument("--speed", action="store_true",
                        help="the speed switches (prefix_cache, length_buckets) off vs on, same rows, one run")
    parser.add_argument("--precision", action="store_true",
                        help="with --speed: float32 vs bf16 autocast (switches on), same rows, one run")
    parser.add_argument("--kernels", action="store_true",
                        help="with --speed: torch's attention kernel and every LoRA adapter run vs "
                             "cpu_train_attention=math and zero LoRA bypassed, switches on, same rows, one run")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if args.speed:
        return main_speed(args, device, out)
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
    name = _device_name(device)
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


def main_speed(args, device: torch.device, out: Path) -> int:
    """``--speed``: one HistLLM (the dataset's defaults), its switches off then on, printed side by side."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_histllm.config import Config
    from recbole_histllm.model.histllm import HistLLM
    from recbole_histllm.quick_start import ensure_dataset

    overrides = {"data_path": args.data_path, "llm_path": args.llm_path, "llm_dtype": args.dtype,
                 "use_gpu": device.type == "cuda", "show_progress": False, "state": "WARNING",
                 "checkpoint_dir": str(out / "checkpoints")}
    config = Config(model="HistLLM", dataset=args.dataset, config_dict=overrides)
    init_seed(config["seed"], config["reproducibility"])
    ensure_dataset(config)
    train, _, test = data_preparation(config, create_dataset(config))
    model = HistLLM(config, train._dataset).to(config["device"])
    compare = "precision" if args.precision else "kernels" if args.kernels else "switches"
    records = speed(config, model, train._dataset, test._dataset, args.rows, args.batch_size, device,
                    compare=compare)
    name = _device_name(device)
    llm = args.llm_path or "SmolLM2-135M-Instruct"
    with open(out / "speed.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["device", "llm", "dataset", "rows", "batch_size", *records[0]])
        writer.writeheader()
        for r in records:
            writer.writerow({"device": name, "llm": llm, "dataset": args.dataset, "rows": args.rows,
                             "batch_size": args.batch_size, **r})
    a, b = COMPARISONS[compare]
    switches = " + ".join(SPEED_SWITCHES)
    compared = {"precision": f"float32 -> bf16 autocast, switches {switches} on",
                "kernels": f"{model.precision}, switches {switches} on; torch's attention kernel and every LoRA adapter"
                           " -> cpu_train_attention=math and zero LoRA bypassed",
                "switches": f"{model.precision}; switches {switches} off -> on"}[compare]
    print(f"\n{llm} on {name}, {args.dataset},"
          f" HistLLM history_len {config['history_len']}, training batch {args.batch_size}, eval batch"
          f" {config['eval_batch_size']}, {args.rows} rows; {compared}")
    print(f"{'phase':<17} | {'rows/s ' + a:>11} | {'rows/s ' + b:>11} | {b + '/' + a:>9} |"
          f" {'LLM tokens/row ' + a + ' -> ' + b:>28}")
    for phase in dict.fromkeys(r["phase"] for r in records):
        x, y = (next(r for r in records if r["phase"] == phase and r["setting"] == s) for s in (a, b))
        print(f"{phase:<17} | {x['rows_per_s']:11.2f} | {y['rows_per_s']:11.2f} |"
              f" {y['rows_per_s'] / x['rows_per_s']:8.2f}x |"
              f" {x['tokens_per_row']:14.1f} -> {y['tokens_per_row']:9.1f}")
    print(f"written: {out / 'speed.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
