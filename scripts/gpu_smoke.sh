#!/usr/bin/env bash
# GPU smoke test and throughput benchmark for a CUDA machine.
#
#   bash scripts/gpu_smoke.sh [LLM] [OUT]
#
# LLM: a local Hugging Face backbone folder, or random:<shape> (random weights of a real shape:
# qwen2-1.5b, qwen2.5-7b, vicuna-7b; speed does not depend on the weights). Default random:qwen2-1.5b.
# Runs HistLLM through the whole pipeline on ml-100k (stage 0 MF, a few stage-1 LoRA and stage-2
# steps, the full test split), then the HistLLM vs w/o UHEM benchmark (samples/s, tokens, peak memory).
set -euo pipefail
LLM=${1:-random:qwen2-1.5b}
OUT=${2:-saved/gpu_smoke}
mkdir -p "$OUT"
python3 - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, bf16 {torch.cuda.is_bf16_supported()}")
PY
python3 run_recbole_histllm.py --model=HistLLM --dataset=ml-100k --llm_path="$LLM" --llm_dtype=bfloat16 \
    --stage1_train_rows=512 --stage2_train_rows=512 --stage1_batch_size=16 --stage2_batch_size=16 \
    --valid_rows=512 --eval_batch_size=64 --mf_epochs=20 --show_progress=False --output_dir="$OUT/run"
python3 - "$OUT/run/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("test", r["test_result"], "wall", {k: round(v, 1) for k, v in r["wall_time_s"].items()})
for k, s in r["stages"].items():
    print(k, {key: s.get(key) for key in ("time_s", "samples_per_s", "best_valid_auc", "rows_trained")})
PY
python3 -m recbole_histllm.bench --dataset=ml-100k --llm_path="$LLM" --dtype=bfloat16 --device=cuda \
    --history=1,5,10,20 --rows=256 --batch_size=16 --train_steps=8 --out="$OUT/bench"
