#!/usr/bin/env bash
# One device call: the GPU tests of the last session's untested commits, then issue 21's loading and attention:
#   1. in parallel: the GPU tests of the decode GEMM, the loop, the requests and the MoE kernels, and the
#      qwen3-moe-mini checkpoint written;
#   2. the decode-attention kernel's split length at 256-slot caches (qwen3-moe-mini and Llama-3-8B rank shapes);
#   3. qwen3-moe-mini's load per rank with reader threads 4/16 and chunks of 8/32 MB, with the stager's
#      breakdown (waiting for a buffer, page cache -> pinned, issuing the DMA);
#   4. qwen3-moe-mini tp 1 batch 1 with the kernel profile.
# Usage (device): cd <checkout> && OUT=... BUDGET=560 bash benchmarks/load_attention_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
CK=${CK:-/tmp/ck}; MODEL=$CK/qwen3-moe-mini-bfloat16
record_env
write_ckpt qwen3-moe-mini "$MODEL" 170 &
T="python -m pytest -q -p no:cacheprovider -m gpu -rfE"
(timeout 170 $T tests/test_decode_gemm.py tests/test_gpu_loop.py > "$OUT/tests_1.txt" 2>&1; echo "rc=$? tests_1" >> "$OUT/log.txt") &
(timeout 170 $T tests/test_decode_attention.py tests/test_gpu_loop_requests.py > "$OUT/tests_2.txt" 2>&1; echo "rc=$? tests_2" >> "$OUT/log.txt") &
(timeout 170 $T tests/test_moe_kernel.py > "$OUT/tests_3.txt" 2>&1; echo "rc=$? tests_3" >> "$OUT/log.txt") &
wait
step attn 70 python benchmarks/decode_attention_bench.py --sweep --json "$OUT/attn.json" \
  --shapes "qwen3-moe tp-1 b1 256/192,qwen3-moe tp-2 rank b1 256/192,tp-2 rank b1 256/192"
step load 130 python benchmarks/load_speed.py "$MODEL" --threads 4,16 --chunk-mb 8,32
step moe_tp1 80 python -m hf_tp.bench.run_system --system hf_tp --mode compile --model "$MODEL" --tp-size 1 \
  --batches 1 --profile 64 --out "$OUT/moe.jsonl"
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
pack
