#!/usr/bin/env bash
# One device call (issue 21 loading, issue 18 attention):
#   1. in parallel: the GPU tests of the loader's staging (coalesced expert pieces), the decode-attention kernel
#      and the loop; qwen3-moe-mini's and Llama-3-8B's checkpoints written;
#   2. host -> GPU copies alone by size (benchmarks/slice_read_probe.py --dma);
#   3. loads per rank of both checkpoints with 8 and 32 MB staging buffers (the stager's breakdown);
#   4. qwen3-moe-mini end to end with the new split rule: tp 1 batch 1/8, the rank of tp 2 with its profile.
# Usage (device): cd <checkout> && OUT=... BUDGET=560 bash benchmarks/coalesce_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
CK=${CK:-/tmp/ck}; MOE=$CK/qwen3-moe-mini-bfloat16; DENSE=$CK/llama3-8b-bfloat16
record_env
for shape in qwen3-moe-mini llama3-8b; do write_ckpt $shape "$CK/$shape-bfloat16" 200 & done
T="python -m pytest -q -p no:cacheprovider -m gpu -rfE"
(timeout 200 $T tests/test_gpu_load.py tests/test_decode_attention.py > "$OUT/tests_1.txt" 2>&1; echo "rc=$? tests_1" >> "$OUT/log.txt") &
(timeout 200 $T tests/test_gpu_loop.py > "$OUT/tests_2.txt" 2>&1; echo "rc=$? tests_2" >> "$OUT/log.txt") &
wait
step dma 30 python benchmarks/slice_read_probe.py --dma
step load_moe 90 python benchmarks/load_speed.py "$MOE" --chunk-mb 8,32
step load_dense 70 python benchmarks/load_speed.py "$DENSE" --chunk-mb 8,32
ROW="python -m hf_tp.bench.run_system --system hf_tp --mode compile --model $MOE --tp-size 1"
step moe_tp1 70 $ROW --batches 1,8 --out "$OUT/moe.jsonl"
step moe_r2 60 $ROW --simulate-tp 2 --batches 1 --profile 64 --out "$OUT/moe.jsonl"
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
cat "$OUT/dma.txt"; grep -h LOADSPEED "$OUT"/load_*.txt | cut -c1-400
pack
