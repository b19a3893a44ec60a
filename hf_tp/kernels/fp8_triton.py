"""Triton kernels for weight-only FP8 linear layers in the canonical form of ``hf_tp.kernels.fp8``.

Imported lazily (only where a kernel may run), so that CPU-only installs never touch Triton.

Two kernels, one launcher:

- ``_gemv`` (M == 1, decode at batch 1): every program owns BLOCK_N output rows and walks K; the weight tile
  is read once at full width and multiplied into a per-thread fp32 accumulator, reduced once at the end.
  Block scales are applied per K-group: the tile is loaded as (BLOCK_N, NSUB, SUBK) where SUBK = group_k, so a
  group's scale is one (BLOCK_N, NSUB) load per step instead of one gather per element.
- ``_skinny`` (M >= 2): tl.dot on bf16/fp16 operands (the FP8 values convert exactly), fp32 accumulate,
  BLOCK_M rows of x at a time. Block scales multiply the per-step partial product (one group per step).

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
          BLOCK_N: tl.constexpr, NSUB: tl.constexpr, SUBK: tl.constexpr, VEC: tl.constexpr):
    # The tile is (BLOCK_N, NSUB, SUBK // VEC, VEC): VEC = 16 FP8 values are one 16-byte load held by one thread,
    # so the sum over the last axis is in-thread adds, and a group's scale multiplies that partial sum once
    # instead of every element (the kernel is bound by instructions per byte, not only by bytes).
    NV: tl.constexpr = SUBK // VEC
    BLOCK_K: tl.constexpr = NSUB * SUBK
    pid_n = tl.program_id(0)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rj = tl.arange(0, NSUB)
    kk = (rj[:, None, None] * SUBK + tl.arange(0, NV)[None, :, None] * VEC
          + tl.arange(0, VEC)[None, None, :])  # (NSUB, NV, VEC): column within the step
    n_ok = rn < N
    w_rows = w_ptr + rn[:, None, None, None].to(tl.int64) * stride_wn
    s_row = s_ptr + rn.to(tl.int64) * stride_sn
    acc = tl.zeros((BLOCK_N, NSUB, NV), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + kk
        if EVEN_K:
            xv = tl.load(x_ptr + cols).to(tl.float32)
            if EVEN_N:
                w = tl.load(w_rows + cols[None, :, :, :])
            else:
                w = tl.load(w_rows + cols[None, :, :, :], mask=n_ok[:, None, None, None], other=0.0)
        else:
            k_ok = cols < K
            xv = tl.load(x_ptr + cols, mask=k_ok, other=0.0).to(tl.float32)
            w = tl.load(w_rows + cols[None, :, :, :], mask=n_ok[:, None, None, None] & k_ok[None, :, :, :],
                        other=0.0)
        prod = w.to(tl.float32) * xv[None, :, :, :]
        if MODE == 2:
            # NSUB == 1 and SUBK <= group_k: the step holds at most two groups, split at column `edge`
            g0 = (k0 + k_offset) // group_k
            edge = (g0 + 1) * group_k - k_offset - k0
            s0 = tl.load(s_row + g0, mask=n_ok, other=0.0)
            s1 = tl.load(s_row + tl.minimum(g0 + 1, G - 1), mask=n_ok, other=0.0)
            prod = prod * tl.where(kk[None, :, :, :] < edge, s0[:, None, None, None], s1[:, None, None, None])
        part = tl.sum(prod, axis=3)
        if MODE == 1:
            # the step is NSUB whole groups (or lies inside one): group of sub-block j = (k0 + k_offset) // group_k + j
            g = (k0 + k_offset) // group_k + rj
            s = tl.load(s_row[:, None] + g[None, :], mask=n_ok[:, None] & (g[None, :] < G), other=0.0)
            part = part * s[:, :, None]
        acc += part
    out = tl.sum(tl.sum(acc, axis=2), axis=1)
    if MODE == 0:
        out = out * tl.load(s_row, mask=n_ok, other=0.0)
    if HAS_BIAS:
        out += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(o_ptr + rn, out.to(o_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _skinny(x_ptr, w_ptr, s_ptr, b_ptr, o_ptr, M, N, K, G, group_k, k_offset,
            stride_xm, stride_wn, stride_sn, stride_om,
            MODE: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # Computes out^T = W @ x^T: the dequantized weight tile is the dot's first operand, which Hopper's wgmma
    # takes from registers (converted there, never staged through shared memory), and a few rows of x are its
    # narrow second operand (BLOCK_M down to 16): the "swap A and B" form of a skinny GEMM.
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
    x_cols = x_ptr + rm[None, :].to(tl.int64) * stride_xm
    w_rows = w_ptr + rn[:, None].to(tl.int64) * stride_wn
    s_row = s_ptr + rn.to(tl.int64) * stride_sn
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + rk
        if EVEN_K:
            xt = tl.load(x_cols + cols[:, None], mask=m_ok[None, :], other=0.0)
            w = tl.load(w_rows + cols[None, :], mask=n_ok[:, None], other=0.0)
        else:
            k_ok = cols < K
            xt = tl.load(x_cols + cols[:, None], mask=m_ok[None, :] & k_ok[:, None], other=0.0)
            w = tl.load(w_rows + cols[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if MODE == 0:
            wd = w.to(xt.dtype)
        else:
            # W = w * s rounded to x's dtype, as the reference; a step lies in one group (MODE 1) or two (MODE 2)
            g0 = (k0 + k_offset) // group_k
            s0 = tl.load(s_row + g0, mask=n_ok, other=0.0)
            if MODE == 1:
                s = s0[:, None]
            else:
                edge = (g0 + 1) * group_k - k_offset - k0
                s1 = tl.load(s_row + tl.minimum(g0 + 1, G - 1), mask=n_ok, other=0.0)
                s = tl.where(rk[None, :] < edge, s0[:, None], s1[:, None])
            wd = (w.to(tl.float32) * s).to(xt.dtype)
        acc += tl.dot(wd, xt)
    if MODE == 0:
        acc = acc * tl.load(s_row, mask=n_ok, other=0.0)[:, None]
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    o = o_ptr + rm[None, :].to(tl.int64) * stride_om + rn[:, None]
    tl.store(o, acc.to(o_ptr.dtype.element_ty), mask=n_ok[:, None] & m_ok[None, :])


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


# Decode configs, measured on one H200 (benchmarks/fp8_gemm.py --sweep, benchmarks/RESULTS.md 2026-12-02).
def gemv_config(N: int, K: int) -> dict:
    return dict(BLOCK_N=8, BLOCK_K=1024 if K != 4096 or N <= 4096 else 512, num_warps=4, num_stages=3)


SKINNY_CONFIG = {16: dict(BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=4),
                 32: dict(BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=4),
                 64: dict(BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=4),
                 128: dict(BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=4)}
# Above this many rows the launcher dequantizes once per call and hands the product to cuBLAS (prefill).
DOT_MAX_M = 256


def _block_m(M: int) -> int:
    return 16 if M <= 16 else 32 if M <= 32 else 64 if M <= 64 else 128


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
                    EVEN_K=K % (nsub * subk) == 0, BLOCK_N=cfg["BLOCK_N"], NSUB=nsub, SUBK=subk, VEC=16,
                    num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        return out
    cfg = dict(SKINNY_CONFIG[_block_m(M)], **(config or {}))
    block_m = cfg.pop("BLOCK_M", _block_m(M))
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
