#!/usr/bin/env bash
# One device call (issue 21 loading): the loader's GPU tests, then qwen3-moe-mini's and Llama-3-8B's loads per rank
# with the default TPConfig (expert pieces read with preadv and coalesced, 32 MB buffers), 4 and 8 reader threads,
# and qwen3-moe-mini at tp 2 (both ranks on the one GPU: they share its PCIe link).
# Usage (device): cd <checkout> && OUT=... BUDGET=330 bash benchmarks/load_cycle.sh
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
CK=${CK:-/tmp/ck}; MOE=$CK/qwen3-moe-mini-bfloat16; DENSE=$CK/llama3-8b-bfloat16
record_env
for shape in qwen3-moe-mini llama3-8b; do
  (timeout 200 python -c "from hf_tp.bench.shapes import write_random_checkpoint as w; print(w('$shape', '$CK/$shape-bfloat16'))" \
    > "$OUT/ckpt_$shape.txt" 2>&1; echo "rc=$? ckpt $shape" >> "$OUT/log.txt") &
done
(timeout 200 python -m pytest -q -p no:cacheprovider -m gpu -rfE tests/test_gpu_load.py > "$OUT/tests.txt" 2>&1; echo "rc=$? tests" >> "$OUT/log.txt") &
wait
step load_moe 80 python benchmarks/load_speed.py "$MOE" --threads 4,8
step load_dense 50 python benchmarks/load_speed.py "$DENSE"
step load_moe_tp2 50 python benchmarks/load_speed.py "$MOE" --tp 2
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
tail -n 2 "$OUT/tests.txt"; grep -h LOADSPEED "$OUT"/load_*.txt | cut -c1-330
pack
