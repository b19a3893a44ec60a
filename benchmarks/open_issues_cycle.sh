#!/usr/bin/env bash
# Issues 20 and 21 on one GPU, in one device call (each step only if the call's budget still allows it):
# the decode loop's selection cost per request variant, the MoE bench shape (tp 1, batch 1/8, rank of tp
# 2/4/8, with the kernel profile), the MoE kernels against the grouped GEMM per token count and expert width,
# and the requests' speeds with the fallbacks on the Llama-3.2-1B shape.
# Usage (device): cd <checkout> && OUT=... BUDGET=540 bash benchmarks/open_issues_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
git log --oneline -1 >> "$OUT/gpu.txt" 2>&1
python -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)" >> "$OUT/gpu.txt" 2>&1
step select 100 python benchmarks/select_cost.py --batch 1
step moe_bench 240 python -m hf_tp.cli bench --shape qwen3-moe-mini --systems hf_tp --modes compile --batches 1,8 \
  --simulate-tp 2,4,8 --profile --timeout 200 --json "$OUT/moe_bench.json"
step moe_switch 90 python benchmarks/moe_switch.py --out "$OUT/moe_switch.jsonl"
[ "${REQUESTS:-1}" = 1 ] && step requests 120 python benchmarks/loop_requests.py --shape llama3-1b --tokens 128 --repeats 2 --fallbacks \
  --json "$OUT/requests.jsonl"
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
