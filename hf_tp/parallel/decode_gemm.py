"""TPConfig.decode_gemm="triton": the dense parallel linear layers compute calls of at most
hf_tp.kernels.decode_gemm.DECODE_MAX_M tokens (decode steps) with hf_tp's skinny-M Triton kernel; larger calls
(prefill) keep cuBLAS.

Chosen once at load: ``install_decode_gemm`` marks every layer whose weight the kernel reads (bf16/fp16/fp32,
on a device where it runs; FP8 layers have their own kernel, hf_tp.parallel.fp8), every fused q/k/v or
gate/up group, and the MoE routers that run hf_tp's routing kernel (their logits GEMM). The layers branch on
the call's token count, a static shape, and on where the call runs (hf_tp's decode loop, a compiled or captured
step: the kernel; an eager call outside the loop on CUDA: cuBLAS, hf_tp.kernels.decode_gemm.launch_context_pays),
Python state only: the compiled decode step holds the kernel and the prefill graph holds cuBLAS.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ..kernels.decode_gemm import decode_kernel_available, supports
from .fused import SharedInputGroup
from .layers import ColumnParallelLinear, ParallelLMHead, RowParallelLinear

# Whether the LM head takes the kernel too: yes, measured on one H200 (benchmarks/RESULTS.md, 2026-12-03):
# 232.6 against cuBLAS's 241.1 us at tp-1 width, 119.9 against 127.2 at tp 2 (M = 1, fp32 logits), even at tp 8
# (34.0 against 33.7).
LM_HEAD = True


def install_decode_gemm(model: nn.Module, mode: str) -> int:
    """Mark the layers (and fused groups) the kernel serves at decode when ``mode`` is "triton"; returns how
    many GEMMs (a fused group counts once)."""
    if mode != "triton":
        return 0
    count = 0
    groups = {}
    kinds = (ColumnParallelLinear, RowParallelLinear) + ((ParallelLMHead,) if LM_HEAD else ())
    for module in model.modules():
        group = getattr(module, "shared_input", None)
        if isinstance(group, SharedInputGroup):
            groups[id(group)] = group
            continue
        # the MoE routers that took hf_tp's routing kernel (parallel.moe_routing) compute their logits here too
        router = hasattr(module, "_hf_tp_route_form")
        if ((isinstance(module, kinds) or router) and getattr(module, "fp8_scale", None) is None
                and supports(module.weight)):
            module.decode_gemm = True
            count += 1
    for group in groups.values():
        if supports(group.weight):
            group.decode_gemm = True
            count += 1
    return count


def resolve_decode_gemm(config, device):
    """``config`` with decode_gemm "cublas" where the kernel cannot run on this rank's device (a GPU older than
    compute capability 8.0, or Triton missing): the fallback is chosen here, once, and shows in
    ``model.hf_tp_config``."""
    if config.decode_gemm != "triton" or decode_kernel_available(device):
        return config
    return dataclasses.replace(config, decode_gemm="cublas")
