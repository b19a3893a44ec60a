#!/usr/bin/env bash
# One device call for the third session of 2026-12-04: the GPU tests of the fused attention combine and of the
# FP8 groups, the attention kernel fused vs two kernels, then the Llama-3-8B shape end to end (bf16 against FP8 in
# the same call, issue 19; the rank of tp 2 with the fused combine, issue 18).
# Usage (device): cd <checkout> && OUT=... BUDGET=555 bash benchmarks/attention_fp8_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
CK=${CK:-/tmp/ck}
record_env
for w in bf16 fp8-block fp8-channel; do write_ckpt llama3-8b "$CK/llama3-8b-$w" 200 $w & done
T="python -m pytest -q -p no:cacheprovider -m gpu -rfE"
(timeout 200 $T tests/test_decode_attention.py tests/test_gpu_loop.py > "$OUT/tests_1.txt" 2>&1; echo "rc=$? tests_1" >> "$OUT/log.txt") &
(timeout 200 $T tests/test_gpu_fp8.py tests/test_fp8_kernel.py > "$OUT/tests_2.txt" 2>&1; echo "rc=$? tests_2" >> "$OUT/log.txt") &
wait
step attn 60 python benchmarks/decode_attention_bench.py --unfused --json "$OUT/attn.json" --shapes \
  "tp-2 rank b1 256/192,qwen3-moe tp-1 b1 256/192,qwen3-moe tp-1 b1 2048/1800,tp-1 b32 512/300,tp-2 rank b1 8192/4096"
ROW="python -m hf_tp.bench.run_system --system hf_tp --mode compile --tp-size 1"
# the same row with the two-kernel attention combine (the module constant the op reads, flipped in-process)
UNFUSED="python -c d=__import__('hf_tp.kernels.decode_attention',fromlist=['_']);d.FUSED_REDUCE=False;__import__('sys').argv[0]='run_system';__import__('runpy').run_module('hf_tp.bench.run_system',run_name='__main__')"
step r2_bf16 50 $ROW --model "$CK/llama3-8b-bf16" --simulate-tp 2 --batches 1 --out "$OUT/e2e.jsonl"
step r2_bf16_unfused 50 $UNFUSED --system hf_tp --mode compile --tp-size 1 --model "$CK/llama3-8b-bf16" --simulate-tp 2 \
  --batches 1 --out "$OUT/e2e_unfused.jsonl"
step tp1_fp8-channel 85 $ROW --model "$CK/llama3-8b-fp8-channel" --batches 1,8 --out "$OUT/e2e.jsonl"
step tp1_bf16 85 $ROW --model "$CK/llama3-8b-bf16" --batches 1,8 --out "$OUT/e2e.jsonl"
step r2_fp8-channel 55 $ROW --model "$CK/llama3-8b-fp8-channel" --simulate-tp 2 --batches 1 --profile 64 --out "$OUT/e2e.jsonl"
step tp1_fp8-block 85 $ROW --model "$CK/llama3-8b-fp8-block" --batches 1,8 --out "$OUT/e2e.jsonl"
step r2_fp8-block 50 $ROW --model "$CK/llama3-8b-fp8-block" --simulate-tp 2 --batches 1 --out "$OUT/e2e.jsonl"
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
tail -n 2 "$OUT"/tests_*.txt; grep -h "us\b\|µs" "$OUT/attn.txt" | tail -12
python -c "
import json
for f in ('e2e', 'e2e_unfused'):
  for l in open('$OUT/' + f + '.jsonl'):
    r = json.loads(l); print(f, r['tp_size'], r['batch'], r['decode_tok_s'], r['ttft_s'], r['peak_bytes_per_gpu'])" 2>&1
pack
