#!/usr/bin/env bash
# The first device call of the session after 2026-12-04 (second session): what that session left unrun on a GPU.
#   1. in parallel: the GPU tests of the loader (stager refactor and review fixes after 719d57e), decode attention,
#      the loop and the MoE kernels; both random checkpoints written;
#   2. loads per rank of both (defaults: preadv + coalesced experts, 32 MB buffers);
#   3. qwen3-moe-mini end to end twice at tp 1 (the spread between runs), and the rank of tp 2;
#   4. Llama-3-8B (issue 18's table with the 64-slot attention splits): tp 1, ranks of tp 2/4/8, batch 1, then the
#      4096-token prompt.
# Usage (device): cd <checkout> && OUT=... BUDGET=585 bash benchmarks/next_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
CK=${CK:-/tmp/ck}; MOE=$CK/qwen3-moe-mini-bfloat16; DENSE=$CK/llama3-8b-bfloat16
record_env
for shape in qwen3-moe-mini llama3-8b; do write_ckpt $shape "$CK/$shape-bfloat16" 200 & done
T="python -m pytest -q -p no:cacheprovider -m gpu -rfE"
(timeout 200 $T tests/test_gpu_load.py tests/test_decode_attention.py > "$OUT/tests_1.txt" 2>&1; echo "rc=$? tests_1" >> "$OUT/log.txt") &
(timeout 200 $T tests/test_gpu_loop.py tests/test_moe_kernel.py > "$OUT/tests_2.txt" 2>&1; echo "rc=$? tests_2" >> "$OUT/log.txt") &
wait
step load_moe 50 python benchmarks/load_speed.py "$MOE"
step load_dense 40 python benchmarks/load_speed.py "$DENSE"
MOEROW="python -m hf_tp.bench.run_system --system hf_tp --mode compile --model $MOE --tp-size 1"
step moe_tp1 70 $MOEROW --batches 1,8 --out "$OUT/moe.jsonl"
step moe_tp1_again 50 $MOEROW --batches 1 --out "$OUT/moe.jsonl"
step moe_r2 50 $MOEROW --simulate-tp 2 --batches 1 --out "$OUT/moe.jsonl"
ROW="python -m hf_tp.bench.run_system --system hf_tp --mode compile --model $DENSE --tp-size 1"
step dense_tp1 60 $ROW --batches 1 --out "$OUT/dense.jsonl"
for n in 2 4 8; do step dense_r$n 50 $ROW --simulate-tp $n --batches 1 --out "$OUT/dense.jsonl"; done
step dense_long 60 $ROW --batches 1 --prompt-len 4096 --out "$OUT/dense.jsonl"
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
tail -n 2 "$OUT"/tests_*.txt; grep -h LOADSPEED "$OUT"/load_*.txt | cut -c1-200
python -c "
import json
for f in ('$OUT/moe.jsonl', '$OUT/dense.jsonl'):
    try:
        for l in open(f): r = json.loads(l); print(f.split('/')[-1], r['tp_size'], r['batch'], r['decode_tok_s'])
    except OSError: pass"
pack
