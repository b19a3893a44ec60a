"""Where a decode token's time goes: CUDA kernel time per token by kind (GEMM, attention,
all-reduce/gather, other) against wall time per token, from torch.profiler over one generate.

Usage: [torchrun --nproc-per-node N] python benchmarks/decode_profile.py --model FOLDER [--tokens 64] [--eager] [--top K]
Rank 0 prints the table. Without torchrun it runs hf_tp's layers with a TP group of one.
"""

from __future__ import annotations

import argparse
import os
import time

for _k, _v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402

KINDS = (("all-reduce/gather", ("nccl", "allreduce", "all_reduce", "allgather", "all_gather", "multimem", "one_shot")),
         ("attention", ("flash", "fmha", "attention", "sdpa", "softmax")),
         ("GEMM", ("gemm", "xmma", "cutlass", "nvjet", "cublas", "matmul", "sm90")))


def kind_of(name: str) -> str:
    lower = name.lower()
    return next((kind for kind, keys in KINDS if any(k in lower for k in keys)), "other")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--eager", action="store_true", help="profile the eager path instead of the fast path")
    parser.add_argument("--top", type=int, default=0, help="also list the K kernels that take the most time")
    args = parser.parse_args()
    os.environ["HF_TP_FAST_DECODE"] = "0" if args.eager else "1"
    from gpu_rank import load_rank_model

    model, tp, ids = load_rank_model(args.model)
    world, device = tp.tp_size, tp.device

    def run(n):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    run(args.tokens)  # compile, capture, warm up
    wall = (run(args.tokens) - run(1)) / (args.tokens - 1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run(args.tokens)
    per_kind: dict[str, float] = {}
    per_kernel: list[tuple[float, int, str]] = []
    for event in prof.key_averages():
        us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if us:
            per_kind[kind_of(event.key)] = per_kind.get(kind_of(event.key), 0.0) + us
            per_kernel.append((us, event.count, event.key))
    if tp.tp_rank == 0:
        steps = args.tokens  # the profiled run: one prefill + tokens-1 decode steps; kernels summed over all
        print(f"tp={world} path={'eager' if args.eager else 'fast'}  wall per decode token {wall * 1e3:.3f} ms "
              f"({1 / wall:.1f} tok/s)")
        total = sum(per_kind.values()) / steps / 1e3
        for kind, us in sorted(per_kind.items(), key=lambda kv: -kv[1]):
            print(f"  {kind:<18} {us / steps / 1e3:8.3f} ms/token")
        print(f"  {'kernels, all':<18} {total:8.3f} ms/token; gaps and host work about {wall * 1e3 - total:.3f} ms/token")
        for us, count, name in sorted(per_kernel, reverse=True)[:args.top]:
            print(f"  {us / steps:9.1f} us/token {count / steps:6.1f} calls/token  [{kind_of(name)}] {name[:110]}")
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
