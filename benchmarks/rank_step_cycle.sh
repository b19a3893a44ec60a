#!/usr/bin/env bash
# Issue 18 on one GPU, in one device call: the 8B random checkpoint, then (in priority order, each step only
# if the time left allows it) hf-tp bench --simulate-tp 2,4,8 with --profile, the 4096- and 8000-token
# prompts, the loop's GPU test, batch 8/32. Logs and JSON rows go to $OUT.
# Usage (device): cd <checkout> && OUT=... BUDGET=540 bash benchmarks/rank_step_cycle.sh
set -u
OUT=${OUT:-/tmp/rank_step_out}; CK=${CK:-/tmp/ck}; MODEL=$CK/llama3-8b-bfloat16
. "$(dirname "$0")/steps.sh"
# Commands as words, not shell functions: `timeout` runs programs only.
BENCH="python -m hf_tp.cli bench --model $MODEL --systems hf_tp --modes compile --timeout 240"
ROW="python -m hf_tp.bench.run_system --system hf_tp --mode compile --model $MODEL --tp-size 1"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python -c "import torch, transformers; print(torch.__version__, transformers.__version__)" >> "$OUT/gpu.txt" 2>&1
step ckpt 120 python -c "from hf_tp.bench.shapes import write_random_checkpoint as w; print(w('llama3-8b', '$MODEL'))"
du -sb "$MODEL" >> "$OUT/log.txt" 2>&1
step base 200 $BENCH --simulate-tp 2,4,8 --batches 1 --profile --json "$OUT/base.json"
step long_base 60 $ROW --batches 1 --prompt-len 4096 --out "$OUT/long_base.jsonl"
step long8k_base 60 $ROW --batches 1 --prompt-len 8000 --out "$OUT/long8k_base.jsonl"  # the shape's context is 8192
step b832_base 70 $ROW --batches 8,32 --out "$OUT/b832_base.jsonl"
for n in 4 8; do
  step base_r$n 60 $ROW --simulate-tp $n --batches 1 --out "$OUT/base_r$n.jsonl"
done
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
