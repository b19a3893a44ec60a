#!/usr/bin/env bash
# Issues 20 and 21 on one GPU, in one device call (each step only if the call's budget still allows it):
# the GPU tests named in $GPU_TESTS (if any), the MoE bench shape with the MoE kernels ("triton") against
# Transformers' grouped GEMM (tp 1, batch 1/8, rank of tp 2, with the kernel profile), the requests' speeds
# with the fallbacks on the Llama-3.2-1B shape, the selection's GPU cost per variant, the MoE switch point.
# Usage (device): cd <checkout> && OUT=... BUDGET=540 [GPU_TESTS="tests/a.py tests/b.py"] bash benchmarks/open_issues_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
record_env
[ -n "${GPU_TESTS:-}" ] && step gpu_tests 200 python -m pytest -q -p no:cacheprovider -m gpu -rfE $GPU_TESTS
MOE="python -m hf_tp.cli bench --shape qwen3-moe-mini --systems hf_tp --modes compile --timeout 200"
step moe_triton 150 env HF_TP_MOE_DECODE=triton $MOE --batches 1,8 --simulate-tp 2 --profile --json "$OUT/moe_triton.json"
step moe_grouped 90 env HF_TP_MOE_DECODE=grouped $MOE --batches 1,8 --json "$OUT/moe_grouped.json"
[ "${REQUESTS:-1}" = 1 ] && step requests 120 python benchmarks/loop_requests.py --shape llama3-1b --tokens 128 --repeats 2 --fallbacks \
  --json "$OUT/requests.jsonl"
step select 60 python benchmarks/select_cost.py --batch 1
step moe_switch 90 python benchmarks/moe_switch.py --out "$OUT/moe_switch.jsonl"
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
pack
