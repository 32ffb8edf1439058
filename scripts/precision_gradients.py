"""Float32 against bf16 autocast on the same stage-2 batches: loss, gradient norm and cosine per module.

    python scripts/precision_gradients.py --dataset=ml-100k --batches=2 --batch_size=8 --threads=1 \
        [--attention=~,math,eager]

Builds HistLLM at its defaults (stage 0 not trained: the MF inputs are at their initialisation), draws
``batches`` training batches as the trainer does, and computes each batch's loss and trainable gradients twice
from the same weights: the LLM body in float32, then under bf16 autocast (forced: emulated, and slow, on a CPU
without native bf16). Prints one line per batch and one per top-level module (``cia``, ``uhem``, ...).
``--attention``: the bf16 pass once per ``cpu_train_attention`` value (~ = torch's choice, the flash kernel on CPU),
each against the same float32 pass (which runs torch's choice).
"""

from __future__ import annotations

import argparse
import time

import torch

from recbole_histllm.bench import _build
from recbole_histllm.trainer.llm_trainer import LLMTrainer


def gradients(model, batch, bf16: bool, attention: str | None = None) -> tuple[float, dict[str, torch.Tensor], float]:
    """Loss, trainable gradients and seconds of one forward/backward, the body in float32 or bf16 autocast
    (``attention``: the ``cpu_train_attention`` of the pass)."""
    model.config["cpu_train_attention"] = attention
    torch.manual_seed(1)  # any dropout draws alike in both settings
    model.invalidate_prefix_cache()
    model.zero_grad()
    start = time.time()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model.calculate_loss(batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return loss.item(), grads, time.time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default="dataset")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="draws the training rows")
    parser.add_argument("--attention", default="~", help="cpu_train_attention per bf16 pass (~, math, eager)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config, model, train_ds = _build(args.dataset, {"show_progress": False, "data_path": args.data_path})
    model.set_stage(2)
    model.train()
    model.bf16 = False  # the context decides, as in bench --speed --precision
    rows = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(args.seed))
    batches = LLMTrainer(config, model).train_batches(train_ds, rows[: args.batches * args.batch_size],
                                                      args.batch_size, 2, 0)
    cosine = torch.nn.functional.cosine_similarity
    choices = [None if a in ("~", "none") else a for a in args.attention.split(",")]
    for i, rows_of in enumerate(batches):
        batch = train_ds[rows_of]
        loss32, g32, s32 = gradients(model, batch, False)
        names = sorted(g32)
        for choice in choices:
            loss16, g16, s16 = gradients(model, batch, True, choice)
            a, b = torch.cat([g32[n].flatten() for n in names]), torch.cat([g16[n].flatten() for n in names])
            print(f"batch {i}, attention {choice or '~'}: loss float32 {loss32:.5f} bf16 {loss16:.5f}; gradient norm "
                  f"{a.norm():.4f} / {b.norm():.4f}; cosine {cosine(a, b, dim=0).item():.4f}; seconds {s32:.1f} / "
                  f"{s16:.1f}", flush=True)
            for module in sorted({n.split(".")[0] for n in names}):
                mine = [n for n in names if n.split(".")[0] == module]
                a, b = torch.cat([g32[n].flatten() for n in mine]), torch.cat([g16[n].flatten() for n in mine])
                print(f"  {module}: cosine {cosine(a, b, dim=0).item():.4f}, norm {a.norm():.4f} / {b.norm():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
