#!/usr/bin/env bash
# The dense decode GEMMs of an MoE model (issue 21: qwen3-moe-mini's attention and LM head were not in the GEMV
# table), on one GPU, in one device call; each step only if the call's budget still allows it:
#   1. in parallel: the sweep's kernels compiled into Triton's cache, the qwen3-moe-mini checkpoint written,
#      and the GPU tests named in $GPU_TESTS;
#   2. benchmarks/fp8_gemm.py --model qwen3-moe-mini --sweep (tp 1/2/4/8 widths, M 1 and 8, the LM head), which
#      also times the rule (gemv_triton.rule_config) against the table on each shape;
#   3. qwen3-moe-mini end to end with the rule (tp 1, batch 1: the tree as committed);
#   4. the sweep's table copied into the device's tree, then end to end again (tp 1 batch 1/8, rank of tp 2
#      with the kernel profile).
# Usage (device): cd <checkout> && OUT=... BUDGET=580 [GPU_TESTS="tests/a.py"] bash benchmarks/moe_gemm_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
CK=${CK:-/tmp/ck}; MODEL=$CK/qwen3-moe-mini-bfloat16
record_env
GEMM="python benchmarks/fp8_gemm.py --model qwen3-moe-mini --tps 1,2,4,8 --ms 1,8 --lm-head --sweep --out $OUT/gemm.json"
if [ -n "${GPU_TESTS:-}" ]; then
  (timeout "${TEST_S:-170}" python -m pytest -q -p no:cacheprovider -m gpu -rfE $GPU_TESTS > "$OUT/tests.txt" 2>&1
   echo "rc=$? tests" >> "$OUT/log.txt") &
fi
(timeout 150 python -c "from hf_tp.bench.shapes import write_random_checkpoint as w; print(w('qwen3-moe-mini', '$MODEL'))" \
  > "$OUT/ckpt.txt" 2>&1; echo "rc=$? ckpt" >> "$OUT/log.txt") &
step precompile 150 $GEMM --precompile 10 --precompile-only
wait
step sweep 150 $GEMM
ROW="python -m hf_tp.bench.run_system --system hf_tp --mode compile --model $MODEL --tp-size 1"
step moe_rule 70 $ROW --batches 1 --out "$OUT/moe_rule.jsonl"
[ -f "$OUT/gemv_table.py" ] && cp "$OUT/gemv_table.py" hf_tp/kernels/gemv_table.py && cp "$OUT/gemv_table.py" "$OUT/gemv_table_new.py"
step moe_table 70 $ROW --batches 1,8 --out "$OUT/moe_table.jsonl"
step moe_table_r2 70 $ROW --simulate-tp 2 --batches 1 --profile 64 --out "$OUT/moe_table.jsonl"
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
pack
