"""Triton kernels for weight-only FP8 linear layers in the canonical form of ``hf_tp.kernels.fp8``.

Imported lazily (only where a kernel may run), so that CPU-only installs never touch Triton.

Two kernels, one launcher:

- ``_gemv`` (M == 1, decode at batch 1): every program owns BLOCK_N output rows and walks K; the weight tile
  is read once at full width and multiplied into a per-thread fp32 accumulator, reduced once at the end.
  Block scales are applied per K-group: the tile is loaded as (BLOCK_N, NSUB, SUBK) where SUBK = group_k, so a
  group's scale is one (BLOCK_N, NSUB) load per step instead of one gather per element.
- ``_skinny`` (2 <= M <= DOT_MAX_M): tl.dot on bf16/fp16 operands (the FP8 values convert exactly), fp32
  accumulate, 16 rows of x per program. Block scales multiply the per-step partial product (one group per step).
- ``_dequant`` (prefill, M > DOT_MAX_M): one pass writing W in x's dtype, then cuBLAS.

A variant of each (16-byte vectors summed in-thread before scaling in ``_gemv``; W @ x^T with the weight as the
register operand in ``_skinny``) measured slower on the H200 (2026-12-02: 98 vs 86 us and 152 vs 127 us per
8B layer at M = 1 and 8) and was dropped.

Scale handling is chosen per call from (group_k, k_offset, K) — see ``scale_mode``:
  0  one group spans all of K (per-channel / per-tensor): scale applied once, in the epilogue;
  1  K-steps never cross a group boundary (group_k % step == 0 and k_offset % step == 0): one scale per row
     and step;
  2  anything else (a tp slice that starts inside a block): a step covers at most two groups, each element
     takes its group's scale by a select.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gemv(x_ptr, w_ptr, s_ptr, b_ptr, o_ptr, N, K, G, group_k, k_offset, stride_wn, stride_sn,
          MODE: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
          BLOCK_N: tl.constexpr, NSUB: tl.constexpr, SUBK: tl.constexpr):
    pid_n = tl.program_id(0)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rj = tl.arange(0, NSUB)
    rc = tl.arange(0, SUBK)
    BLOCK_K: tl.constexpr = NSUB * SUBK
    kk = rj[:, None] * SUBK + rc[None, :]  # (NSUB, SUBK): column within the step
    n_ok = rn < N
    w_rows = w_ptr + rn[:, None, None].to(tl.int64) * stride_wn
    acc = tl.zeros((BLOCK_N, NSUB, SUBK), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + kk
        if EVEN_K:
            xv = tl.load(x_ptr + cols).to(tl.float32)
            if EVEN_N:
                w = tl.load(w_rows + cols[None, :, :])
            else:
                w = tl.load(w_rows + cols[None, :, :], mask=n_ok[:, None, None], other=0.0)
        else:
            k_ok = cols < K
            xv = tl.load(x_ptr + cols, mask=k_ok, other=0.0).to(tl.float32)
            w = tl.load(w_rows + cols[None, :, :], mask=n_ok[:, None, None] & k_ok[None, :, :], other=0.0)
        prod = w.to(tl.float32) * xv[None, :, :]
        if MODE == 0:
            acc += prod
        elif MODE == 1:
            # step = NSUB whole groups; group of sub-block j = (k0 + k_offset) // group_k + j
            g = (k0 + k_offset) // group_k + rj
            s = tl.load(s_ptr + rn[:, None].to(tl.int64) * stride_sn + g[None, :],
                        mask=n_ok[:, None] & (g[None, :] < G), other=0.0)
            acc += prod * s[:, :, None]
        else:
            # NSUB == 1 and SUBK <= group_k: the step holds at most two groups, split at column `edge`
            g0 = (k0 + k_offset) // group_k
            edge = (g0 + 1) * group_k - k_offset - k0
            g1 = tl.minimum(g0 + 1, G - 1)
            s_row = s_ptr + rn.to(tl.int64) * stride_sn
            s0 = tl.load(s_row + g0, mask=n_ok, other=0.0)
            s1 = tl.load(s_row + g1, mask=n_ok, other=0.0)
            s = tl.where(kk[None, :, :] < edge, s0[:, None, None], s1[:, None, None])
            acc += prod * s
    out = tl.sum(tl.sum(acc, axis=2), axis=1)
    if MODE == 0:
        out = out * tl.load(s_ptr + rn.to(tl.int64) * stride_sn, mask=n_ok, other=0.0)
    if HAS_BIAS:
        out += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(o_ptr + rn, out.to(o_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _skinny(x_ptr, w_ptr, s_ptr, b_ptr, o_ptr, M, N, K, G, group_k, k_offset,
            stride_xm, stride_wn, stride_sn, stride_om,
            MODE: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # program order: GROUP_M row-blocks share a weight tile while it is in L2 (prefill); decode has one row-block
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    x_rows = x_ptr + rm[:, None].to(tl.int64) * stride_xm
    w_rows = w_ptr + rn[:, None].to(tl.int64) * stride_wn
    s_row = s_ptr + rn.to(tl.int64) * stride_sn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + rk
        if EVEN_K:
            xv = tl.load(x_rows + cols[None, :], mask=m_ok[:, None], other=0.0)
            w = tl.load(w_rows + cols[None, :], mask=n_ok[:, None], other=0.0)
        else:
            k_ok = cols < K
            xv = tl.load(x_rows + cols[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_rows + cols[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if MODE == 2:
            g0 = (k0 + k_offset) // group_k
            edge = (g0 + 1) * group_k - k_offset - k0
            s0 = tl.load(s_row + g0, mask=n_ok, other=0.0)
            s1 = tl.load(s_row + tl.minimum(g0 + 1, G - 1), mask=n_ok, other=0.0)
            s = tl.where(rk[None, :] < edge, s0[:, None], s1[:, None])
            # the reference rounds W = w * s to x's dtype before the product: so does this mode
            wd = (w.to(tl.float32) * s).to(xv.dtype)
            acc += tl.dot(xv, tl.trans(wd))
        elif MODE == 1:
            s = tl.load(s_row + (k0 + k_offset) // group_k, mask=n_ok, other=0.0)
            acc += tl.dot(xv, tl.trans(w.to(xv.dtype))) * s[None, :]
        else:
            acc += tl.dot(xv, tl.trans(w.to(xv.dtype)))
    if MODE == 0:
        acc = acc * tl.load(s_row, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    o = o_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :]
    tl.store(o, acc.to(o_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


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


def _pow2_at_most(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


def scale_mode(G: int, group_k: int, k_offset: int, step: int) -> int:
    """Which scale handling a K-step of ``step`` columns needs (see the module doc)."""
    if G == 1:
        return 0
    if group_k % step == 0 and k_offset % step == 0:
        return 1
    return 2


# Configs: the fastest of benchmarks/fp8_gemm.py --sweep on one H200 for each of the Llama-3-8B decode GEMMs at
# tp-1 and tp-2 widths (benchmarks/RESULTS.md, 2026-12-02); the rules below reproduce each shape's winner.
def gemv_config(N: int, K: int) -> dict:
    # narrow row blocks (more programs in flight) win everywhere; long steps where N is small
    return dict(BLOCK_N=8, BLOCK_K=512 if N > 4096 else 1024, num_warps=8 if N <= 3072 else 4, num_stages=3)


def skinny_config(N: int, K: int) -> dict:
    if N >= 8192:
        return dict(BLOCK_N=32, BLOCK_K=128, num_warps=4, num_stages=3)
    if N > 4096:
        return dict(BLOCK_N=32, BLOCK_K=128, num_warps=4, num_stages=5)
    return dict(BLOCK_N=16, BLOCK_K=128, num_warps=2, num_stages=4)


# Rows per tl.dot program. Above DOT_MAX_M rows the launcher dequantizes the weight (one Triton pass) and
# calls cuBLAS: at M = 128 that measured 337 us per 8B layer against 673 us for this kernel with 128-row tiles
# (and 144 us for bf16: prefill is slower than bf16, see docs/fp8.md, "Speed"). At M = 16 this kernel took 128 us
# and the dequantize pass alone costs about 190 us (337 - 144); the crossover in between was not measured.
BLOCK_M = 16
DOT_MAX_M = 64


def launch(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
           bias: torch.Tensor | None, config: dict | None = None, path: str | None = None) -> torch.Tensor:
    """x2 (M, K) contiguous; returns (M, N) in x2's dtype. ``config``/``path`` override the measured choice
    (the benchmark's sweep uses them)."""
    M, K = x2.shape
    N, G = weight.shape[0], scale.shape[1]
    if path is None:
        path = "gemv" if M == 1 else "skinny" if M <= DOT_MAX_M else "dequant"
    if path == "dequant":
        wd = torch.empty((N, K), device=x2.device, dtype=x2.dtype)
        block_k = 128 if G == 1 else min(128, _pow2_at_most(group_k))
        grid = (triton.cdiv(N, 32), triton.cdiv(K, block_k))
        _dequant[grid](weight, scale, wd, N, K, G, group_k, k_offset, weight.stride(0), scale.stride(0),
                       wd.stride(0), BLOCK_N=32, BLOCK_K=block_k, num_warps=4)
        return torch.nn.functional.linear(x2, wd, bias)
    out = torch.empty((M, N), device=x2.device, dtype=x2.dtype)
    b = bias if bias is not None else out  # never read when HAS_BIAS is False
    if path == "gemv":
        cfg = dict(gemv_config(N, K), **(config or {}))
        block_k = min(cfg["BLOCK_K"], max(16, triton.next_power_of_2(K)))
        if G == 1:
            mode, nsub, subk = 0, 1, block_k
        elif group_k & (group_k - 1) == 0 and group_k <= block_k and k_offset % group_k == 0:
            # whole groups per step: one (BLOCK_N, NSUB) scale load per step
            mode, nsub, subk = 1, block_k // group_k, group_k
        else:
            # steps inside one group where the offset allows it, else at most two groups per step
            subk = min(block_k, _pow2_at_most(group_k))
            while subk > 16 and (group_k % subk or k_offset % subk):
                subk //= 2
            nsub, mode = 1, scale_mode(G, group_k, k_offset, subk)
            if mode == 2:
                subk = min(block_k, _pow2_at_most(group_k))
        grid = (triton.cdiv(N, cfg["BLOCK_N"]),)
        _gemv[grid](x2, weight, scale, b, out, N, K, G, group_k, k_offset, weight.stride(0), scale.stride(0),
                    MODE=mode, HAS_BIAS=bias is not None, EVEN_N=N % cfg["BLOCK_N"] == 0,
                    EVEN_K=K % (nsub * subk) == 0, BLOCK_N=cfg["BLOCK_N"], NSUB=nsub, SUBK=subk,
                    num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        return out
    cfg = dict(skinny_config(N, K), **(config or {}))
    block_m = cfg.pop("BLOCK_M", BLOCK_M)
    block_k = min(cfg["BLOCK_K"], max(16, triton.next_power_of_2(K)))
    if G > 1:
        block_k = min(block_k, _pow2_at_most(group_k))
    mode = scale_mode(G, group_k, k_offset, block_k)
    grid = (triton.cdiv(M, block_m) * triton.cdiv(N, cfg["BLOCK_N"]),)
    _skinny[grid](x2, weight, scale, b, out, M, N, K, G, group_k, k_offset,
                  x2.stride(0), weight.stride(0), scale.stride(0), out.stride(0),
                  MODE=mode, HAS_BIAS=bias is not None, EVEN_K=K % block_k == 0,
                  BLOCK_M=block_m, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=block_k, GROUP_M=8,
                  num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out
