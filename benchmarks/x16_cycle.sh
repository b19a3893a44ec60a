#!/usr/bin/env bash
# One device call for the fourth session of 2026-12-04 (issue 19): FP8 decode GEMMs multiplying bf16 activations in
# fp16 ("X16" table entries, benchmarks/fp8_f16_probe.py), their GPU tests, then the Llama-3-8B shape end to end,
# fp8-channel against bf16 in the same call (tp 1 batch 1 and 8, the rank of tp 2 with its profile).
# Usage (device): cd <checkout> && OUT=... BUDGET=470 bash benchmarks/x16_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
CK=${CK:-/tmp/ck}
record_env
for w in bf16 fp8-channel; do write_ckpt llama3-8b "$CK/llama3-8b-$w" 200 $w & done
(timeout 150 python -m pytest -q -p no:cacheprovider -m gpu -rfE tests/test_fp8_kernel.py > "$OUT/tests_1.txt" 2>&1
 echo "rc=$? tests_1" >> "$OUT/log.txt") &
wait
ROW="python -m hf_tp.bench.run_system --system hf_tp --mode compile --tp-size 1"
step tp1_fp8-channel 85 $ROW --model "$CK/llama3-8b-fp8-channel" --batches 1,8 --out "$OUT/e2e.jsonl"
step r2_fp8-channel 55 $ROW --model "$CK/llama3-8b-fp8-channel" --simulate-tp 2 --batches 1 --profile 64 --out "$OUT/e2e.jsonl"
step tp1_bf16 85 $ROW --model "$CK/llama3-8b-bf16" --batches 1,8 --out "$OUT/e2e.jsonl"
step r2_bf16 50 $ROW --model "$CK/llama3-8b-bf16" --simulate-tp 2 --batches 1 --out "$OUT/e2e.jsonl"
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
tail -n 3 "$OUT"/tests_*.txt
python -c "
import json
for l in open('$OUT/e2e.jsonl'):
    r = json.loads(l); print(r['tp_size'], r['batch'], r.get('tp_config', {}).get('fp8_weights'), r['decode_tok_s'], r['ttft_s'], r['peak_bytes_per_gpu'])" 2>&1
pack
