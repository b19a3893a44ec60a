#!/usr/bin/env bash
# A short device call: safetensors' slices against memory-mapped views on the device's versions
# (benchmarks/slice_read_probe.py), and the decode-attention kernel's split length at short and middle caches.
# Usage (device): cd <checkout> && OUT=... BUDGET=300 bash benchmarks/probe_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
record_env
python -c "import safetensors; print('safetensors', safetensors.__version__)" >> "$OUT/gpu.txt" 2>&1
step slices 120 python benchmarks/slice_read_probe.py --gb 3 --threads 1,4,8
step attn 100 python benchmarks/decode_attention_bench.py --sweep --json "$OUT/attn.json" \
  --shapes "qwen3-moe tp-1 b1 512/400,qwen3-moe tp-1 b1 1024/900,qwen3-moe tp-1 b1 2048/1800,tp-1 b32 512/300"
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
cat "$OUT/gpu.txt" "$OUT/slices.txt"
pack
