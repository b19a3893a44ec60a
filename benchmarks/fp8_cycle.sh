#!/usr/bin/env bash
# Issue 19's end-to-end FP8 decode, against hf_tp's bf16 in the same call (one device call):
#   1. the Llama-3-8B shape written three times (bf16, fp8-block, fp8-channel; same seed, same weights before
#      quantization) while the FP8 GPU tests run;
#   2. tp 1 at batch 1 and 8, then the rank of tp 2 at batch 1, for each format (weights kept FP8 on the GPU:
#      TPConfig's default fp8_weights="auto" on compute capability 8.9+). ttft_s carries the 128-token prefill.
# Usage (device): cd <checkout> && OUT=... BUDGET=585 bash benchmarks/fp8_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
CK=${CK:-/tmp/ck}
record_env
for w in bf16 fp8-block fp8-channel; do write_ckpt llama3-8b "$CK/llama3-8b-$w" 240 $w & done
(timeout 200 python -m pytest -q -p no:cacheprovider -m gpu -rfE tests/test_gpu_fp8.py tests/test_fp8_kernel.py \
  > "$OUT/tests_fp8.txt" 2>&1; echo "rc=$? tests_fp8" >> "$OUT/log.txt") &
wait
ROW="python -m hf_tp.bench.run_system --system hf_tp --mode compile --tp-size 1"
for w in ${FORMATS:-bf16 fp8-block fp8-channel}; do
  step tp1_$w 75 $ROW --model "$CK/llama3-8b-$w" --batches 1,8 --out "$OUT/fp8.jsonl"
done
for w in ${FORMATS:-bf16 fp8-block fp8-channel}; do
  step r2_$w 55 $ROW --model "$CK/llama3-8b-$w" --simulate-tp 2 --batches 1 --out "$OUT/fp8.jsonl"
done
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
tail -n 2 "$OUT"/tests_*.txt
python -c "
import json
for l in open('$OUT/fp8.jsonl'):
    r = json.loads(l); print(r['tp_size'], r['batch'], r['decode_tok_s'], r['ttft_s'], r['peak_bytes_per_gpu'])" 2>&1
grep -h "^rc=" "$OUT/log.txt"
pack
