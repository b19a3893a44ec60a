#!/usr/bin/env bash
# The first device call of the session after 2026-12-04 (third session): what that session left unrun on a GPU.
#   1. in parallel: the GPU tests of its last commits (875b6eb: the attention counters reserved at load and never
#      allocated by a call on CUDA; FP8 groups rebinding their biases), the loop's and the FP8 tests; the random
#      checkpoints written;
#   2. qwen3-moe-mini end to end with the attention combine folded (issue 21: tp 1 twice, the rank of tp 2);
#   3. Llama-3-8B rows the session could not run: the rank of tp 8, the 4096-token prompt (issue 18), and the
#      fp8-block rank of tp 2 against bf16 (issue 19);
#      The bf16 rank of tp 2 is profiled: the greedy argmax in pieces (first_argmax, was one 27.8 us kernel);
#   4. gpu_check.py --fp8 block: kept FP8 ranks against Transformers on the dequantized weights (issue 19).
# Usage (device): cd <checkout> && OUT=... BUDGET=585 bash benchmarks/next_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
CK=${CK:-/tmp/ck}; MOE=$CK/qwen3-moe-mini-bfloat16
record_env
write_ckpt qwen3-moe-mini "$MOE" 200 &
for w in bf16 fp8-block; do write_ckpt llama3-8b "$CK/llama3-8b-$w" 200 $w & done
T="python -m pytest -q -p no:cacheprovider -m gpu -rfE"
(timeout 200 $T tests/test_decode_attention.py tests/test_gpu_loop.py > "$OUT/tests_1.txt" 2>&1; echo "rc=$? tests_1" >> "$OUT/log.txt") &
(timeout 200 $T tests/test_gpu_fp8.py tests/test_fp8_kernel.py tests/test_moe_kernel.py > "$OUT/tests_2.txt" 2>&1
 echo "rc=$? tests_2" >> "$OUT/log.txt") &
wait
ROW="python -m hf_tp.bench.run_system --system hf_tp --mode compile --tp-size 1"
step moe_tp1 75 $ROW --model "$MOE" --batches 1,8 --out "$OUT/moe.jsonl"
step moe_tp1_again 50 $ROW --model "$MOE" --batches 1 --out "$OUT/moe.jsonl"
step moe_r2 50 $ROW --model "$MOE" --simulate-tp 2 --batches 1 --out "$OUT/moe.jsonl"
step dense_r8 50 $ROW --model "$CK/llama3-8b-bf16" --simulate-tp 8 --batches 1 --out "$OUT/dense.jsonl"
step dense_long 60 $ROW --model "$CK/llama3-8b-bf16" --batches 1 --prompt-len 4096 --out "$OUT/dense.jsonl"
step r2_bf16 55 $ROW --model "$CK/llama3-8b-bf16" --simulate-tp 2 --batches 1 --profile 64 --out "$OUT/dense.jsonl"
step r2_fp8-block 50 $ROW --model "$CK/llama3-8b-fp8-block" --simulate-tp 2 --batches 1 --out "$OUT/dense.jsonl"
# FP8 kept on the GPU against Transformers on the same weights dequantized, the strict verdict (random Llama-shaped
# weights: near-ties are common; the real SmolLM2 needs the GGUF carried as in one_gpu_cycle.sh)
step fp8_check 90 python benchmarks/gpu_check.py --random-arch phi3 --fp8 block --one-gpu-gloo --tp-size 2 \
  --json "$OUT/fp8_check.json"
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
tail -n 2 "$OUT"/tests_*.txt
python -c "
import json
for f in ('moe', 'dense'):
    try:
        for l in open('$OUT/' + f + '.jsonl'): r = json.loads(l); print(f, r['tp_size'], r['batch'], r['decode_tok_s'])
    except OSError: pass"
pack
