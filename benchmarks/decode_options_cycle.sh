#!/usr/bin/env bash
# Issue 18/19 on one GPU, in one device call: hf_tp's decode options on the Llama-3-8B shape, A/B in the same
# run. "new" = the defaults of this tree; "old" = OLD_ENV (the previous defaults: SDPA attention and cuBLAS
# GEMMs). Each step runs only if the call's budget still allows it, in priority order. All rows go to one
# JSONL file per variant (the device returns at most 8 files).
# Usage (device): cd <checkout> && OUT=... BUDGET=540 bash benchmarks/decode_options_cycle.sh
set -u
CK=${CK:-/tmp/ck}; MODEL=$CK/llama3-8b-bfloat16
OLD_ENV=${OLD_ENV:-"HF_TP_DECODE_ATTENTION=sdpa HF_TP_DECODE_GEMM=cublas"}
# "tri" = the defaults with hf_tp's skinny-M GEMM kernels (a candidate default: steps tri_*, tri.jsonl)
TRI_ENV=${TRI_ENV:-"HF_TP_DECODE_GEMM=triton"}
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
ROW="python -m hf_tp.bench.run_system --system hf_tp --mode compile --model $MODEL --tp-size 1"
record_env
# GPU tests (the groups named in $GPU_TESTS, separated by ';', each its own pytest process, all at once)
# while the checkpoint is written: both must end before any timing starts.
if [ -n "${GPU_TESTS:-}" ]; then
  i=0; IFS=';' read -ra groups <<< "$GPU_TESTS"
  for g in "${groups[@]}"; do i=$((i + 1))
    (timeout "${TEST_S:-170}" python -m pytest -q -p no:cacheprovider -m gpu -rfE $g > "$OUT/tests_$i.txt" 2>&1
     echo "rc=$? $g" >> "$OUT/log.txt") &
  done
fi
step ckpt 120 python -c "from hf_tp.bench.shapes import write_random_checkpoint as w; print(w('llama3-8b', '$MODEL'))"
wait
step new_tp1 50 $ROW --batches 1 --out "$OUT/new.jsonl"
step old_tp1 50 env $OLD_ENV $ROW --batches 1 --out "$OUT/old.jsonl"
step new_r2 50 $ROW --simulate-tp 2 --batches 1 --profile 64 --out "$OUT/new.jsonl"
step old_r2 50 env $OLD_ENV $ROW --simulate-tp 2 --batches 1 --out "$OUT/old.jsonl"
step tri_r2 50 env $TRI_ENV $ROW --simulate-tp 2 --batches 1 --profile 64 --out "$OUT/tri.jsonl"
step tri_tp1 50 env $TRI_ENV $ROW --batches 1 --out "$OUT/tri.jsonl"
step new_long 60 $ROW --batches 1 --prompt-len 4096 --out "$OUT/new.jsonl"
step old_long 60 env $OLD_ENV $ROW --batches 1 --prompt-len 4096 --out "$OUT/old.jsonl"
for n in 4 8; do step new_r$n 45 $ROW --simulate-tp $n --batches 1 --out "$OUT/new.jsonl"; done
step new_b832 70 $ROW --batches 8,32 --out "$OUT/new.jsonl"
# 16k context: the same weights (symlinked) under a config whose context is 32768, as Llama 3.1's is longer
LONG=$CK/llama3-8b-32k
if [ -d "$MODEL" ] && [ ! -d "$LONG" ]; then
  mkdir -p "$LONG" && ln -s "$MODEL"/*.safetensors* "$LONG"/ && cp "$MODEL"/*.json "$LONG"/ 2>/dev/null
  python -c "import json; p='$LONG/config.json'; c=json.load(open(p)); c['max_position_embeddings']=32768; json.dump(c, open(p, 'w'))"
fi
ROW16="python -m hf_tp.bench.run_system --system hf_tp --mode compile --model $LONG --tp-size 1"
step new_16k 80 $ROW16 --batches 1 --prompt-len 16384 --out "$OUT/new.jsonl"
step old_16k 80 env $OLD_ENV $ROW16 --batches 1 --prompt-len 16384 --out "$OUT/old.jsonl"
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
pack
