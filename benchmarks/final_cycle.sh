#!/usr/bin/env bash
# The GPU tests of the code this session touched, then the requests' speeds: the fallbacks against Transformers
# (beam search eager on cuBLAS/SDPA now) and the loop's requests at the rank of tp 2 (Llama-3.2-1B shape).
# Usage (device): cd <checkout> && OUT=... BUDGET=450 bash benchmarks/final_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
record_env
T="python -m pytest -q -p no:cacheprovider -m gpu -rfE"
(timeout 170 $T tests/test_decode_gemm.py tests/test_gpu_loop.py > "$OUT/tests_1.txt" 2>&1; echo "rc=$? tests_1" >> "$OUT/log.txt") &
(timeout 170 $T tests/test_decode_attention.py tests/test_gpu_loop_requests.py > "$OUT/tests_2.txt" 2>&1; echo "rc=$? tests_2" >> "$OUT/log.txt") &
(timeout 170 $T tests/test_moe_kernel.py > "$OUT/tests_3.txt" 2>&1; echo "rc=$? tests_3" >> "$OUT/log.txt") &
wait
R="python benchmarks/loop_requests.py --shape llama3-1b --tokens 128 --repeats 2"
step fallbacks 80 $R --fallbacks --only fallback --json "$OUT/fallbacks.jsonl"
step requests_r2 70 $R --simulate-tp 2 --json "$OUT/requests_r2.jsonl"
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
pack
