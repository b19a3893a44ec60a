#!/usr/bin/env bash
# The one-GPU device calls of the session of 2026-12-04 (sixth): what the fourth and fifth sessions left unrun.
#   call 1 (default): the GPU tests of the unrun kernel commits (the folded split-K sum, the fp16 form's review
#      fixes, PDL bit-equality of the GEMMs and decode attention) beside the bf16 and fp8-channel checkpoint
#      writers; issue 18: programmatic dependent launch (hf_tp.kernels.pdl) for hf_tp's kernels, and also for
#      Inductor's own (torch._inductor.config.triton.enable_pdl, where this torch has it), tp 1 and the rank of tp 2,
#      bf16, profiled; issue 19: the fp8-channel tp-1 step with the tp-1 fp16 ("X16") entries off and on.
#   call 2 (CALL=2): the MoE kernel tests; the folded split sum at the fp8-channel rank of tp 2; the fp8-block rank of
#      tp 2; the fp16 form at prefill sizes; gpu_check.py --fp8 block; the rank of tp 8 with and without PDL.
# Usage (device): cd <checkout> && OUT=... BUDGET=585 [CALL=2] bash benchmarks/next_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
CK=${CK:-/tmp/ck}
CALL=${CALL:-1}
record_env
python -c "import torch._inductor.config as c; print('inductor enable_pdl:', hasattr(c.triton, 'enable_pdl'))" >> "$OUT/gpu.txt" 2>&1
T="python -m pytest -q -p no:cacheprovider -m gpu -rfE --durations=5"
# run_system with module constants set first (in-process): "X16_TP1=1" puts the fourth session's tp-1 M = 1 fp16
# entries back; "FOLD=1" sums splits of K in the GEMM; "PDL=1" launches hf_tp's GEMMs and decode attention with
# programmatic dependent launch; "IPDL=1" has Inductor generate PDL code for its own kernels too
FLIP="import os, runpy, sys
from hf_tp.kernels import gemv_triton as gt
if os.environ.get('X16_TP1'):
    for n, k, st, sp in ((28672, 4096, 3, 1), (4096, 14336, 3, 8)):
        gt.TABLE[('gemv', 1, n, k)] = dict(path='dot', BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=st, SPLIT=sp, X16=True)
gt.FOLD_SPLIT = bool(os.environ.get('FOLD'))
from hf_tp.kernels import pdl
pdl.PDL_LAUNCH = bool(os.environ.get('PDL'))
if os.environ.get('IPDL'):
    import torch._inductor.config as c
    c.triton.enable_pdl = True
sys.argv[0] = 'run_system'
runpy.run_module('hf_tp.bench.run_system', run_name='__main__')"
row() {  # row NAME SECONDS_NEEDED WEIGHTS EXTRA_ARGS... : one run_system row into $OUT/e2e.jsonl (env flips apply)
  local name=$1 need=$2 w=$3; shift 3
  step "$name" "$need" python -c "$FLIP" --system hf_tp --mode compile --tp-size 1 --model "$CK/llama3-8b-$w" \
    --out "$OUT/e2e_$name.jsonl" "$@"
}
if [ "$CALL" = 1 ]; then
  for w in bf16 fp8-channel; do write_ckpt llama3-8b "$CK/llama3-8b-$w" 200 $w & done
  (timeout 230 $T tests/test_decode_gemm.py tests/test_decode_attention.py tests/test_fp8_kernel.py > "$OUT/tests_1.txt" 2>&1
   echo "rc=$? tests_1" >> "$OUT/log.txt") &
  wait
  row tp1_bf16 50 bf16 --batches 1
  PDL=1 row tp1_bf16_pdl 50 bf16 --batches 1
  PDL=1 IPDL=1 row tp1_bf16_ipdl 60 bf16 --batches 1
  row r2_bf16 55 bf16 --simulate-tp 2 --batches 1 --profile 64
  PDL=1 IPDL=1 row r2_bf16_ipdl 60 bf16 --simulate-tp 2 --batches 1 --profile 64
  PDL=1 row r2_bf16_pdl 50 bf16 --simulate-tp 2 --batches 1
  row tp1_fp8c 55 fp8-channel --batches 1 --profile 64
  X16_TP1=1 row tp1_fp8c_x16 55 fp8-channel --batches 1 --profile 64
else
  [ -d "$CK/llama3-8b-fp8-channel" ] || echo "no $CK/llama3-8b-fp8-channel: call 1 did not run on this machine" | tee -a "$OUT/log.txt"
  write_ckpt llama3-8b "$CK/llama3-8b-fp8-block" 150 fp8-block &
  (timeout 150 $T tests/test_moe_kernel.py > "$OUT/tests_moe.txt" 2>&1; echo "rc=$? tests_moe" >> "$OUT/log.txt") &
  wait
  row r2_fp8c 50 fp8-channel --simulate-tp 2 --batches 1,8
  FOLD=1 row r2_fp8c_fold 50 fp8-channel --simulate-tp 2 --batches 1,8
  row r2_fp8b 50 fp8-block --simulate-tp 2 --batches 1
  row r8_bf16 50 bf16 --simulate-tp 8 --batches 1
  PDL=1 IPDL=1 row r8_bf16_ipdl 60 bf16 --simulate-tp 8 --batches 1 --profile 64
  # issue 19's prefill: can the fp16 form with prefill tiles make FP8 prefill as fast as bf16 (then route M > 64 to it)?
  step fp8_prefill 120 python benchmarks/fp8_f16_probe.py --prefill 128,512,2048 --out "$OUT/fp8_prefill.json"
  step fp8_check 90 python benchmarks/gpu_check.py --random-arch phi3 --fp8 block --one-gpu-gloo --tp-size 2 \
    --json "$OUT/fp8_check.json"
fi
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
tail -n 3 "$OUT"/tests_*.txt
python -c "
import glob, json
for f in sorted(glob.glob('$OUT/e2e_*.jsonl')):
    for l in open(f):
        r = json.loads(l); print(f.split('e2e_')[1][:-6], r.get('simulated_tp', 1), r['batch'], r['decode_tok_s'], r['ttft_s'])"
pack
