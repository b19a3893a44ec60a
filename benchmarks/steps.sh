# Sourced by the one-call device cycles: `step NAME SECONDS_NEEDED COMMAND...` runs COMMAND (a program, not a
# shell function: `timeout` runs programs only) into $OUT/NAME.txt if the call's BUDGET still holds that
# much, and logs its exit status and seconds to $OUT/log.txt.
OUT=${OUT:-/tmp/cycle_out}; mkdir -p "$OUT"
BUDGET=${BUDGET:-540}; START=${START:-$(date +%s)}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
step() {
  local name=$1 need=$2; shift 2
  # ONLY="a b c": run just those steps (a second call that finishes what the first had no time for)
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  if [ "$(left)" -lt "$need" ]; then echo "SKIP $name ($(left) s left, needs $need)" | tee -a "$OUT/log.txt"; return; fi
  local t0; t0=$(date +%s)
  timeout $(( $(left) - 3 )) "$@" > "$OUT/$name.txt" 2>&1
  echo "rc=$? $name $(( $(date +%s) - t0 )) s, from $(date -u -d @$t0 +%T) UTC" | tee -a "$OUT/log.txt"
}
# The device returns at most 8 files per call: pack every step's output into one archive (log.txt stays
# beside it, readable without unpacking). Call last.
pack() {
  [ -f /tmp/cycle_clocks.pid ] && kill "$(cat /tmp/cycle_clocks.pid)" 2>/dev/null; rm -f /tmp/cycle_clocks.pid
  (cd "$OUT" && tar -czf /tmp/cycle_pack.tgz --exclude log.txt . && find . -type f ! -name log.txt -delete \
    && mv /tmp/cycle_pack.tgz all.tgz)
}
# The GPU, the commit and the versions, into $OUT/gpu.txt.
record_env() {
  { nvidia-smi --query-gpu=name,driver_version --format=csv; git log --oneline -1
    python -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)"
  } > "$OUT/gpu.txt" 2>&1
  # the clocks, temperature, power and throttle reasons every half second (UTC timestamps, as the step lines'
  # "from"): whether a row that runs faster or slower than its twin ran at other clocks. Started from a subshell,
  # so that a cycle's bare `wait` (for its checkpoint writers) does not wait for it; pack stops it.
  ( timeout "$BUDGET" nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,temperature.gpu,power.draw,clocks_throttle_reasons.active \
      --format=csv -lms 500 > "$OUT/clocks.csv" 2>&1 &
    echo $! > /tmp/cycle_clocks.pid )
}
# A random checkpoint of a bench shape (hf_tp.bench.shapes), in the background: `write_ckpt SHAPE FOLDER SECONDS
# [WEIGHTS] &` (WEIGHTS: bf16, fp8-block or fp8-channel), then `wait`; its exit status goes to $OUT/log.txt.
write_ckpt() {
  local weights=${4:-bf16}
  timeout "$3" python -c "from hf_tp.bench.shapes import write_random_checkpoint as w; print(w('$1', '$2', weights='$weights'))" \
    > "$OUT/ckpt_$1_$weights.txt" 2>&1
  echo "rc=$? ckpt $1 $weights" >> "$OUT/log.txt"
}
