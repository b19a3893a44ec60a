"""FP8 weights in one canonical per-rank form, whatever the checkpoint's format.

A rank's FP8 linear weight is three things:

  weight   float8_e4m3fn, (N_local, K_local)      the rank's slice, as read from the file
  scale    float32, (N_local, G)                  one scale per output row and K-group
  group_k, k_offset (ints)                        local column k belongs to group (k + k_offset) // group_k

so that W[n, k] = weight[n, k] * scale[n, (k + k_offset) // group_k].

- Transformers/DeepSeek block FP8 (128 x 128 blocks): the block scales' rows are repeated per output row of
  the slice (a row-split slice may start inside a block: row n takes its block's scale), group_k = 128 and
  k_offset = the slice's first column modulo 128 (a column-split slice may start inside a block too).
- compressed-tensors per-channel: scale (N_local, 1), group_k = K_local, k_offset = 0.
- compressed-tensors static per-tensor: the scalar repeated to (N_local, 1), as per-channel.

Expanding block scales per row costs N_local * G * 4 bytes: 1/32 of the FP8 bytes at 128 x 128 blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def group_index(k_local: int, group_k: int, k_offset: int, device=None) -> torch.Tensor:
    """For every local column, the index of its scale group."""
    return (torch.arange(k_local, device=device) + k_offset) // group_k


def dequantize(weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
               dtype: torch.dtype) -> torch.Tensor:
    """The reference: W = weight * scale per group, computed in float32 and rounded once to ``dtype``."""
    groups = group_index(weight.shape[1], group_k, k_offset, device=weight.device)
    return (weight.to(torch.float32) * scale.to(torch.float32)[:, groups]).to(dtype)


def fp8_linear_reference(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int,
                         k_offset: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W^T (+ bias) with W dequantized to x's dtype first: what a kernel must match."""
    return F.linear(x, dequantize(weight, scale, group_k, k_offset, x.dtype), bias)
