"""Where a decode token's GPU time goes (``hf-tp bench --profile``): kernel time per decode token by kind,
from torch.profiler, against the wall time per token.

A generate of N tokens is profiled, then one of 1 token (prefill and setup only); the difference divided by
N - 1 is the decode steps' own kernel time. "gaps" is wall time per token minus kernel time: launch gaps,
host work, and (in the captured step) the time between graph nodes. With programmatic dependent launch
(TPConfig.pdl=True or HF_TP_PDL=1; by default on for MoE kernel models only) a kernel starts while the one before it finishes and waits for it on the GPU:
kernel times then overlap and include that wait, so the kinds add up to more than the wall time and "gaps" can be
negative. Profile with ``pdl=False`` (HF_TP_PDL=0) for a breakdown whose parts add up.
"""

from __future__ import annotations

import torch

# First match wins: attention before GEMM (attention kernels' names can contain "gemm"/"sm90").
KINDS = (
    ("collectives", ("nccl", "allreduce", "all_reduce", "allgather", "all_gather", "multimem", "one_shot")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "flex", "decoding")),
    # hf_tp's own: the decode GEMMs (gemv_triton) and the MoE experts' kernels (moe_decode)
    ("GEMM", ("gemm", "gemv", "gate_up_kernel", "down_kernel", "down_sum_kernel", "xmma", "cutlass", "nvjet", "cublas", "matmul", "splitk", "triton_tem_fused_mm",
              "triton_tem_fused_addmm", "_mm_", "bmm", "aten::mm", "aten::addmm", "aten::linear")),
)
ORDER = ("GEMM", "attention", "norm+pointwise", "collectives")


def kind_of(name: str) -> str:
    lower = name.lower()
    return next((kind for kind, keys in KINDS if any(k in lower for k in keys)), "norm+pointwise")


def _kernel_us(run, tokens: int) -> tuple[dict[str, float], dict[str, tuple[float, int]]]:
    """Kernel time (µs) per kind, and per kernel name (µs, calls), of ``run(tokens)``."""
    activities = [torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [
        torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        run(tokens)
    kinds: dict[str, float] = {}
    kernels: dict[str, tuple[float, int]] = {}
    on_gpu = torch.cuda.is_available()
    for event in prof.key_averages():
        if on_gpu:
            # Only the kernels themselves: an operator's device time includes the kernels beneath it (aten::linear
            # > aten::addmm > the GEMM), and wrappers such as a compiled region include everything they ran.
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        else:  # CPU: the top-level ops' own time stands in for kernels
            us = event.self_cpu_time_total
        if us:
            kinds[kind_of(event.key)] = kinds.get(kind_of(event.key), 0.0) + us
            kernels[event.key] = (us, event.count)
    return kinds, kernels


def profile_decode(run, tokens: int, wall_s_per_token: float, top: int = 8) -> dict:
    """Per decode token: kernel µs by kind, gaps, and the ``top`` kernels by time. ``run(n)`` generates n
    tokens (after a warm-up: nothing is compiled or captured while profiling)."""
    tokens = max(tokens, 2)
    full, full_kernels = _kernel_us(run, tokens)
    first, first_kernels = _kernel_us(run, 1)
    steps = tokens - 1
    per_kind = {kind: round(max(full.get(kind, 0.0) - first.get(kind, 0.0), 0.0) / steps, 2) for kind in ORDER}
    kernels_us = sum(per_kind.values())
    wall_us = wall_s_per_token * 1e6
    top_list = []
    for name, (us, count) in full_kernels.items():
        us0, count0 = first_kernels.get(name, (0.0, 0))
        if us - us0 > 0:
            top_list.append((round((us - us0) / steps, 2), round((count - count0) / steps, 2), kind_of(name), name[:100]))
    top_list.sort(reverse=True)
    return {"us_per_token": per_kind, "kernels_us": round(kernels_us, 2), "wall_us": round(wall_us, 2),
            "gaps_us": round(wall_us - kernels_us, 2), "top": top_list[:top]}


def profile_lines(row: dict) -> list[str]:
    """The breakdown printed under the bench table, one block per profiled row."""
    prof = row.get("profile")
    if not prof:
        return []
    head = f"{row.get('label', row['system'])} batch {row['batch']}: per decode token, wall {prof['wall_us'] / 1e3:.3f} ms"
    lines = [head]
    for kind in ORDER:
        lines.append(f"  {kind:<16}{prof['us_per_token'][kind] / 1e3:9.3f} ms")
    lines.append(f"  {'gaps':<16}{prof['gaps_us'] / 1e3:9.3f} ms  (wall minus kernels)")
    if prof["gaps_us"] < 0:
        lines.append("  (kernel times overlap: programmatic dependent launch; HF_TP_PDL=0 for parts that add up)")
    for us, calls, kind, name in prof["top"]:
        lines.append(f"    {us:9.1f} us {calls:6.1f} calls  [{kind}] {name}")
    return lines
