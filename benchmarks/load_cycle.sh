#!/usr/bin/env bash
# One device call (issue 21 loading): qwen3-moe-mini's and Llama-3-8B's loads per rank with the default TPConfig
# (expert pieces read with preadv and coalesced, 32 MB buffers), and with the GIL's switch interval at 0.2 ms
# instead of 5 ms; qwen3-moe-mini at tp 2 (both ranks on the one GPU: they share its PCIe link).
# Usage (device): cd <checkout> && OUT=... BUDGET=330 bash benchmarks/load_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
CK=${CK:-/tmp/ck}; MOE=$CK/qwen3-moe-mini-bfloat16; DENSE=$CK/llama3-8b-bfloat16
record_env
for shape in qwen3-moe-mini llama3-8b; do write_ckpt $shape "$CK/$shape-bfloat16" 200 & done
wait
step load_moe 80 python benchmarks/load_speed.py "$MOE" --switch-interval 0.005,0.0002,0.005,0.0002
step load_dense 50 python benchmarks/load_speed.py "$DENSE" --switch-interval 0.005,0.0002
step load_moe_tp2 40 python benchmarks/load_speed.py "$MOE" --tp 2 --switch-interval 0.005,0.0002
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
grep -h LOADSPEED "$OUT"/load_*.txt | python -c "
import json,sys
for l in sys.stdin:
    r=json.loads(l.split(' ',1)[1]); print(r['tp'], r['rank'], r['chunk_mb'], r['switch_interval'], r['weights_s'], r['gb_per_s'], r['staging'])"
pack
