"""Triton GEMMs for decode: y = x @ W^T with few rows of x (M = batch, 1..64), W (N, K) row-major.

At decode the weights are read once per token and the product is bound by that read: what matters is that
every SM streams its share of W at full width. Shared by the dense layers (bf16/fp16/fp32 weights,
hf_tp.kernels.decode_gemm) and the FP8 layers (hf_tp.kernels.fp8_triton), which differ only in the scale
handling.

Two kernels, one optional reduce (or the same sum folded into the GEMM), one launcher:

- ``_gemv_kernel`` (M == 1): program (n-block, k-split) owns BLOCK_N rows of W and walks its share of K in
  steps of BLOCK_K columns. The step is loaded as (BLOCK_N, NV, VEC) with VEC = one 16-byte vector per thread,
  multiplied by x in fp32 and summed over VEC inside the thread (no shuffles in the loop); the (BLOCK_N, NV)
  partial sums are reduced across threads once, after the loop.
- ``_gemv_dot_kernel`` (2 <= M <= 64, and M == 1 where the table says so): tl.dot on 16-row tiles of x (tensor
  cores; FP8 values convert exactly to x's 16-bit dtype; fp32 x multiplies in fp32, ``MMA`` 2), fp32
  accumulate, its loads software-pipelined (``num_stages``). With "X16" in the config (FP8 weights with
  per-channel or aligned block scales, bf16 x), it multiplies in fp16 instead, reading an fp16 copy of x
  (``MMA`` 1): FP8 widens to fp16 in one instruction per pair, to bf16 only through fp32 at the GPU's slow
  conversion rate. A tile that comes out inf or NaN is computed again from bf16 x in fp32.
- ``_gemv_split_reduce``: with a split of K (``SPLIT`` > 1, for shapes with too few row blocks to fill the GPU),
  each split writes its fp32 partial sums to a workspace (S, M, N) and this kernel adds them in split order
  and applies the epilogue. No atomics: the same inputs give the same bits every run. With ``FOLD_SPLIT`` the
  last split program of each output block does the same sum itself (``_fold_splits``, one atomic counter per
  block), in the same order: the same bits, one launch less.

Both kernels can also make x themselves: silu(gate) * up of a [gate | up] row (``GLU``, dense weights), or an
RMSNorm of h = x (+ a residual) (``NORM``; one program per row block writes h). Where one program holds all of K
and nothing else reads the normalized x, the products take h times the norm weight and the statistic is summed
beside them, applied to the sums at the end (``RSTD_LAST``: 1 / rms is one scalar per row); otherwise each
program computes its rows' statistic over the whole row first (``_rows_rstd``), and with ``KEEP_X`` the first
row block writes the normalized x;
and ``GLU_OUT`` makes silu(gate) * up of their own
[gate | up] outputs in the epilogue. hf_tp/kernels/prologue_pass.py rewrites the decode step's graph to them.

Scale modes (``SCALE``), for W[n, k] = weight[n, k] * scale[n, (k + k_offset) // group_k] (the canonical FP8
form of hf_tp.kernels.fp8; dense weights use 0):
  0  no scale;
  1  one group spans all of K (per-channel / per-tensor): applied once to the sum, in the epilogue;
  2  groups aligned to the kernel's unit (the 16-byte vector for the GEMV, the K-step for tl.dot): one scale
     per unit, applied to its partial sum;
  3  anything else (a tp slice starting inside a group at an odd column): the GEMV scales every element; the
     tl.dot kernel's steps (at most one group long) hold at most two groups and dequantize W in the tile.

Configs (BLOCK_N, BLOCK_K, num_warps, num_stages, SPLIT) come from ``config_for``: the table of configs
measured fastest on an H200 for the Llama-3-8B and qwen3-moe-mini decode shapes at tp 1/2/4/8
(hf_tp/kernels/gemv_table.py, written by benchmarks/fp8_gemm.py --sweep), and a rule for other shapes. Fixed
rather than autotuned at run time, so that a shape always runs the same config: results are the same bits in
every process, not only within one.

The rule (``rule_config``) repeats the table's most frequent winners, so that a model whose shapes were never
swept starts from configs measured on similar ones; ``benchmarks/fp8_gemm.py --model`` sweeps a model's shapes
and times the rule against the sweep's best (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import counters as counter_pool
from . import pdl as pdl_launch
from .gemv_table import DEVICE_TABLES
from .gemv_table import TABLE as _MEASURED
from .sizes import cdiv, next_power_of_2


@triton.jit
def _first(a, b):
    return a


@triton.jit
def _silu_mul(gate, up):
    """silu(gate) * up as the unfused step computes it: silu in fp32 (gate / (1 + exp(-gate))) rounded to the
    activations' dtype, the product in fp32 rounded again (``glu_reference``)."""
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
    return (act.to(tl.float32) * up.to(tl.float32)).to(gate.dtype)


@triton.jit
def _load_x(x_ptrs, K, mask, GLU: tl.constexpr, MASKED: tl.constexpr):
    """A tile of x (``mask`` read only if ``MASKED``); with ``GLU`` x is silu(gate) * up of a [gate | up] row
    (gate at column k, up at K + k), made here from the two halves instead of by a kernel before the GEMM."""
    if MASKED:
        xv = tl.load(x_ptrs, mask=mask, other=0.0)
        if GLU:
            xv = _silu_mul(xv, tl.load(x_ptrs + K, mask=mask, other=0.0))
    else:
        xv = tl.load(x_ptrs)
        if GLU:
            xv = _silu_mul(xv, tl.load(x_ptrs + K))
    return xv


@triton.jit
def _glu_rows(pid_n, N, BLOCK_N: tl.constexpr, GLU_OUT: tl.constexpr):
    """The weight rows of a program's BLOCK_N-row tile and their mask. Plain: rows pid_n * BLOCK_N + i. With
    ``GLU_OUT`` (W is [gate | up], N = 2I rows), tile row 2j is gate row p and 2j + 1 up row p, for the output
    column p = pid_n * BLOCK_N / 2 + j: each program holds both halves of its outputs (``_glu_store``)."""
    if GLU_OUT:
        c = tl.arange(0, BLOCK_N)
        cols_out = pid_n * (BLOCK_N // 2) + c // 2
        return (c % 2) * (N // 2) + cols_out, cols_out < N // 2
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return rn, rn < N


@triton.jit
def _glu_store(o_ptr, acc, pid_n, N, rm, m_ok, stride_om, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               o16_ptr=None, F16: tl.constexpr = False):
    """``GLU_OUT``'s epilogue: the tile's sums, in ``_glu_rows``' order, rounded to the output dtype as the
    unfused GEMM rounds [gate | up]; then silu(gate) * up as the unfused step computes it (``_silu_mul``), stored
    at the I = N / 2 output columns. ``acc`` is (BLOCK_N,) with BLOCK_M 0 (the GEMV: ``rm`` unused) or
    (BLOCK_M, BLOCK_N) (tl.dot, rows ``rm``). With ``F16`` the activation is also stored in fp16 at ``o16_ptr``
    (same layout): the fp16 copy of x that an FP8 down projection's fp16 form reads (``GLU_OUT_F16``), rounded
    from the stored value as the unfused step's copy is."""
    v = acc.to(o_ptr.dtype.element_ty)
    cols = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    if BLOCK_M == 0:
        gate, up = tl.split(tl.reshape(v, (BLOCK_N // 2, 2)))
        offs, ok = cols, cols < N // 2
    else:
        gate, up = tl.split(tl.reshape(v, (BLOCK_M, BLOCK_N // 2, 2)))
        offs = rm[:, None].to(tl.int64) * stride_om + cols[None, :]
        ok = m_ok[:, None] & (cols < N // 2)[None, :]
    act = _silu_mul(gate, up)
    tl.store(o_ptr + offs, act, mask=ok)
    if F16:
        tl.store(o16_ptr + offs, act.to(tl.float16), mask=ok)


@triton.jit
def _rows_rstd(x_ptr, r_ptr, h_ptr, rows, rows_ok, stride, K, eps, store_h, NORM: tl.constexpr,
               BLOCK: tl.constexpr):
    """``NORM``'s statistic: 1 / sqrt(mean(h^2) + eps) of each of ``rows`` (R,) of h, over all K columns, in fp32,
    where h is x (NORM 1) or x + r rounded to x's dtype (NORM 2, the residual add before the norm, as eager
    rounds it). With NORM 2 and ``store_h`` the program also writes those rows of h (the next residual): one
    program per row block does, the others read the same rows only for the statistic (from L2; every program
    needs the whole row's statistic before its first product)."""
    acc = tl.zeros((rows.shape[0], BLOCK), dtype=tl.float32)
    base = rows[:, None].to(tl.int64) * stride
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        ok = rows_ok[:, None] & (offs < K)[None, :]
        h = tl.load(x_ptr + base + offs[None, :], mask=ok, other=0.0)
        if NORM == 2:
            h = (h.to(tl.float32) + tl.load(r_ptr + base + offs[None, :], mask=ok, other=0.0).to(tl.float32)
                 ).to(h.dtype)
            if store_h:
                tl.store(h_ptr + base + offs[None, :], h, mask=ok)
        hf = h.to(tl.float32)
        acc += hf * hf
    return tl.math.rsqrt(tl.sum(acc, axis=1) / K + eps)


@triton.jit
def _rms_normalized(h, nw, rstd):
    """RMSNorm's output as Llama-style models compute it (``norm_reference``): h in fp32 times its row's
    ``rstd``, rounded to h's dtype, times the norm weight ``nw``, rounded again."""
    n = (h.to(tl.float32) * rstd).to(h.dtype)
    return (nw.to(tl.float32) * n.to(tl.float32)).to(h.dtype)


@triton.jit
def _norm_step_rstd_last(h, nw, sq, h_ptrs, h_mask, store_h):
    """``RSTD_LAST``'s work in one step of the K loop: h (x + r already rounded as eager rounds it) written as the
    next residual where ``store_h``, its squares added to ``sq`` (fp32, h's tile shape), and returned times the
    norm weight in fp32. Since RMSNorm's 1 / rms is one scalar per row, rstd * (W @ (h * nw)) is the GEMM of the
    normalized x: the statistic is summed alongside the products and applied to the sums in the epilogue, so
    the loop needs nothing before its first weights arrive (``_rows_rstd`` needs the whole row first)."""
    if store_h:
        tl.store(h_ptrs, h, mask=h_mask)
    hf = h.to(tl.float32)
    return hf * nw.to(tl.float32), sq + hf * hf


@triton.jit
def _gemv_load(x_ptr, x_rows, w_rows, s_rows, k0, kk, kv, n_ok, K, G, group_k, k_offset,
               SCALE: tl.constexpr, GROUP_SHIFT: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
               GLU: tl.constexpr = False, r_ptr=None, nw_ptr=None, NORM: tl.constexpr = 0):
    """One step's x, W and scales. x and the scales are loaded through pointers of W's tile shape (the same
    address for every row, and for a vector's scale every column): they get W's register layout, so the loop
    needs no layout conversion through shared memory (at their own shapes they would, with a barrier per step),
    and the compiler merges the repeated loads. With ``NORM``, x is h (NORM 2: x + r rounded) and ``nwv`` the
    norm weight's tile (else x again, unused): the loop normalizes h once the statistic is known (``_rows_rstd``),
    so that the first step's loads are in flight while the program computes it."""
    cols = k0 + kk
    x_ptrs = x_ptr + x_rows + cols[None, :, :]
    w_ptrs = w_rows + cols[None, :, :]
    if EVEN_K:
        xv = tl.load(x_ptrs)
        if GLU:
            xv = _silu_mul(xv, tl.load(x_ptrs + K))
        if NORM == 2:
            xv = (xv.to(tl.float32) + tl.load(r_ptr + x_rows + cols[None, :, :]).to(tl.float32)).to(xv.dtype)
        if EVEN_N:
            w = tl.load(w_ptrs)
        else:
            w = tl.load(w_ptrs, mask=n_ok[:, None, None], other=0.0)
    else:
        k_ok = cols < K
        xv = tl.load(x_ptrs, mask=k_ok[None, :, :], other=0.0)
        if GLU:
            xv = _silu_mul(xv, tl.load(x_ptrs + K, mask=k_ok[None, :, :], other=0.0))
        if NORM == 2:
            xv = (xv.to(tl.float32) + tl.load(r_ptr + x_rows + cols[None, :, :], mask=k_ok[None, :, :],
                                              other=0.0).to(tl.float32)).to(xv.dtype)
        w = tl.load(w_ptrs, mask=n_ok[:, None, None] & k_ok[None, :, :], other=0.0)
    nwv = xv  # unused without NORM
    if NORM:
        if EVEN_K:
            nwv = tl.load(nw_ptr + x_rows + cols[None, :, :])
        else:
            nwv = tl.load(nw_ptr + x_rows + cols[None, :, :], mask=(cols < K)[None, :, :], other=0.0)
    if SCALE == 2:
        if GROUP_SHIFT >= 0:
            g = (k0 + kv + k_offset) >> GROUP_SHIFT
        else:
            g = (k0 + kv + k_offset) // group_k
        s = tl.load(s_rows + g[None, :, :], mask=n_ok[:, None, None] & (g < G)[None, :, :], other=0.0)
    elif SCALE == 3:
        g = (cols + k_offset) // group_k
        s = tl.load(s_rows + g[None, :, :], mask=n_ok[:, None, None] & (g < G)[None, :, :], other=0.0)
    else:
        s = xv  # unused
    return xv, w, s, nwv


@triton.jit
def _gemv_math(acc3, xv, w, s, SCALE: tl.constexpr):
    """One FMA per element into the (BLOCK_N, NV, VEC) accumulator, reduced after the loop. Mode 2: x times the
    vector's group scale first (one scale load per vector). Mode 3: every element scaled.
    (Summing each vector inside the thread and scaling the sum, into a (BLOCK_N, NV) accumulator, takes fewer
    instructions, but ptxas then issues a row's loads only after the previous row's math: one DRAM latency per
    row per step, seen in the SASS.)"""
    if SCALE == 2:
        s1 = tl.reduce(s, 2, _first, keep_dims=True)
        acc3 += w.to(tl.float32) * (xv.to(tl.float32) * s1)
    elif SCALE == 3:
        acc3 += (w.to(tl.float32) * s) * xv.to(tl.float32)
    else:
        acc3 += w.to(tl.float32) * xv.to(tl.float32)
    return acc3


@triton.jit
def _after_previous_kernel(PDL: tl.constexpr):
    """With PDL (launched with programmatic dependent launch, hf_tp.kernels.pdl): wait until the kernel before it
    on the stream has finished and its writes are visible, before this kernel reads or writes anything; then let
    the next such kernel be placed on the SMs. Without PDL, nothing."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def prefetch_l2(ptrs):
    """Ask L2 for the 128-byte lines holding ``ptrs`` (a tensor of pointers), without waiting for them."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def _prefetch_weight_rows(w_ptr, rn, N, stride_wn, k_lo, k_hi, LINES: tl.constexpr, LINE: tl.constexpr):
    """Ask L2 for the first LINES lines (LINE elements, 128 bytes, each) of this program's weight rows within its
    K range, without waiting for them. Called before the PDL wait: the weights are written by no kernel of the
    step, so their read can start while the kernel before is still finishing (the DRAM is idle then: those
    kernels are short and latency-bound), and the loop's first loads find them in L2. Rows past N and lines
    past the range ask for a line already asked for."""
    rows = tl.minimum(rn, N - 1)
    cols = k_lo + tl.minimum(tl.arange(0, LINES) * LINE, k_hi - k_lo - 1)
    prefetch_l2(w_ptr + rows[:, None].to(tl.int64) * stride_wn + cols[None, :])


@triton.jit
def _gemv_f16_sums(x_ptr, x16_ptr, x_rows, w_rows, s_rows, k_lo, k_hi, kk, kv, n_ok, K, G, group_k, k_offset,
                   EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, NV: tl.constexpr,
                   VEC: tl.constexpr, STAGES: tl.constexpr):
    """The GEMV's sums for FP8 weights with one scale per row (applied after) and bf16 activations, multiplied and
    summed in fp16 from x's fp16 copy ``x16_ptr`` (the "X16" form of a GEMV config): FP8 widens to fp16 in one
    instruction per pair and the products and sums are packed fp16 FMAs, about 1.9 instructions per weight in
    the sm_90 build against 5 for fp32 sums (where the H200's GEMV is bound by instructions, not by DRAM). Each
    fp16 accumulator holds one column of every BLOCK_K-wide step, so it sums K / BLOCK_K products (4 for K 4096
    at 1024 columns a step) before the fp32 sum across the tile: about 2^-12 relative error per sum, under the
    bf16 output's rounding (2^-9). A tile whose sums came out inf or NaN (a product or sum above fp16's 65504, or
    |x| above it, inf in the copy) is computed again in fp32 from the bf16 x, so the form never changes a
    result's range."""
    acc16 = tl.zeros((BLOCK_N, NV, VEC), dtype=tl.float16)
    BLOCK_K: tl.constexpr = NV * VEC
    if STAGES == 0:  # the next step's loads issued before this step's math, in registers (as the fp32 loop)
        k_last = k_lo + ((k_hi - k_lo - 1) // BLOCK_K) * BLOCK_K
        xv, w, s, nwv = _gemv_load(x16_ptr, x_rows, w_rows, s_rows, k_lo, kk, kv, n_ok, K, G, group_k, k_offset,
                                   1, -1, EVEN_N, EVEN_K)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            xn, wn, sn, nwn = _gemv_load(x16_ptr, x_rows, w_rows, s_rows, tl.minimum(k0 + BLOCK_K, k_last), kk, kv,
                                         n_ok, K, G, group_k, k_offset, 1, -1, EVEN_N, EVEN_K)
            acc16 += w.to(tl.float16) * xv
            xv, w = xn, wn
    else:
        for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):
            xv, w, s, nwv = _gemv_load(x16_ptr, x_rows, w_rows, s_rows, k0, kk, kv, n_ok, K, G, group_k, k_offset,
                                       1, -1, EVEN_N, EVEN_K)
            acc16 += w.to(tl.float16) * xv
    out = tl.sum(tl.sum(acc16.to(tl.float32), axis=2), axis=1)
    bad = tl.max(((out != out) | (tl.abs(out) > 3.0e38)).to(tl.int32), axis=0)
    if bad != 0:
        acc3 = tl.zeros((BLOCK_N, NV, VEC), dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            xb, wb, sb, nb = _gemv_load(x_ptr, x_rows, w_rows, s_rows, k0, kk, kv, n_ok, K, G, group_k, k_offset,
                                        1, -1, EVEN_N, EVEN_K)
            acc3 = _gemv_math(acc3, xb, wb, sb, 1)
        out = tl.sum(tl.sum(acc3, axis=2), axis=1)
    return out


@triton.jit
def _gemv_kernel(x_ptr, x16_ptr, w_ptr, s_ptr, b_ptr, o_ptr, f_ptr, c_ptr, r_ptr, nw_ptr, h_ptr, xn_ptr, eps, N, K, G,
                 group_k,
                 k_offset, k_split, stride_wn, stride_sn, stride_os, SCALE: tl.constexpr, GROUP_SHIFT: tl.constexpr,
                 SPLIT: tl.constexpr, FOLD: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr,
                 EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, NV: tl.constexpr, VEC: tl.constexpr,
                 STAGES: tl.constexpr, PDL: tl.constexpr = False, PREFETCH: tl.constexpr = 0, LINE: tl.constexpr = 64,
                 GLU: tl.constexpr = False, GLU_OUT: tl.constexpr = False, NORM: tl.constexpr = 0,
                 NORM_BLOCK: tl.constexpr = 16, KEEP_X: tl.constexpr = False, RSTD_LAST: tl.constexpr = False,
                 GLU_OUT_F16: tl.constexpr = False, F16: tl.constexpr = False):
    BLOCK_K: tl.constexpr = NV * VEC
    tl.static_assert(not F16 or (SCALE == 1 and not NORM and not GLU), "F16 takes FP8 weights per channel, plain x")
    tl.static_assert(not (GLU_OUT and SPLIT), "GLU_OUT needs the whole sum in one program")
    tl.static_assert(GLU_OUT or not GLU_OUT_F16, "GLU_OUT_F16 is GLU_OUT's fp16 copy")
    tl.static_assert(not (NORM and GLU), "NORM takes a plain x")
    tl.static_assert(not (RSTD_LAST and SPLIT), "RSTD_LAST needs the whole of K in one program")
    tl.static_assert(not (RSTD_LAST and KEEP_X), "RSTD_LAST writes no normalized x")
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rn, n_ok = _glu_rows(pid_n, N, BLOCK_N, GLU_OUT)
    k_lo = pid_s * k_split
    k_hi = tl.minimum(k_lo + k_split, K)
    if PREFETCH > 0:
        _prefetch_weight_rows(w_ptr, rn, N, stride_wn, k_lo, k_hi, PREFETCH, LINE)
    _after_previous_kernel(PDL)
    rv = tl.arange(0, NV)
    kk = rv[:, None] * VEC + tl.arange(0, VEC)[None, :]  # (NV, VEC): column within the step
    kv = tl.broadcast_to(rv[:, None] * VEC, (NV, VEC))  # the column its vector starts at, same across the vector
    w_rows = w_ptr + rn[:, None, None].to(tl.int64) * stride_wn
    x_rows = tl.zeros((BLOCK_N, 1, 1), dtype=tl.int32)
    s_rows = s_ptr + rn[:, None, None].to(tl.int64) * stride_sn
    acc3 = tl.zeros((BLOCK_N, NV, VEC), dtype=tl.float32)
    sq3 = tl.zeros((BLOCK_N, NV, VEC), dtype=tl.float32)  # RSTD_LAST: h's squares (every row the same)
    first_row = (tl.arange(0, BLOCK_N) == 0)[:, None, None]
    store_h = (NORM == 2) & (pid_n == 0)  # RSTD_LAST: the first row block writes h, the next residual
    if F16:
        out = _gemv_f16_sums(x_ptr, x16_ptr, x_rows, w_rows, s_rows, k_lo, k_hi, kk, kv, n_ok, K, G, group_k,
                             k_offset, EVEN_N, EVEN_K, BLOCK_N, NV, VEC, STAGES)
    elif STAGES == 0 or (NORM and not RSTD_LAST):
        # the next step's loads issued before this step's math, in registers: every row's loads of a step are
        # in flight together (without this the compiler may issue a row's loads only after the previous row's
        # math, one DRAM latency per row)
        # (the last step re-reads itself, from cache, instead of a masked load: masks cost instructions)
        k_last = k_lo + ((k_hi - k_lo - 1) // BLOCK_K) * BLOCK_K
        # (with NORM the loop always has this form: the first step's weights are in flight while the statistic
        # is computed)
        xv, w, s, nwv = _gemv_load(x_ptr, x_rows, w_rows, s_rows, k_lo, kk, kv, n_ok, K, G, group_k, k_offset,
                                   SCALE, GROUP_SHIFT, EVEN_N, EVEN_K, GLU, r_ptr, nw_ptr, NORM)
        rstd = 1.0
        if NORM and not RSTD_LAST:
            rstd = tl.sum(_rows_rstd(x_ptr, r_ptr, h_ptr, tl.arange(0, 1), tl.arange(0, 1) < 1, 0, K, eps,
                                     (pid_n == 0) & (pid_s == 0), NORM, NORM_BLOCK), axis=0)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            xn, wn, sn, nwn = _gemv_load(x_ptr, x_rows, w_rows, s_rows, tl.minimum(k0 + BLOCK_K, k_last), kk, kv,
                                         n_ok, K, G, group_k, k_offset, SCALE, GROUP_SHIFT, EVEN_N, EVEN_K, GLU,
                                         r_ptr, nw_ptr, NORM)
            if RSTD_LAST:
                xv, sq3 = _norm_step_rstd_last(xv, nwv, sq3, h_ptr + x_rows + k0 + kk[None, :, :], first_row
                                               & (k0 + kk[None, :, :] < K), store_h)
            elif NORM:
                xv = _rms_normalized(xv, nwv, rstd)
                if KEEP_X:  # the normalized x for its other readers: the tile's first row, by the first row block
                    if pid_n == 0:
                        cols = k0 + kk[None, :, :]
                        tl.store(xn_ptr + x_rows + cols, xv, mask=first_row & (cols < K))
            acc3 = _gemv_math(acc3, xv, w, s, SCALE)
            xv, w, s, nwv = xn, wn, sn, nwn
    else:
        # STAGES > 1 asks Triton to software-pipeline the loads through shared memory, which it does not do on
        # its own for a loop without tl.dot
        for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):
            xv, w, s, nwv = _gemv_load(x_ptr, x_rows, w_rows, s_rows, k0, kk, kv, n_ok, K, G, group_k, k_offset,
                                       SCALE, GROUP_SHIFT, EVEN_N, EVEN_K, GLU, r_ptr, nw_ptr, NORM)
            if RSTD_LAST:
                xv, sq3 = _norm_step_rstd_last(xv, nwv, sq3, h_ptr + x_rows + k0 + kk[None, :, :], first_row
                                               & (k0 + kk[None, :, :] < K), store_h)
            acc3 = _gemv_math(acc3, xv, w, s, SCALE)
    if not F16:
        out = tl.sum(tl.sum(acc3, axis=2), axis=1)
    if RSTD_LAST:  # every row of sq3 holds the same squares: the max picks one row's sum exactly
        out = out * tl.math.rsqrt(tl.max(tl.sum(tl.sum(sq3, axis=2), axis=1), axis=0) / K + eps)
    if SPLIT:
        tl.store(o_ptr + pid_s * stride_os + rn, out, mask=n_ok)
        if FOLD:
            _fold_splits(o_ptr, s_ptr, b_ptr, f_ptr, c_ptr + pid_n, tl.num_programs(1), rn, n_ok, rn, n_ok,
                         stride_os, stride_sn, SCALE, HAS_BIAS)
    else:
        if SCALE == 1:
            out = out * tl.load(s_ptr + rn.to(tl.int64) * stride_sn, mask=n_ok, other=0.0)
        if HAS_BIAS:
            out += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        if GLU_OUT:
            _glu_store(o_ptr, out, pid_n, N, pid_n, n_ok, 0, 0, BLOCK_N, f_ptr, GLU_OUT_F16)
        else:
            tl.store(o_ptr + rn, out.to(o_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _gemv_dot_steps(acc, x_rows, w_rows, s_rows, m_ok, n_ok, rk, k_lo, k_hi, K, G, group_k, k_offset,
                    SCALE: tl.constexpr, EVEN_K: tl.constexpr, MMA: tl.constexpr, BLOCK_K: tl.constexpr,
                    GLU: tl.constexpr = False, r_rows=None, nw_ptr=None, rstd=1.0, NORM: tl.constexpr = 0,
                    xn_rows=None, store_x=False, KEEP_X: tl.constexpr = False, RSTD_LAST: tl.constexpr = False,
                    h_rows=None, store_h=False):
    """The tl.dot kernel's K loop, in the operand dtype ``MMA`` says: 0 x's own dtype, 1 fp16 (FP8 weights
    with an fp16 copy of bf16 activations, below), 2 fp32 with IEEE products (fp32 activations; the fp16 form's
    fallback). With ``NORM``, x is normalized as it is loaded (``_rms_normalized``, each row by its ``rstd``);
    with ``KEEP_X`` and ``store_x`` also written to ``xn_rows``. With ``RSTD_LAST`` x is h times the norm weight
    instead, h written to ``h_rows`` where ``store_h``, and the squares of h summed: returns (acc, their sums
    per row); otherwise (acc, zeros)."""
    sq = tl.zeros((acc.shape[0], BLOCK_K), dtype=tl.float32)
    zero_rows = tl.zeros_like(m_ok.to(tl.int32))[:, None]
    for k0 in range(k_lo, k_hi, BLOCK_K):
        cols = k0 + rk
        if EVEN_K:
            x_ok = m_ok[:, None]
        else:
            k_ok = cols < K
            x_ok = m_ok[:, None] & k_ok[None, :]
        xv = _load_x(x_rows + cols[None, :], K, x_ok, GLU, True)
        if NORM == 2:
            xv = (xv.to(tl.float32) + tl.load(r_rows + cols[None, :], mask=x_ok, other=0.0).to(tl.float32)
                  ).to(xv.dtype)
        if RSTD_LAST:
            # the norm weight loaded at x's tile shape (every row the same address): a (1, BLOCK_K) tile is a
            # 2-byte load per thread, which the pipeliner does not prefetch (one L2 latency per step). (Not in
            # the statistic-first form: with FP8 in fp16 it spilled there, 255 registers and 24 bytes of stack.)
            if EVEN_K:
                nw = tl.load(nw_ptr + zero_rows + cols[None, :])
            else:
                nw = tl.load(nw_ptr + zero_rows + cols[None, :], mask=(cols < K)[None, :], other=0.0)
            xw, sq = _norm_step_rstd_last(xv, nw, sq, h_rows + cols[None, :], x_ok, store_h)
            xv = xw.to(xv.dtype)
        elif NORM:
            if MMA == 0:  # at x's tile shape, so that the pipeliner prefetches it (see RSTD_LAST above)
                nw = tl.load(nw_ptr + zero_rows + cols[None, :], mask=(cols < K)[None, :], other=0.0)
            else:  # FP8 in fp16: at the tile shape it spilled (255 registers, built for sm_90)
                nw = tl.load(nw_ptr + cols[None, :], mask=cols[None, :] < K, other=0.0)
            xv = _rms_normalized(xv, nw, rstd[:, None])
        if NORM:
            if KEEP_X:
                if store_x:
                    tl.store(xn_rows + cols[None, :], xv, mask=x_ok)
            if MMA == 1:  # the fp16 form: the normalized bf16 x in fp16 (exact in its range; see the kernel)
                xv = xv.to(tl.float16)
        if EVEN_K:
            w = tl.load(w_rows + cols[None, :], mask=n_ok[:, None], other=0.0)
        else:
            w = tl.load(w_rows + cols[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if MMA == 2:
            xv = xv.to(tl.float32)
        if SCALE == 3:
            # the step (at most one group long) holds at most two groups, split at column `edge`; W is
            # dequantized in the tile and rounded to x's dtype, as the reference rounds it
            g0 = (k0 + k_offset) // group_k
            edge = (g0 + 1) * group_k - k_offset - k0
            s0 = tl.load(s_rows + g0, mask=n_ok, other=0.0)
            s1 = tl.load(s_rows + tl.minimum(g0 + 1, G - 1), mask=n_ok, other=0.0)
            s = tl.where(rk[None, :] < edge, s0[:, None], s1[:, None])
            wt = tl.trans((w.to(tl.float32) * s).to(xv.dtype))
        else:
            wt = tl.trans(w.to(xv.dtype))
        if SCALE == 2:  # the step lies inside one group: scale its product
            s = tl.load(s_rows + (k0 + k_offset) // group_k, mask=n_ok, other=0.0)
            if MMA == 2:
                acc += tl.dot(xv, wt, input_precision="ieee") * s[None, :]
            else:
                acc += tl.dot(xv, wt) * s[None, :]
        else:
            if MMA == 2:
                acc = tl.dot(xv, wt, acc, input_precision="ieee")
            else:
                acc = tl.dot(xv, wt, acc)
    return acc, tl.sum(sq, axis=1)


@triton.jit
def _gemv_dot_kernel(x_ptr, x16_ptr, w_ptr, s_ptr, b_ptr, o_ptr, f_ptr, c_ptr, r_ptr, nw_ptr, h_ptr, xn_ptr, eps, M,
                     N, K, G, group_k, k_offset, k_split, stride_xm, stride_wn, stride_sn, stride_os, stride_om,
                     SCALE: tl.constexpr, SPLIT: tl.constexpr, FOLD: tl.constexpr, HAS_BIAS: tl.constexpr,
                     EVEN_K: tl.constexpr, MMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, PDL: tl.constexpr = False, PREFETCH: tl.constexpr = 0,
                     LINE: tl.constexpr = 64, GLU: tl.constexpr = False, GLU_OUT: tl.constexpr = False,
                     NORM: tl.constexpr = 0, NORM_ROWS: tl.constexpr = 1, NORM_BLOCK: tl.constexpr = 16,
                     KEEP_X: tl.constexpr = False, RSTD_LAST: tl.constexpr = False,
                     GLU_OUT_F16: tl.constexpr = False):
    tl.static_assert(not (GLU_OUT and SPLIT), "GLU_OUT needs the whole sum in one program")
    tl.static_assert(GLU_OUT or not GLU_OUT_F16, "GLU_OUT_F16 is GLU_OUT's fp16 copy")
    tl.static_assert(not (NORM and GLU), "NORM takes a plain x")
    tl.static_assert(not (RSTD_LAST and SPLIT), "RSTD_LAST needs the whole of K in one program")
    tl.static_assert(not (RSTD_LAST and KEEP_X), "RSTD_LAST writes no normalized x")
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn, n_ok = _glu_rows(pid_n, N, BLOCK_N, GLU_OUT)
    k_lo = pid_s * k_split
    k_hi = tl.minimum(k_lo + k_split, K)
    if PREFETCH > 0:
        _prefetch_weight_rows(w_ptr, rn, N, stride_wn, k_lo, k_hi, PREFETCH, LINE)
    _after_previous_kernel(PDL)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    x_rows = x_ptr + rm[:, None].to(tl.int64) * stride_xm
    w_rows = w_ptr + rn[:, None].to(tl.int64) * stride_wn
    s_rows = s_ptr + rn.to(tl.int64) * stride_sn
    if MMA == 1 and not NORM:  # the activations' fp16 copy (same strides); with NORM made from h in the steps
        steps_rows = x16_ptr + rm[:, None].to(tl.int64) * stride_xm
    else:
        steps_rows = x_rows
    rstd = tl.full((NORM_ROWS,), 1.0, dtype=tl.float32)
    if NORM and not RSTD_LAST:  # NORM_ROWS: 1 when x has one row (M == 1), else BLOCK_M
        norm_rows = pid_m * BLOCK_M + tl.arange(0, NORM_ROWS)
        rstd = _rows_rstd(x_ptr, r_ptr, h_ptr, norm_rows, norm_rows < M, stride_xm, K, eps,
                          (pid_n == 0) & (pid_s == 0), NORM, NORM_BLOCK)
    acc, sq = _gemv_dot_steps(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), steps_rows, w_rows, s_rows, m_ok,
                              n_ok, rk, k_lo, k_hi, K, G, group_k, k_offset, SCALE, EVEN_K, MMA, BLOCK_K, GLU,
                              r_ptr + rm[:, None].to(tl.int64) * stride_xm, nw_ptr, rstd, NORM,
                              xn_ptr + rm[:, None].to(tl.int64) * stride_xm, pid_n == 0, KEEP_X, RSTD_LAST,
                              h_ptr + rm[:, None].to(tl.int64) * stride_xm, (NORM == 2) & (pid_n == 0))
    if MMA == 1:
        # fp16 holds every bf16 value from 2^-14 to 65504 exactly (11 significant bits against 8), so the products
        # are the bf16 kernel's (of a copy made from bf16 x; see fp8.fp8_linear); a larger |x| became inf in it.
        # A tile that came out inf or NaN is computed again from the bf16 activations in fp32 (the sum of real
        # inf/NaN inputs comes out the same), so the fast form never changes a result's range. Values below
        # 2^-14 keep fp16's subnormal precision (2^-24).
        bad = tl.max(tl.max(((acc != acc) | (tl.abs(acc) > 3.0e38)).to(tl.int32), axis=1), axis=0)
        if bad != 0:
            acc, _ = _gemv_dot_steps(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), x_rows, w_rows, s_rows, m_ok,
                                     n_ok, rk, k_lo, k_hi, K, G, group_k, k_offset, SCALE, EVEN_K, 2, BLOCK_K, GLU,
                                     r_ptr + rm[:, None].to(tl.int64) * stride_xm, nw_ptr, rstd, NORM,
                                     RSTD_LAST=RSTD_LAST, h_rows=x_rows)
    if RSTD_LAST:  # RMSNorm's scalar per row, applied to the sums (_norm_step_rstd_last)
        acc = acc * tl.math.rsqrt(sq / K + eps)[:, None]
    mn_ok = m_ok[:, None] & n_ok[None, :]
    if SPLIT:
        tl.store(o_ptr + pid_s * stride_os + rm[:, None] * stride_om + rn[None, :], acc, mask=mn_ok)
        if FOLD:
            _fold_splits(o_ptr, s_ptr, b_ptr, f_ptr, c_ptr + pid_n * tl.num_programs(1) + pid_m, tl.num_programs(2),
                         rm[:, None] * stride_om + rn[None, :], mn_ok, rn[None, :], n_ok[None, :], stride_os, stride_sn,
                         SCALE, HAS_BIAS)
    else:
        if SCALE == 1:
            acc = acc * tl.load(s_rows, mask=n_ok, other=0.0)[None, :]
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if GLU_OUT:
            _glu_store(o_ptr, acc, pid_n, N, rm, m_ok, stride_om, BLOCK_M, BLOCK_N, f_ptr, GLU_OUT_F16)
        else:
            tl.store(o_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :], acc.to(o_ptr.dtype.element_ty),
                     mask=mn_ok)


@triton.jit
def _fold_splits(ws_ptr, s_ptr, b_ptr, f_ptr, counter_ptr, splits, offs, ok, rn, n_ok, stride_os, stride_sn,
                 SCALE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The split-K sum in the GEMM itself (``FOLD``): each split program, its partial sums stored, counts itself
    on its output block's counter (acquire-release); the last one adds every split's partials in split order
    (the same bits as ``_gemv_split_reduce``), applies the epilogue, writes the output and sets the counter back
    to zero for the next call. No reduce kernel: one launch less between this GEMM and the next kernel.
    ``offs``/``ok``: the block's offsets and mask in one split's (M, N) partials, which is also the output's
    layout; ``rn``/``n_ok``: its output columns."""
    # every thread's partial sums are stored before the one thread's release below
    tl.debug_barrier()
    done = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")  # the count before this one
    if done == splits - 1:  # every other split's partials are written
        acc = tl.load(ws_ptr + offs, mask=ok, other=0.0)
        for i in range(1, splits):
            acc += tl.load(ws_ptr + i * stride_os + offs, mask=ok, other=0.0)
        if SCALE == 1:
            acc = acc * tl.load(s_ptr + rn.to(tl.int64) * stride_sn, mask=n_ok, other=0.0)
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        tl.store(f_ptr + offs, acc.to(f_ptr.dtype.element_ty), mask=ok)
        tl.store(counter_ptr, 0)  # zero for the next call: every split has counted


@triton.jit
def _gemv_split_reduce(ws_ptr, s_ptr, b_ptr, o_ptr, MN, N, S, stride_sn,
                  SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    _after_previous_kernel(PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, S):  # split order, every run
        acc += tl.load(ws_ptr + i * MN + offs, mask=ok, other=0.0)
    n = offs % N
    if SCALE == 1:
        acc = acc * tl.load(s_ptr + n.to(tl.int64) * stride_sn, mask=ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=ok, other=0.0).to(tl.float32)
    tl.store(o_ptr + offs, acc.to(o_ptr.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------------------------------------------
# Configs

DOT_BLOCK_M = 16  # rows of x per tl.dot tile at decode (the smallest tensor-core tile)

# The measured configs, (bucket, weight bytes per element, N, K[, FP8 scale layout]) -> config
# (hf_tp/kernels/gemv_table.py; ``table_entry`` reads it), with the entries of the process's GPU model put in by
# use_device_table.
TABLE = dict(_MEASURED)
_device_table: str | None = None  # the DEVICE_TABLES key in use ("" for none), once the first CUDA device is seen


def device_table_key(device_name: str) -> str:
    """The gemv_table.DEVICE_TABLES key whose entries a GPU of this name takes ("" for none)."""
    return next((key for key in DEVICE_TABLES if key in device_name), "")


def use_device_table(device: torch.device | str) -> str:
    """Put the entries measured on this GPU's model (gemv_table.DEVICE_TABLES) into TABLE, once per process: the
    first CUDA device decides (a process with two GPU models keeps the first one's). An entry a caller changed
    before (benchmarks set entries) stays. Returns the key in use ("" for TABLE's own entries, and off CUDA)."""
    global _device_table
    device = torch.device(device)
    if device.type != "cuda":
        return ""
    if _device_table is None:
        _device_table = device_table_key(torch.cuda.get_device_name(device))
        put_device_entries(TABLE, DEVICE_TABLES.get(_device_table, {}))
    return _device_table


def put_device_entries(table: dict, entries: dict) -> None:
    """``entries`` into ``table``, except over an entry that is no longer gemv_table.TABLE's (a caller set it); an
    entry for one scale layout (a key of five) also not where a caller set the shape's entry for any layout (its
    key of four), which the layout's entry would otherwise hide (``table_entry`` reads it first)."""
    for shape, config in entries.items():
        if table.get(shape) != _MEASURED.get(shape):
            continue
        if len(shape) > 4 and table.get(shape[:4]) != _MEASURED.get(shape[:4]):
            continue
        table[shape] = dict(config)


@functools.cache
def _sm_count(index: int) -> int:
    use_device_table(torch.device("cuda", index))  # before the first config is chosen on this device
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # the interpreter: any number gives the same result
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _split_for(programs: int, K: int, block_k: int, target: int) -> int:
    """The smallest power-of-two split of K that gives at least ``target`` programs (each split at least one
    step long, at most 16 splits)."""
    split = 1
    while programs * split < target and K >= 2 * split * block_k and split < 16:
        split *= 2
    return split


# The measured table's tl.dot kernel beat the GEMV at M == 1 for bf16/fp16 weights of this many rows or more
# (N 6144 .. 128256 at K 4096 on an H200); below it, and for FP8 at any N, the GEMV was faster.
DOT_AT_M1_MIN_N = 6144


def default_path(M: int, N: int, elem_bytes: int) -> str:
    """The kernel the rule picks for a shape the table does not hold: the GEMV for one row (bf16/fp16 weights
    of DOT_AT_M1_MIN_N rows or more: tl.dot), tl.dot for more."""
    if M != 1:
        return "dot"
    return "dot" if elem_bytes == 2 and N >= DOT_AT_M1_MIN_N else "gemv"


def rule_config(path: str, N: int, K: int, M: int, elem_bytes: int, sms: int = 132) -> dict:
    """The config for a shape the table does not hold: the table's most frequent winners (hf_tp/kernels/gemv_table.py,
    Llama-3-8B shapes on an H200). GEMV: 4 rows, 1 KB of each row per step, 8 warps, no K split unless the
    rows give fewer programs than SMs (the split's reduce kernel costs a launch). tl.dot: 32-row tiles (64 from
    DOT_AT_M1_MIN_N rows), 128 columns a step, split until about four programs per SM for FP8 (its table
    entries split 2-8), one per SM for 16-bit weights (they mostly did not split)."""
    if path == "gemv":
        block_n, block_k = 4, 1024 // elem_bytes
        return dict(path=path, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=8, num_stages=1,
                    SPLIT=_split_for(cdiv(N, block_n), K, block_k, sms))
    # fp32 weights: 32-row tiles and 3 stages, so the pipeline's buffers fit the 99 KB of shared memory of
    # sm_86/sm_89 (64 x 5 stages of fp32 tiles needs 160 KB)
    block_n, block_k = (64 if N >= DOT_AT_M1_MIN_N and elem_bytes <= 2 else 32), 128
    target = 4 * sms if elem_bytes == 1 else sms
    return dict(path=path, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4, num_stages=5 if elem_bytes == 2 else 3,
                SPLIT=_split_for(cdiv(N, block_n) * cdiv(M, 16), K, block_k, target))


def scale_layout(scale: torch.Tensor | None) -> str:
    """The FP8 scale layout of a weight's scales (N, G), as table keys name it: "channel" for one per output row,
    "block" for groups along K, "" for a 16-bit weight (no scales)."""
    return "" if scale is None else "channel" if scale.shape[1] == 1 else "block"


def table_entry(bucket: str, elem_bytes: int, N: int, K: int, scales: str = "") -> dict | None:
    """TABLE's entry for a shape: the one measured with this FP8 scale layout (a key of five, with "channel" or
    "block" last: a GPU model's own entries, whose sweeps found the two layouts fastest with different configs)
    where there is one, else the shape's (a key of four, for any layout)."""
    return (scales and TABLE.get((bucket, elem_bytes, N, K, scales))) or TABLE.get((bucket, elem_bytes, N, K))


def config_for(path: str, N: int, K: int, M: int, elem_bytes: int, sms: int = 132, scales: str = "") -> dict:
    """The config of a call: the measured table's entry for its bucket, shape and FP8 scale layout (with the
    "path" that ran it), else ``rule_config`` for ``path``."""
    hit = table_entry("gemv" if M == 1 else "dot", elem_bytes, N, K, scales)
    if hit is not None and hit.get("path", "gemv" if M == 1 else "dot") == path:
        return dict(hit, path=path)
    return rule_config(path, N, K, M, elem_bytes, sms)


def pow2_at_most(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


# Splits of K summed inside the GEMM (``_fold_splits``) instead of by ``_gemv_split_reduce``: off until measured on a
# GPU (benchmarks flip it; a config's "FOLD" overrides it).
FOLD_SPLIT = False
# With PDL, each GEMM program may ask L2 for the start of its weight rows before it waits for the kernel before it
# (``_prefetch_weight_rows``): max(1, PREFETCH_MAX_LINES // BLOCK_N) 128-byte lines per weight row. Off: measured slower on one
# H200 (rank of tp 2 320.6 against 363.8 tok/s without, tp 1 183.6; benchmarks/RESULTS.md, 2026-12-04 sixth
# session); benchmarks flip it to try smaller prefetches.
PREFETCH_WEIGHTS = False
PREFETCH_MAX_LINES = 2048
# ... and only where the GEMM's whole weight (this rank's) has at most this many bytes (None: any): a weight that
# fits in L2 many times over (q/k/v and o_proj at the ranks of tp 4 and 8: 4-13 MB) can be read into it while the
# kernel before (attention, a norm: latency-bound, the DRAM idle) finishes; a large one (gate/up: 29-235 MB) only
# floods L2 ahead of the loop's own loads, which is what made the whole-weight prefetch slower in the sixth session.
# With 13 MB it was not faster either (one H100, ranks of tp 8 and 4: benchmarks/RESULTS.md, 2026-12-07
# thirty-fifth session), so PREFETCH_WEIGHTS stays off; benchmarks set both (next_cycle.sh PF, PFB).
PREFETCH_MAX_WEIGHT_BYTES: int | None = None


def prefetch_lines(weight: torch.Tensor, k_split: int, block_n: int) -> int:
    """128-byte lines per weight row that a GEMM launched with PDL asks L2 for before its wait: 0 (none) unless
    PREFETCH_WEIGHTS, and for weights above PREFETCH_MAX_WEIGHT_BYTES; else up to a program's whole K range, at
    most PREFETCH_MAX_LINES per program."""
    if not PREFETCH_WEIGHTS or (PREFETCH_MAX_WEIGHT_BYTES is not None
                                and weight.numel() * weight.element_size() > PREFETCH_MAX_WEIGHT_BYTES):
        return 0
    line = 128 // weight.element_size()
    return min(next_power_of_2(cdiv(k_split, line)), max(1, pow2_at_most(PREFETCH_MAX_LINES // block_n)))


MIN_COUNTERS = 65536  # output blocks the first counter buffer of a device holds (256 KB)
# The norm form's statistic pass holds at most this many elements of x per warp of the program at a time (32 fp32
# registers a thread): at 8 warps one step of 8192 columns for one row (Llama-3-70B's hidden size), at 4 warps
# 4096, or 256 columns a step for a 16-row tile. (Built for sm_90, 8192 elements at 4 warps took 204 registers.)
NORM_ELEMENTS_PER_WARP = 1024
# The norm form of an unsplit GEMM may sum the statistic in its loop and apply it to the sums (``RSTD_LAST``)
# instead of computing it before the loop. Off: on an H200 it was slower still than the statistic first (gate/up
# at tp 2: 99.4 µs against 59.5, and 33.1 for the norm kernel then the GEMM) and its tl.dot form, rounding
# h * weight before normalizing, less exact (benchmarks/RESULTS.md, 2026-12-05). Benchmarks flip it to compare.
NORM_RSTD_LAST = False

# The folded sum's counters, one int32 per output block, per device (hf_tp.kernels.counters: zero between calls).
_COUNTERS: dict[torch.device, list[torch.Tensor]] = {}


def reserve_counters(device: torch.device, blocks: int = MIN_COUNTERS) -> torch.Tensor:
    """Allocate the device's zeroed counters for at least ``blocks`` output blocks, once, outside any CUDA graph
    (at load: hf_tp.assembly; and in tests)."""
    return counter_pool.reserve(_COUNTERS, device, blocks, MIN_COUNTERS)


def _counters(device: torch.device, blocks: int) -> torch.Tensor | None:
    """The device's zeroed counters, at least ``blocks``; None on CUDA when not reserved (that call runs the
    reduce kernel)."""
    return counter_pool.lookup(_COUNTERS, device, blocks, MIN_COUNTERS)


def choose(M: int, N: int, K: int, elem_bytes: int, sms: int = 132, path: str | None = None,
           scales: str = "") -> tuple[str, dict]:
    """The kernel ("gemv" or "dot") and config of a call: the table's choice for M == 1 (the GEMV or tl.dot),
    else the rule's; ``path`` forces the kernel. ``scales``: the FP8 weight's scale layout (``scale_layout``)."""
    if path is None:
        hit = table_entry("gemv", elem_bytes, N, K, scales) if M == 1 else None
        path = hit.get("path", "gemv") if hit else default_path(M, N, elem_bytes)
    if path == "gemv" and M != 1:
        raise ValueError(f"gemv_triton: the gemv path takes one row of x, got {M}")
    return path, config_for(path, N, K, M, elem_bytes, sms, scales)


def takes_fp16(cfg: dict, elem_bytes: int, x_dtype: torch.dtype, mode: int, path: str = "dot") -> bool:
    """Whether a call multiplies in fp16: its config says "X16", the weight is FP8 and the activations are bf16
    (fp16 ones already are); the tl.dot kernel takes scales per channel or aligned groups (modes 1 and 2), the
    GEMV scales per channel (mode 1: ``_gemv_f16_sums``)."""
    return (bool(cfg.get("X16")) and elem_bytes == 1 and x_dtype == torch.bfloat16
            and mode in ((1,) if path == "gemv" else (1, 2)))


def _checked_x16(x16: torch.Tensor | None, x2: torch.Tensor) -> torch.Tensor:
    """The fp16 copy of x2 a call in fp16 reads: the caller's (checked), else made here."""
    M = x2.shape[0]
    if x16 is not None and (x16.shape != x2.shape or x16.dtype != torch.float16
                            or (M > 1 and x16.stride() != x2.stride())):
        raise ValueError(f"gemv_triton: x16 must be x in fp16 with its strides, got {tuple(x16.shape)} "
                         f"{x16.dtype} strides {x16.stride()} for x {tuple(x2.shape)} {x2.stride()}")
    return x16 if x16 is not None else x2.to(torch.float16)


# ---------------------------------------------------------------------------------------------------------------
# Launcher

def launch(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None, group_k: int = 0,
           k_offset: int = 0, bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
           config: dict | None = None, path: str | None = None, x16: torch.Tensor | None = None,
           glu: bool = False, glu_out: bool = False, norm_weight: torch.Tensor | None = None, eps: float = 0.0,
           residual: torch.Tensor | None = None, h_out: torch.Tensor | None = None,
           x_out: torch.Tensor | None = None, out16: torch.Tensor | None = None) -> torch.Tensor:
    """x2 (M, K) contiguous; weight (N, K) with unit stride along K; scale None (dense) or (N, G) float32
    contiguous, the canonical FP8 scales with ``group_k``/``k_offset``. Returns (M, N) in ``out_dtype``
    (default x2's dtype). ``path`` ("gemv" for M == 1, "dot") and ``config`` override the choice (tests and
    the benchmark's sweep). ``x16``: x2 in fp16, for a config with "X16" (made here when not given).
    ``glu``: x2 is (M, 2K) [gate | up] and the product is silu(gate) * up times W^T (dense weights only), the
    activation made in the GEMM's loads (``_load_x``). ``glu_out``: the weight is [gate | up] (2I, K) (dense, or FP8
    with the scales of its rows) and the result is silu(gate) * up of the product, (M, I), made in the GEMM's
    epilogue (``_glu_store``), with the config of the (2I, K) GEMM but no split of K (the activation needs each
    whole sum); ``out16`` (M, I) fp16 contiguous: the activation is also written there in fp16 (the fp16 x of an
    FP8 down projection's "X16" form; the kernel's ``f_ptr``, which only a split of K uses otherwise).
    ``norm_weight`` (K,): the GEMM's x is RMSNorm(h) * norm_weight with ``eps`` (``norm_reference``), where h is
    x2, or x2 + ``residual`` rounded to x2's dtype; each program computes its rows' statistic over the whole row
    itself, and with ``residual`` one program per row block writes h into ``h_out`` (M, K); ``x_out`` (M, K):
    the normalized x is written there too, for its other readers (x2, residual, norm weight, h_out and x_out of
    one dtype; dense or FP8 weights: with a config's "X16" the fp16 x is made from the normalized h in the
    kernel)."""
    M, K = x2.shape
    norm = 0 if norm_weight is None else (2 if residual is not None else 1)
    if (norm_weight is None and (residual is not None or h_out is not None or x_out is not None)) or (
            norm == 1 and h_out is not None):
        raise ValueError("gemv_triton: a residual, an h_out or an x_out belongs to the norm form: give norm_weight, "
                         "and h_out together with a residual")
    inputs = {t.untyped_storage().data_ptr() for t in (x2, residual) if t is not None}
    for name, t in (("h_out", h_out), ("x_out", x_out)):
        if t is not None and (t.untyped_storage().data_ptr() in inputs or (
                name == "x_out" and h_out is not None and t.untyped_storage().data_ptr()
                == h_out.untyped_storage().data_ptr())):
            raise ValueError(f"gemv_triton: {name} must not share memory with x, the residual or h_out: one program "
                             "writes it while the others still read them")
    if norm:
        parts = [t for t in (x2, norm_weight, residual, h_out, x_out) if t is not None]
        if (glu or norm_weight.shape != (K,) or any(t.dtype != x2.dtype for t in parts)
                or (norm == 2 and (h_out is None or residual.shape != x2.shape or h_out.shape != x2.shape))
                or (x_out is not None and x_out.shape != x2.shape)
                or not all(t.is_contiguous() for t in parts)):
            raise ValueError(f"gemv_triton: the norm form takes a plain x (M, K), a norm weight (K,), and with a "
                             f"residual (M, K) an h_out (M, K), contiguous and of x's dtype; got x "
                             f"{tuple(x2.shape)} {x2.dtype}, norm weight {tuple(norm_weight.shape)} "
                             f"{norm_weight.dtype}, residual "
                             f"{None if residual is None else (tuple(residual.shape), residual.dtype)}, h_out "
                             f"{None if h_out is None else (tuple(h_out.shape), h_out.dtype)}, x_out "
                             f"{None if x_out is None else (tuple(x_out.shape), x_out.dtype)}, glu={glu}")
    if glu:
        if scale is not None or K % 2 or weight.shape[1] != K // 2:
            raise ValueError(f"gemv_triton: glu takes dense weights (N, K) and x (M, 2K), got x {tuple(x2.shape)}, "
                             f"weight {tuple(weight.shape)}, scale {'given' if scale is not None else None}")
        K //= 2
    N = weight.shape[0]
    if glu_out and (glu or N % 2):
        raise ValueError(f"gemv_triton: glu_out takes a [gate | up] weight of an even number of rows and no glu, "
                         f"got weight {tuple(weight.shape)}, glu={glu}")
    if out16 is not None and (not glu_out or out16.shape != (M, N // 2) or out16.dtype != torch.float16
                              or not out16.is_contiguous()):
        raise ValueError(f"gemv_triton: out16 is glu_out's fp16 copy, ({M}, {N // 2}) float16 contiguous; got "
                         f"{tuple(out16.shape)} {out16.dtype}, glu_out={glu_out}")
    out_dtype = out_dtype or x2.dtype
    path, cfg = choose(M, N, K, weight.element_size(), sm_count(x2.device), path, scale_layout(scale))
    cfg = dict(cfg, **(config or {}))
    if glu_out:
        cfg["SPLIT"] = 1
        if cfg["BLOCK_N"] < 2:
            raise ValueError(f"gemv_triton: glu_out needs BLOCK_N >= 2, got {cfg['BLOCK_N']}")
    G = 1 if scale is None else scale.shape[1]
    if scale is None:
        mode = 0
    elif G == 1:
        mode = 1
    else:
        mode = None  # below, per path
    s = scale if scale is not None else x2  # never read in mode 0
    b = bias if bias is not None else x2  # never read without HAS_BIAS
    out = torch.empty((M, N // 2 if glu_out else N), device=x2.device, dtype=out_dtype)

    if path == "gemv":
        vec = max(1, 16 // weight.element_size())  # one 16-byte vector of W per thread
        block_k = max(vec, min(cfg["BLOCK_K"], next_power_of_2(K)))
        if mode is None:
            mode = 2 if group_k % vec == 0 and k_offset % vec == 0 else 3
        # a power-of-two group (block FP8's 128) divides by a shift
        group_shift = group_k.bit_length() - 1 if mode == 2 and group_k & (group_k - 1) == 0 else -1
    else:
        block_k = max(16, min(cfg["BLOCK_K"], next_power_of_2(K)))
        if mode is None:
            block_k = max(16, min(block_k, pow2_at_most(group_k)))  # a step never spans more than two groups
            mode = 2 if group_k % block_k == 0 and k_offset % block_k == 0 else 3
    k_split = cdiv(cdiv(K, max(1, int(cfg.get("SPLIT", 1)))), block_k) * block_k
    splits = cdiv(K, k_split)
    even_k = K % block_k == 0
    if splits > 1:
        dest = torch.empty((splits, M, N), device=x2.device, dtype=torch.float32)
    else:
        dest = out
    block_m = 1 if path == "gemv" else cfg.get("BLOCK_M") or min(64, max(DOT_BLOCK_M, next_power_of_2(M)))
    counters = None
    if splits > 1 and cfg.get("FOLD", FOLD_SPLIT):  # the sum in the GEMM's last program per output block
        counters = _counters(x2.device, cdiv(N, cfg["BLOCK_N"]) * cdiv(M, block_m))
    fold = counters is not None
    c = counters if fold else x2  # never read without FOLD
    f = out16 if out16 is not None else out  # the folded sum's output, or glu_out's fp16 copy (no split there)
    # the norm form's inputs (x2 itself where there is none: never read)
    r, nw, h = (residual if norm == 2 else x2), (norm_weight if norm else x2), (h_out if norm == 2 else x2)
    xn = x_out if x_out is not None else x2
    norm_rows = 1 if M == 1 or path == "gemv" else block_m
    norm_block = max(16, min(next_power_of_2(K), NORM_ELEMENTS_PER_WARP * cfg["num_warps"] // norm_rows))
    # the statistic summed in the loop and applied to the sums (_norm_step_rstd_last) where one program holds a
    # whole row of K and no normalized x is written; else computed first by every program (_rows_rstd)
    rstd_last = bool(norm) and splits == 1 and x_out is None and NORM_RSTD_LAST
    norm_args = dict(NORM=norm, NORM_BLOCK=norm_block, KEEP_X=x_out is not None,
                     RSTD_LAST=rstd_last) if norm else {}
    pdl = pdl_launch.launch_args(x2.device)  # programmatic dependent launch, where on (hf_tp.kernels.pdl)
    lines = prefetch_lines(weight, k_split, cfg["BLOCK_N"]) if pdl else 0
    # the weights' first lines asked of L2 before the wait (_prefetch_weight_rows)
    gemm_pdl = dict(pdl, PREFETCH=lines, LINE=128 // weight.element_size()) if lines else pdl
    if path == "gemv":
        # "X16" with FP8 weights per channel: products and sums in fp16 (_gemv_f16_sums), from x's fp16 copy
        f16 = not norm and not glu and takes_fp16(cfg, weight.element_size(), x2.dtype, mode, "gemv")
        xh = _checked_x16(x16, x2) if f16 else x2
        grid = (cdiv(N, cfg["BLOCK_N"]), splits)
        _gemv_kernel[grid](x2, xh, weight, s, b, dest, f, c, r, nw, h, xn, eps, N, K, G, group_k, k_offset, k_split,
                           weight.stride(0), s.stride(0), M * N, SCALE=mode, GROUP_SHIFT=group_shift,
                           SPLIT=splits > 1, FOLD=fold, HAS_BIAS=bias is not None,
                           EVEN_N=N % cfg["BLOCK_N"] == 0, EVEN_K=even_k, BLOCK_N=cfg["BLOCK_N"],
                           NV=block_k // vec, VEC=vec, STAGES=cfg["num_stages"], num_warps=cfg["num_warps"],
                           num_stages=max(1, cfg["num_stages"]), GLU=glu, GLU_OUT=glu_out,
                           GLU_OUT_F16=out16 is not None, F16=f16, **norm_args, **gemm_pdl)
    else:
        # "X16": FP8 weights with bf16 activations multiplied in fp16 (see _gemv_dot_kernel): FP8 widens to
        # fp16 in one instruction per pair, to bf16 only through fp32 at the GPU's slow conversion rate, and the
        # activations' fp16 copy comes from the caller (fused by Inductor into the step that made x) or from here
        mma, xh = 0, x2
        if x2.dtype == torch.float32:
            mma = 2
        elif takes_fp16(cfg, weight.element_size(), x2.dtype, mode):
            # (the norm form makes its fp16 x from the normalized h in the kernel: no copy here)
            mma, xh = 1, (x2 if norm else _checked_x16(x16, x2))
        grid = (cdiv(N, cfg["BLOCK_N"]), cdiv(M, block_m), splits)
        stages = cfg["num_stages"]
        if norm:
            norm_args["NORM_ROWS"] = norm_rows
            # the residual's and the norm weight's tiles pipelined too: at 5 stages the fp16 form of FP8 block
            # weights spilled (255 registers built for sm_90), at 3 it did not
            if weight.element_size() == 1 or not rstd_last:
                stages = min(stages, 3)
        _gemv_dot_kernel[grid](x2, xh, weight, s, b, dest, f, c, r, nw, h, xn, eps, M, N, K, G, group_k, k_offset,
                          k_split, x2.stride(0), weight.stride(0), s.stride(0), M * N, out.stride(0),
                          SCALE=mode, SPLIT=splits > 1, FOLD=fold, HAS_BIAS=bias is not None, EVEN_K=even_k,
                          MMA=mma, BLOCK_M=block_m, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=block_k,
                          num_warps=cfg["num_warps"], num_stages=stages, GLU=glu, GLU_OUT=glu_out,
                          GLU_OUT_F16=out16 is not None, **norm_args, **gemm_pdl)
    if splits > 1 and not fold:
        block = 1024
        _gemv_split_reduce[(cdiv(M * N, block),)](dest, s, b, out, M * N, N, splits, s.stride(0),
                                                    SCALE=1 if mode == 1 else 0, HAS_BIAS=bias is not None,
                                                    BLOCK=block, num_warps=4, **pdl)
    return out
