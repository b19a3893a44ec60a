#!/usr/bin/env bash
# The first device call of the session after 2026-12-04 (fourth session): what that session left unrun on a GPU.
#   1. the GPU tests of its last commits (the split-K sum folded into the GEMM, gemv_triton FOLD_SPLIT; the fp16
#      form of the FP8 GEMMs, "X16"), test_decode_gemm and test_moe_kernel with room for their two-process tests;
#      the random checkpoints written meanwhile;
#   2. issue 19: the fp8-channel Llama-3-8B shape at tp 1 batch 1, profiled, with the tp-1 "X16" entries off (as
#      shipped) and on (as measured alone: not faster end to end in one call, unprofiled); the rank of tp 2 with
#      the folded split sum off and on (flip FOLD_SPLIT to True in gemv_triton.py if it is faster);
#   2b. issue 18: the GEMMs and decode attention launched with programmatic dependent launch (hf_tp.kernels.pdl),
#      tp 1 and the rank of tp 2, bf16, against the same rows without (flip PDL_LAUNCH to True if faster);
#   3. issue 18: the bf16 rank of tp 2 profiled (the argmax in 64 pieces); issue 19: the fp8-block rank of tp 2, the
#      fp16 form at prefill sizes (fp8_f16_probe.py --prefill) and gpu_check.py --fp8 block (kept FP8 ranks
#      against Transformers on the dequantized weights).
# Usage (device): cd <checkout> && OUT=... BUDGET=585 bash benchmarks/next_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
CK=${CK:-/tmp/ck}
record_env
for w in bf16 fp8-channel fp8-block; do write_ckpt llama3-8b "$CK/llama3-8b-$w" 200 $w & done
T="python -m pytest -q -p no:cacheprovider -m gpu -rfE --durations=5"
(timeout 240 $T tests/test_fp8_kernel.py tests/test_decode_gemm.py > "$OUT/tests_1.txt" 2>&1; echo "rc=$? tests_1" >> "$OUT/log.txt") &
wait
step tests_moe 150 $T tests/test_moe_kernel.py
ROW="python -m hf_tp.bench.run_system --system hf_tp --mode compile --tp-size 1"
# run_system with module constants set first (in-process): "X16_TP1=1" puts the fourth session's tp-1 M = 1 fp16
# entries back; "FOLD=1" sums splits of K in the GEMM; "PDL=1" launches the GEMMs and decode attention with programmatic dependent launch
FLIP="import os, runpy, sys
from hf_tp.kernels import gemv_triton as gt
if os.environ.get('X16_TP1'):
    for n, k, st, sp in ((28672, 4096, 3, 1), (4096, 14336, 3, 8)):
        gt.TABLE[('gemv', 1, n, k)] = dict(path='dot', BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=st, SPLIT=sp, X16=True)
gt.FOLD_SPLIT = bool(os.environ.get('FOLD'))
from hf_tp.kernels import pdl
pdl.PDL_LAUNCH = bool(os.environ.get('PDL'))
sys.argv[0] = 'run_system'
runpy.run_module('hf_tp.bench.run_system', run_name='__main__')"
step tp1_fp8c 55 python -c "$FLIP" --system hf_tp --mode compile --tp-size 1 --model "$CK/llama3-8b-fp8-channel" --batches 1 --profile 64 --out "$OUT/e2e.jsonl"
X16_TP1=1 step tp1_fp8c_x16 55 python -c "$FLIP" --system hf_tp --mode compile --tp-size 1 --model "$CK/llama3-8b-fp8-channel" --batches 1 --profile 64 --out "$OUT/e2e_x16.jsonl"
step tp1_bf16 50 $ROW --model "$CK/llama3-8b-bf16" --batches 1 --out "$OUT/e2e.jsonl"
PDL=1 step tp1_bf16_pdl 50 python -c "$FLIP" --system hf_tp --mode compile --tp-size 1 --model "$CK/llama3-8b-bf16" \
  --batches 1 --out "$OUT/e2e_pdl.jsonl"
PDL=1 step r2_bf16_pdl 50 python -c "$FLIP" --system hf_tp --mode compile --tp-size 1 --model "$CK/llama3-8b-bf16" \
  --simulate-tp 2 --batches 1 --out "$OUT/e2e_pdl.jsonl"
step r2_fp8c 50 $ROW --model "$CK/llama3-8b-fp8-channel" --simulate-tp 2 --batches 1 --out "$OUT/e2e.jsonl"
FOLD=1 step r2_fp8c_fold 50 python -c "$FLIP" --system hf_tp --mode compile --tp-size 1 --model "$CK/llama3-8b-fp8-channel" --simulate-tp 2 --batches 1,8 --out "$OUT/e2e_fold.jsonl"
step r2_bf16 55 $ROW --model "$CK/llama3-8b-bf16" --simulate-tp 2 --batches 1 --profile 64 --out "$OUT/e2e.jsonl"
step r2_fp8b 50 $ROW --model "$CK/llama3-8b-fp8-block" --simulate-tp 2 --batches 1 --out "$OUT/e2e.jsonl"
# issue 19's prefill: can the fp16 form with prefill tiles make FP8 prefill as fast as bf16 (then route M > 64 to it)?
step fp8_prefill 120 python benchmarks/fp8_f16_probe.py --prefill 128,512,2048 --out "$OUT/fp8_prefill.json"
step fp8_check 90 python benchmarks/gpu_check.py --random-arch phi3 --fp8 block --one-gpu-gloo --tp-size 2 \
  --json "$OUT/fp8_check.json"
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
tail -n 3 "$OUT"/tests_*.txt "$OUT/tests_moe.txt"
python -c "
import json
for f in ('e2e', 'e2e_x16', 'e2e_fold', 'e2e_pdl'):
    try:
        for l in open('$OUT/' + f + '.jsonl'): r = json.loads(l); print(f, r.get('simulated_tp', 1), r['batch'], r['decode_tok_s'], r['ttft_s'])
    except OSError: pass"
pack
