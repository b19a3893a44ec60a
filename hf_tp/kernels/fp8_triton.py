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


@triton.jit
def _prefill(x_ptr, w_ptr, s_ptr, b_ptr, o_ptr, M, N, K, G, group_k, k_offset, stride_xm, stride_wn, stride_sn,
             stride_om, SCALE_LAST: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_N: tl.constexpr,
             W_LEFT: tl.constexpr):
    """x @ W^T at prefill sizes, W read as FP8 (half of bf16's bytes) and widened in the tile: one pass, no
    dequantized copy of the weight.

    Programs go through the M tiles fastest inside groups of GROUP_N weight tiles: the programs in flight then
    share their weight tiles, which come from HBM once and from L2 after (ordering the grid by weight tile
    first read each weight once per M tile: 16 times at M = 2048). Each step's W tile is dequantized in fp32
    and rounded to x's dtype, the reference's rounding (``hf_tp.kernels.fp8.dequantize``); with SCALE_LAST
    (one group per row: per-channel scales) W is widened exactly (every e4m3 value is a bf16 and an fp16) and
    the scale multiplies the fp32 sums once per output. BLOCK_K <= group_k (or G == 1), so that a step holds
    at most two groups. With W_LEFT the product is computed transposed, W @ x^T: the widened weight is then the
    left operand, which Hopper's warp-group MMA takes from registers (a right operand must be in shared memory,
    so a weight widened in registers on the right goes back through shared memory first)."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_N * tiles_m
    first_n = (pid // per_group) * GROUP_N
    group_n = tl.minimum(tiles_n - first_n, GROUP_N)
    pid_m = (pid % per_group) // group_n
    pid_n = first_n + (pid % per_group) % group_n
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * stride_wn
    s_rows = s_ptr + rn.to(tl.int64) * stride_sn
    if W_LEFT:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + rk
        if EVEN_K:
            x = tl.load(x_rows + cols[None, :], mask=m_ok[:, None], other=0.0)
            w = tl.load(w_rows + cols[None, :], mask=n_ok[:, None], other=0.0)
        else:
            k_ok = cols < K
            x = tl.load(x_rows + cols[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_rows + cols[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if SCALE_LAST:
            wt = w.to(x.dtype)
        else:
            g0 = (k0 + k_offset) // group_k
            edge = (g0 + 1) * group_k - k_offset - k0
            s0 = tl.load(s_rows + g0, mask=n_ok, other=0.0)
            s1 = tl.load(s_rows + tl.minimum(g0 + 1, G - 1), mask=n_ok, other=0.0)
            s = tl.where(rk[None, :] < edge, s0[:, None], s1[:, None])
            wt = (w.to(tl.float32) * s).to(x.dtype)
        if W_LEFT:
            acc = tl.dot(wt, tl.trans(x), acc)
        else:
            acc = tl.dot(x, tl.trans(wt), acc)
    if W_LEFT:
        if SCALE_LAST:
            acc = acc * tl.load(s_rows, mask=n_ok, other=0.0)[:, None]
        if HAS_BIAS:
            acc = acc + tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(o_ptr + rm.to(tl.int64)[None, :] * stride_om + rn[:, None], acc.to(o_ptr.dtype.element_ty),
                 mask=m_ok[None, :] & n_ok[:, None])
    else:
        if SCALE_LAST:
            acc = acc * tl.load(s_rows, mask=n_ok, other=0.0)[None, :]
        if HAS_BIAS:
            acc = acc + tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(o_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :], acc.to(o_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])


def prefill_config(M: int, N: int, K: int) -> dict:
    """The prefill kernel's tiles for an (M, N, K) product. Unmeasured so far: a square-ish tile, narrower where
    there would be fewer programs than SMs (a weight-bound product needs every SM reading)."""
    block_n = 128
    while block_n > 32 and triton.cdiv(M, 128) * triton.cdiv(N, block_n) < 132:
        block_n //= 2
    return dict(BLOCK_M=128 if M >= 128 else 64, BLOCK_N=block_n, BLOCK_K=128, GROUP_N=8, num_warps=8,
                num_stages=3, SCALE_LAST=None, W_LEFT=False)


def launch_prefill(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
                   bias: torch.Tensor | None, config: dict | None = None) -> torch.Tensor:
    """x2 (M, K) contiguous, bf16/fp16/fp32; returns (M, N) in x2's dtype. ``config`` overrides
    ``prefill_config`` (the benchmark's sweep); its SCALE_LAST None means: on for per-channel scales."""
    M, K = x2.shape
    N, G = weight.shape[0], scale.shape[1]
    cfg = dict(prefill_config(M, N, K), **(config or {}))
    block_k = max(16, min(cfg["BLOCK_K"], triton.next_power_of_2(K)))
    if G > 1:
        block_k = max(16, min(block_k, gemv_triton.pow2_at_most(group_k)))  # a step spans at most two groups
    scale_last = G == 1 if cfg["SCALE_LAST"] is None else bool(cfg["SCALE_LAST"]) and G == 1
    out = torch.empty((M, N), device=x2.device, dtype=x2.dtype)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    _prefill[grid](x2, weight, scale, bias if bias is not None else x2, out, M, N, K, G, group_k, k_offset,
                   x2.stride(0), weight.stride(0), scale.stride(0), out.stride(0), SCALE_LAST=scale_last,
                   HAS_BIAS=bias is not None, EVEN_K=K % block_k == 0, BLOCK_M=cfg["BLOCK_M"],
                   BLOCK_N=cfg["BLOCK_N"], BLOCK_K=block_k, GROUP_N=cfg["GROUP_N"], W_LEFT=bool(cfg["W_LEFT"]),
                   num_warps=cfg["num_warps"],
                   num_stages=cfg["num_stages"])
    return out


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
    if path == "prefill":
        if norm:
            raise ValueError(f"fp8_triton: the norm form runs at decode sizes (at most {DOT_MAX_M} rows), got {M}")
        return launch_prefill(x2, weight, scale, group_k, k_offset, bias, config)
    if path == "dequant":
        wd = torch.empty((N, K), device=x2.device, dtype=x2.dtype)
        block_k = 128 if G == 1 else min(128, gemv_triton.pow2_at_most(group_k))
        grid = (triton.cdiv(N, 32), triton.cdiv(K, block_k))
        _dequant[grid](weight, scale, wd, N, K, G, group_k, k_offset, weight.stride(0), scale.stride(0),
                       wd.stride(0), BLOCK_N=32, BLOCK_K=block_k, num_warps=4)
        return torch.nn.functional.linear(x2, wd, bias)
    return gemv_triton.launch(x2, weight, scale, group_k, k_offset, bias, config=config,
                              path={None: None, "gemv": "gemv", "skinny": "dot"}[path], x16=x16, **(norm or {}))
