#!/usr/bin/env bash
# The one-GPU device calls of the session of 2026-12-04 (sixth). Calls 1 and 2 (the script at commit 9b6a30b)
# measured programmatic dependent launch for hf_tp's kernels and Inductor's, the tp-1 fp16 entries and the folded
# split sum (benchmarks/RESULTS.md). This version:
#   call 3 (default): PDL as the default (TPConfig.pdl) with the GEMMs' weights asked of L2 before the wait: GPU
#      tests, then tp 1, the ranks of tp 2/4/8 and a 4096-token prompt; the prefetch off and PDL off at the rank of tp 2.
#   CALL=4: what calls 1 and 2 had no time for (the fp16 form at prefill sizes, gpu_check.py --fp8 block).
# Usage (device): cd <checkout> && OUT=... BUDGET=575 [CALL=4] bash benchmarks/next_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
CK=${CK:-/tmp/ck}
CALL=${CALL:-3}
record_env
python -c "import torch._inductor.config as c; print('inductor enable_pdl:', hasattr(c.triton, 'enable_pdl'))" >> "$OUT/gpu.txt" 2>&1
T="python -m pytest -q -p no:cacheprovider -m gpu -rfE --durations=5"
# run_system with module constants set first (in-process): "X16_TP1=1" puts the fourth session's tp-1 M = 1 fp16
# entries back; "FOLD=1" sums splits of K in the GEMM; "PF=0" leaves out the GEMMs' L2 prefetch before the PDL
# wait; HF_TP_PDL=0/1 is TPConfig.pdl (calls 1 and 2 ran before it existed, with module switches: PDL=1 for hf_tp's
# kernels, IPDL=1 for Inductor's, both off by default then)
FLIP="import os, runpy, sys
from hf_tp.kernels import gemv_triton as gt
if os.environ.get('X16_TP1'):
    for n, k, st, sp in ((28672, 4096, 3, 1), (4096, 14336, 3, 8)):
        gt.TABLE[('gemv', 1, n, k)] = dict(path='dot', BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=st, SPLIT=sp, X16=True)
gt.FOLD_SPLIT = bool(os.environ.get('FOLD'))
gt.PREFETCH_WEIGHTS = os.environ.get('PF', '1') == '1'
sys.argv[0] = 'run_system'
runpy.run_module('hf_tp.bench.run_system', run_name='__main__')"
row() {  # row NAME SECONDS_NEEDED WEIGHTS EXTRA_ARGS... : one run_system row into $OUT/e2e.jsonl (env flips apply)
  local name=$1 need=$2 w=$3; shift 3
  step "$name" "$need" python -c "$FLIP" --system hf_tp --mode compile --tp-size 1 --model "$CK/llama3-8b-$w" \
    --out "$OUT/e2e_$name.jsonl" "$@"
}
if [ "$CALL" = 3 ]; then
  # the PDL default (TPConfig.pdl: hf_tp's kernels and Inductor's) with the GEMMs' weights asked of L2 before the
  # wait (gemv_triton.PREFETCH_WEIGHTS; "PF=0" turns that off): GPU tests first, then the issue-18 rows
  write_ckpt llama3-8b "$CK/llama3-8b-bf16" 200 bf16 &
  (timeout 200 $T tests/test_decode_gemm.py tests/test_gpu_loop.py tests/test_fp8_kernel.py -k "programmatic or fp16_form or loop" \
     > "$OUT/tests_3.txt" 2>&1; echo "rc=$? tests_3" >> "$OUT/log.txt"
   timeout 60 $T tests/test_decode_attention.py -k "programmatic or loop" > "$OUT/tests_3b.txt" 2>&1
   echo "rc=$? tests_3b" >> "$OUT/log.txt") &
  wait
  row tp1_bf16_pf 50 bf16 --batches 1,8
  row r2_bf16_pf 45 bf16 --simulate-tp 2 --batches 1
  PF=0 row r2_bf16_nopf 45 bf16 --simulate-tp 2 --batches 1
  row r8_bf16_pf 45 bf16 --simulate-tp 8 --batches 1
  row r4_bf16_pf 45 bf16 --simulate-tp 4 --batches 1
  row tp1_4k_pf 50 bf16 --batches 1 --prompt-len 4096
  HF_TP_PDL=0 row r2_bf16_off 45 bf16 --simulate-tp 2 --batches 1
else
  # what calls 1 and 2 (the script at commit 9b6a30b, before TPConfig.pdl) had no time for
  write_ckpt llama3-8b "$CK/llama3-8b-fp8-block" 150 fp8-block & wait
  # issue 19's prefill: can the fp16 form with prefill tiles make FP8 prefill as fast as bf16 (then route M > 64 to it)?
  step fp8_prefill 120 python benchmarks/fp8_f16_probe.py --prefill 128,512,2048 --out "$OUT/fp8_prefill.json"
  step fp8_check 90 python benchmarks/gpu_check.py --random-arch phi3 --fp8 block --one-gpu-gloo --tp-size 2 \
    --json "$OUT/fp8_check.json"
  row tp1_fp8c_x16 55 fp8-channel --batches 1
fi
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
tail -n 3 "$OUT"/tests_*.txt
python -c "
import glob, json
for f in sorted(glob.glob('$OUT/e2e_*.jsonl')):
    for l in open(f):
        r = json.loads(l); print(f.split('e2e_')[1][:-6], r.get('simulated_tp', 1), r['batch'], r['decode_tok_s'], r['ttft_s'])"
pack
