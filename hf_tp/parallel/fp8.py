"""Parallel linear layers that keep their FP8 checkpoint slice (TPConfig.fp8_weights="keep").

Such a layer holds ``weight`` (float8_e4m3fn, its local (out, in) slice) and the non-persistent buffer
``fp8_scale`` (float32, one scale per row and K-group) with ``fp8_group_k``/``fp8_k_offset``: the canonical
form of hf_tp.kernels.fp8, filled by the loader. Its forward goes through ``fp8_linear`` below, the one place
that picks the GEMM.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..kernels import fp8 as _kernels

FP8 = torch.float8_e4m3fn

def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
               bias: torch.Tensor | None = None, act_fp8: bool = False) -> torch.Tensor:
    """x @ W^T (+ bias) for an FP8 weight in canonical form: the single dispatch point of the FP8 layers.
    hf_tp.kernels.fp8.fp8_linear runs the Triton kernel where it applies and the reference elsewhere;
    ``act_fp8``: the layer's ``fp8_activations`` (TPConfig.fp8_activations, set by ``install_fp8_activations``)."""
    return _kernels.fp8_linear(x, weight, scale, group_k, k_offset, bias, act_fp8)


def install_fp8_activations(model: nn.Module, config, device: torch.device):
    """TPConfig.fp8_activations: mark the layers (and fused groups) that keep FP8 weights so that their
    prefill-size calls quantize x to FP8. Returns ``config``, with fp8_activations False where nothing takes it
    (no layer kept FP8, or no FP8 kernel on ``device``), so that ``model.hf_tp_config`` says what runs."""
    if not config.fp8_activations:
        return config
    if not kernel_available(device):
        return dataclasses.replace(config, fp8_activations=False)
    count = 0
    for module in model.modules():
        group = getattr(module, "shared_input", None)
        target = group if group is not None else module
        if getattr(target, "fp8_activations", None) is False and (
                getattr(target, "fp8_scale", None) is not None or getattr(target, "scale", None) is not None):
            target.fp8_activations = True
            count += 1
    return config if count else dataclasses.replace(config, fp8_activations=False)


def kernel_available(device: torch.device) -> bool:
    """Whether FP8 weights pay on ``device``: a CUDA GPU with FP8 (compute capability 8.9+) and Triton."""
    return device.type == "cuda" and _kernels.fp8_kernel_available(device)


def resolve_fp8_weights(config, device: torch.device, quantization, dtype: torch.dtype, agree=None):
    """``config`` with fp8_weights "auto" decided (TPConfig's docstring says how): keep only where the kernel
    runs, which needs a GPU with FP8 and bf16/fp16 activations (an fp32 model would dequantize every weight at
    every call). ``agree(int) -> int``: the minimum over the ranks, so that all ranks decide the same way (a
    rank that kept FP8 and one that did not would part ways at save_pretrained's collectives)."""
    if config.fp8_weights != "auto":
        return config
    keep = quantization is not None and dtype in (torch.bfloat16, torch.float16) and kernel_available(device)
    if agree is not None:
        keep = bool(agree(int(keep)))
    return dataclasses.replace(config, fp8_weights="keep" if keep else "dequantize")


def keep_fp8_layers(model: nn.Module, plan, index, tp_rank: int, transposed=frozenset(), quantize: bool = False) -> int:
    """Before loading: every Column/RowParallelLinear whose checkpoint weight is FP8 (with ``quantize``,
    TPConfig.weights="fp8": every one) gets an FP8 meta weight, so the loader fills it with the canonical slice
    instead of dequantizing it (or quantizes the slice it read). A slice that is several pieces along
    K (no layer of hf_tp's policies has one) has no single k_offset, and a Conv1D weight is stored transposed
(``transposed``, from parallelize): both stay dequantized. Returns the count."""
    from ..loading.keys import find_key
    from ..loading.quantization import is_fp8
    from .layers import ColumnParallelLinear, RowParallelLinear

    kept = 0
    for name, module in model.named_modules():
        if not isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
            continue
        key = find_key([f"{name}.weight"], index)
        if key is None or f"{name}.weight" in transposed or not (quantize or is_fp8(index, key)):
            continue
        shard = plan.param_shard(f"{name}.weight")
        if shard is not None and shard.dim == 1 and len(shard.pieces[tp_rank]) > 1:
            continue
        module.weight = nn.Parameter(torch.empty(module.weight.shape, dtype=FP8, device="meta"), requires_grad=False)
        kept += 1
    return kept


def fp8_scale_bytes(model: nn.Module) -> int:
    """Bytes of the FP8 layers' scales (buffers, so not in ``model.parameters()``)."""
    return sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n.endswith("fp8_scale"))
