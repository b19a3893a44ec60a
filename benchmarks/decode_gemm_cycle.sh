#!/usr/bin/env bash
# The decode GEMM kernels (hf_tp/kernels/gemv_triton.py) on one GPU, in one call (about 4 minutes: give it
# timeout_s 300 or more; results are written as they come):
#   1. in parallel: the sweep's kernels compiled into Triton's cache (10 processes) and the GPU tests
#      (tests/test_decode_gemm.py, tests/test_fp8_kernel.py, tests/test_gpu_fp8.py), each bounded by `timeout`;
#   2. then, on an otherwise idle GPU: benchmarks/fp8_gemm.py --sweep at tp 2, 1, 4, 8 widths (tp 2 first), M = 1
#      and 8, bf16 and FP8, the LM head; the layers as shipped with the sweep's table.
#   Outputs ($OUT, 7 files): env.txt, t_decode.log, t_fp8.log, t_gloo.log, gemm.log, gemm.json (sweep rows,
#   per-GEMM and per-layer "as shipped" rows) and gemv_table.py (copy to hf_tp/kernels/gemv_table.py).
# Usage (repo root, on the device): bash benchmarks/decode_gemm_cycle.sh   (about 4 minutes)
#   PHASE=prep|sweep runs only step 1 or step 2 (another GPU job can then run between them, e.g. writing a
#   checkpoint while the kernels compile); TESTS=0 leaves the GPU tests out of step 1.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD
start=$(date +%s)
{ nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv
  python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
  git log -1 --format=%H 2>/dev/null; } > $OUT/env.txt 2>&1
PHASE=${PHASE:-all}
ARGS="--tps 2,1,4,8 --ms 1,8 --lm-head --sweep"
if [ "$PHASE" != sweep ]; then
  T="python3 -m pytest -q -p no:cacheprovider -m gpu -rf"
  if [ "${TESTS:-1}" != 0 ]; then
    (timeout 150 $T tests/test_decode_gemm.py -k "not gloo" > $OUT/t_decode.log 2>&1; echo "rc=$?" >> $OUT/t_decode.log) &
    (timeout 150 $T tests/test_fp8_kernel.py tests/test_gpu_fp8.py > $OUT/t_fp8.log 2>&1; echo "rc=$?" >> $OUT/t_fp8.log) &
    (timeout 150 $T tests/test_decode_gemm.py -k gloo > $OUT/t_gloo.log 2>&1; echo "rc=$?" >> $OUT/t_gloo.log) &
  fi
  timeout 140 python3 benchmarks/fp8_gemm.py --out $OUT/gemm.json $ARGS --precompile 10 --precompile-only \
    > $OUT/gemm.log 2>&1
  echo "precompile rc=$? at $(( $(date +%s) - start )) s" >> $OUT/gemm.log
  wait
  echo "tests done at $(( $(date +%s) - start )) s" >> $OUT/gemm.log
fi
[ "$PHASE" = prep ] && exit 0
nvidia-smi --query-gpu=clocks.sm,clocks.mem,memory.used --format=csv >> $OUT/env.txt 2>&1
python3 benchmarks/fp8_gemm.py --out $OUT/gemm.json $ARGS >> $OUT/gemm.log 2>&1
echo "sweep rc=$? at $(( $(date +%s) - start )) s" >> $OUT/gemm.log
