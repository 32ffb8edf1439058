#!/usr/bin/env bash
# GPU smoke test and throughput benchmark for a CUDA machine.
#
#   bash scripts/gpu_smoke.sh [LLM] [OUT] [--any_run_key=value ...]
#   NPROC=2 bash scripts/gpu_smoke.sh /models/Qwen2.5-7B saved/smoke7b --gradient_checkpointing=True
#
# LLM: a local Hugging Face backbone folder, or random:<shape> (random weights of a real shape:
# qwen2-1.5b, qwen2.5-7b, vicuna-7b; speed does not depend on the weights). Default random:qwen2-1.5b.
# Runs HistLLM through the whole pipeline on ml-100k (stage 0 MF, a few stage-1 LoRA and stage-2
# steps, the full test split) and prints samples/s and peak GPU memory per stage, then the HistLLM vs
# w/o UHEM benchmark (tokens, stage-2 training and inference samples/s, peak memory).
# NPROC=N (default 1) runs the pipeline under torchrun on N GPUs. Extra --key=value arguments (keys the
# script does not set itself) go to the pipeline run, e.g. --load_in_4bit=True --gradient_accumulation_steps=4.
set -euo pipefail
LLM=${1:-random:qwen2-1.5b}
OUT=${2:-saved/gpu_smoke}
shift $(($# < 2 ? $# : 2))
NPROC=${NPROC:-1}
mkdir -p "$OUT"
python3 - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name} (x{torch.cuda.device_count()}), {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
PY
if [ "$NPROC" -gt 1 ]; then
    LAUNCH=(python3 -m torch.distributed.run --standalone --nproc_per_node="$NPROC")
else
    LAUNCH=(python3)
fi
"${LAUNCH[@]}" run_recbole_histllm.py --model=HistLLM --dataset=ml-100k --llm_path="$LLM" --llm_dtype=bfloat16 \
    --stage1_train_rows=512 --stage2_train_rows=512 --stage1_batch_size=16 --stage2_batch_size=16 \
    --valid_rows=512 --eval_batch_size=64 --mf_epochs=20 --show_progress=False --output_dir="$OUT/run" "$@"
python3 - "$OUT/run/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("test", r["test_result"], f"({r['test_rows']} rows)", "wall", {k: round(v, 1) for k, v in r["wall_time_s"].items()})
for k, s in r["stages"].items():
    print(k, {key: s.get(key) for key in ("time_s", "samples_per_s", "peak_gpu_gib", "world_size", "best_valid_auc",
                                         "rows_trained") if key in s})
PY
python3 -m recbole_histllm.bench --dataset=ml-100k --llm_path="$LLM" --dtype=bfloat16 --device=cuda \
    --history=1,5,10,20 --rows=256 --batch_size=16 --train_steps=8 --out="$OUT/bench"
