"""Triton kernels for weight-only FP8 linear layers in the canonical form of ``hf_tp.kernels.fp8``.

Imported lazily (only where a kernel may run), so that CPU-only installs never touch Triton.

Decode sizes (M <= DOT_MAX_M rows) run the skinny-M kernels shared with the dense layers
(hf_tp/kernels/gemv_triton.py: the GEMV for M == 1, tl.dot above), which read the FP8 weight once and apply
its scales per K-group in fp32. Prefill (M > DOT_MAX_M) dequantizes the weight once with ``_dequant`` below
and calls cuBLAS.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import gemv_triton


@triton.jit
def _dequant(w_ptr, s_ptr, o_ptr, N, K, G, group_k, k_offset, stride_wn, stride_sn, stride_on,
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """W = w * scale per group, rounded once to o's dtype (the reference ``dequantize``): the prefill path.
    BLOCK_K <= group_k (or G == 1), so a tile holds at most two groups."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    rk = tl.arange(0, BLOCK_K)
    ok = (rn[:, None] < N) & (k0 + rk[None, :] < K)
    w = tl.load(w_ptr + rn[:, None].to(tl.int64) * stride_wn + k0 + rk[None, :], mask=ok, other=0.0)
    s_row = s_ptr + rn.to(tl.int64) * stride_sn
    g0 = (k0 + k_offset) // group_k
    edge = (g0 + 1) * group_k - k_offset - k0
    s0 = tl.load(s_row + g0, mask=rn < N, other=0.0)
    s1 = tl.load(s_row + tl.minimum(g0 + 1, G - 1), mask=rn < N, other=0.0)
    s = tl.where(rk[None, :] < edge, s0[:, None], s1[:, None])
    tl.store(o_ptr + rn[:, None].to(tl.int64) * stride_on + k0 + rk[None, :],
             (w.to(tl.float32) * s).to(o_ptr.dtype.element_ty), mask=ok)


# Above DOT_MAX_M rows the launcher dequantizes the weight (one Triton pass) and calls cuBLAS: at M = 128 that
# measured 337 us per 8B layer against 673 us for a tl.dot kernel with 128-row tiles (and 144 us for bf16:
# prefill is slower than bf16, see docs/fp8.md, "Speed"). The crossover below 128 was not measured.
DOT_MAX_M = 64


def takes_fp16(M: int, N: int, K: int, G: int, group_k: int, k_offset: int) -> bool:
    """Whether a call of M bf16 rows runs the tl.dot kernel in fp16 ("X16" in its measured config), so that the
    caller can make the activations' fp16 copy where Inductor fuses it into the step that made them."""
    if M > DOT_MAX_M:
        return False
    path, cfg = gemv_triton.choose(M, N, K, 1, path=None)
    if path != "dot":
        return False
    if G == 1:
        mode = 1
    else:
        block_k = max(16, min(cfg["BLOCK_K"], triton.next_power_of_2(K), gemv_triton.pow2_at_most(group_k)))
        mode = 2 if group_k % block_k == 0 and k_offset % block_k == 0 else 3
    return gemv_triton.takes_fp16(cfg, 1, torch.bfloat16, mode)


def launch(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
           bias: torch.Tensor | None, config: dict | None = None, path: str | None = None,
           x16: torch.Tensor | None = None, norm: dict | None = None) -> torch.Tensor:
    """x2 (M, K) contiguous; returns (M, N) in x2's dtype. ``path`` ("gemv", "skinny" for the tl.dot kernel,
    "dequant") and ``config`` override the measured choice (tests and the benchmark's sweep use them).
    ``x16``: x2 in fp16 (contiguous), for the calls ``takes_fp16`` names. ``norm``: gemv_triton.launch's norm
    arguments (norm_weight, eps, residual, h_out, x_out): the GEMM of the RMSNorm of x2 (+ residual), decode
    sizes only."""
    M, K = x2.shape
    N, G = weight.shape[0], scale.shape[1]
    if path is None and M > DOT_MAX_M:
        path = "dequant"
    if path == "dequant" and norm:
        raise ValueError(f"fp8_triton: the norm form runs at decode sizes (at most {DOT_MAX_M} rows), got {M}")
    if path == "dequant":
        wd = torch.empty((N, K), device=x2.device, dtype=x2.dtype)
        block_k = 128 if G == 1 else min(128, gemv_triton.pow2_at_most(group_k))
        grid = (triton.cdiv(N, 32), triton.cdiv(K, block_k))
        _dequant[grid](weight, scale, wd, N, K, G, group_k, k_offset, weight.stride(0), scale.stride(0),
                       wd.stride(0), BLOCK_N=32, BLOCK_K=block_k, num_warps=4)
        return torch.nn.functional.linear(x2, wd, bias)
    return gemv_triton.launch(x2, weight, scale, group_k, k_offset, bias, config=config,
                              path={None: None, "gemv": "gemv", "skinny": "dot"}[path], x16=x16, **(norm or {}))
