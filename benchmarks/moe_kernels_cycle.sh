#!/usr/bin/env bash
# Issue 21 on one GPU, in one device call; each step only if the call's budget still allows it:
#   1. in parallel: the MoE GPU tests (tests/test_moe_kernel.py, tests/test_moe_routing.py) and the
#      qwen3-moe-mini checkpoint written;
#   2. the router's logits GEMM swept (benchmarks/fp8_gemm.py --gemms router), its table entry copied into the
#      device's tree;
#   3. the MoE kernels' blocks swept, both down forms (benchmarks/moe_switch.py --sweep --write-best: written
#      into the device's hf_tp/kernels/moe_decode.py, returned as moe_decode_best.py);
#   4. qwen3-moe-mini end to end with both: tp 1 batch 1/8, ranks of tp 2 (kernel profile), 4 and 8;
#   5. the requests' speeds (Llama-3.2-1B shape, tp 1 with the fallbacks, then the rank of tp 2).
# Usage (device): cd <checkout> && OUT=... BUDGET=585 bash benchmarks/moe_kernels_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
CK=${CK:-/tmp/ck}; MODEL=$CK/qwen3-moe-mini-bfloat16
record_env
write_ckpt qwen3-moe-mini "$MODEL" 150 &
step gpu_tests 150 python -m pytest -q -p no:cacheprovider -m gpu -rfE tests/test_moe_kernel.py tests/test_moe_routing.py
wait
step router 60 python benchmarks/fp8_gemm.py --model qwen3-moe-mini --gemms router --tps 1 --ms 1,8 --sweep \
  --out "$OUT/gemm_router.json"
[ -f "$OUT/gemv_table.py" ] && cp "$OUT/gemv_table.py" hf_tp/kernels/gemv_table.py
step moe_sweep 90 python benchmarks/moe_switch.py --out "$OUT/moe_switch.jsonl" --widths 768,384 --tokens 1,8 --sweep --write-best
cp hf_tp/kernels/moe_decode.py "$OUT/moe_decode_best.py"
ROW="python -m hf_tp.bench.run_system --system hf_tp --mode compile --model $MODEL --tp-size 1"
step moe_tp1 70 $ROW --batches 1,8 --out "$OUT/moe.jsonl"
step moe_r2 60 $ROW --simulate-tp 2 --batches 1 --profile 64 --out "$OUT/moe.jsonl"
for n in 4 8; do step moe_r$n 50 $ROW --simulate-tp $n --batches 1 --out "$OUT/moe.jsonl"; done
step requests 110 python benchmarks/loop_requests.py --shape llama3-1b --tokens 128 --repeats 2 --fallbacks --json "$OUT/requests.jsonl"
step requests_r2 60 python benchmarks/loop_requests.py --shape llama3-1b --tokens 128 --repeats 2 --simulate-tp 2 --json "$OUT/requests_r2.jsonl"
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
pack
