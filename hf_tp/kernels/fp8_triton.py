"""Triton kernels for weight-only FP8 linear layers in the canonical form of ``hf_tp.kernels.fp8``.

Imported lazily (only where a kernel may run), so that CPU-only installs never touch Triton.

Decode sizes (M <= DOT_MAX_M rows) run the skinny-M kernels shared with the dense layers
(hf_tp/kernels/gemv_triton.py: the GEMV for M == 1, tl.dot above), which read the FP8 weight once and apply
its scales per K-group in fp32. Prefill sizes (M > DOT_MAX_M) run one of: ``_prefill`` (the weight widened in
the tile), ``_dequant`` + cuBLAS, or the FP8 x FP8 ``_prefill_fp8`` on activations quantized by
``_quantize_groups`` (one term: TPConfig.fp8_activations; two terms: bf16's accuracy). ``launch`` chooses by the
measured limits at the end of this file.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import gemv_triton, launch_cache
from .sizes import cdiv, next_power_of_2


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
def _tile_rows(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_N: tl.constexpr):
    """This program's rows of x and of W at prefill sizes: the row tiles of x go fastest inside groups of GROUP_N
    weight tiles, so that the programs in flight share their weight tiles (from HBM once, then L2); ordering by
    weight tile first read each weight once per row tile (16 times at M = 2048)."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_N * tiles_m
    first_n = (pid // per_group) * GROUP_N
    group_n = tl.minimum(tiles_n - first_n, GROUP_N)
    pid_m = (pid % per_group) // group_n
    pid_n = first_n + (pid % per_group) % group_n
    return pid_m * BLOCK_M + tl.arange(0, BLOCK_M), pid_n * BLOCK_N + tl.arange(0, BLOCK_N)


@triton.jit
def _prefill(x_ptr, w_ptr, s_ptr, b_ptr, o_ptr, M, N, K, G, group_k, k_offset, stride_xm, stride_wn, stride_sn,
             stride_om, SCALE_LAST: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_N: tl.constexpr,
             W_LEFT: tl.constexpr):
    """x @ W^T at prefill sizes, W read as FP8 (half of bf16's bytes) and widened in the tile: one pass, no
    dequantized copy of the weight.

    Tiles in ``_tile_rows``'s order. Each step's W tile is dequantized in fp32
    and rounded to x's dtype, the reference's rounding (``hf_tp.kernels.fp8.dequantize``); with SCALE_LAST
    (one group per row: per-channel scales) W is widened exactly (every e4m3 value is a bf16 and an fp16) and
    the scale multiplies the fp32 sums once per output. BLOCK_K <= group_k (or G == 1), so that a step holds
    at most two groups. With W_LEFT the product is computed transposed, W @ x^T: the widened weight is then the
    left operand, which Hopper's warp-group MMA takes from registers (a right operand must be in shared memory,
    so a weight widened in registers on the right goes back through shared memory first)."""
    rm, rn = _tile_rows(M, N, BLOCK_M, BLOCK_N, GROUP_N)
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


def prefill_config(M: int, N: int, K: int, G: int = 1) -> dict:
    """The prefill kernel's tiles for an (M, N, K) product with G scale groups per row, from the sweep of
    benchmarks/fp8_prefill.py (one H100, the Llama-3-8B layer's four GEMMs; benchmarks/RESULTS.md, 2026-12-05,
    sixteenth session). Up to 128 rows (PREFILL_MAX_M) one row tile, and weight tiles as wide as leave at least 96
    programs (the product reads weights: every SM must be reading); above (only when asked for: tests, the
    sweep), 128 x 64 tiles. Block scales are applied in the tile, which widens it to fp32: a 128 x 128 weight
    tile then spills at 4 warps (208 bytes in the sm_90 build of Triton 3.6, 184 in 3.9), so it steps 64 columns
    of K (gate/up at 128 rows: 108.5 us in the sweep, against 121.8-126.1 for K steps of 128)."""
    if M <= 128:
        block_n = 128
        while block_n > 32 and cdiv(N, block_n) < 96:
            block_n //= 2
        return dict(BLOCK_M=128, BLOCK_N=block_n, BLOCK_K=64 if G > 1 and block_n == 128 else 128, GROUP_N=8,
                    num_warps=4, num_stages=4, SCALE_LAST=None, W_LEFT=False)
    return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=128, GROUP_N=8, num_warps=8, num_stages=3, SCALE_LAST=None,
                W_LEFT=False)


@functools.lru_cache(maxsize=4096)
def _prefill_plan(M: int, N: int, K: int, G: int, group_k: int) -> tuple[tuple, dict]:
    """``launch_prefill``'s grid and constexprs with ``prefill_config``'s tiles, once per shape: an eager prefill
    is host-bound, so the per-call Python counts."""
    cfg = prefill_config(M, N, K, G)
    return _prefill_meta(M, N, K, G, group_k, cfg)


def _prefill_meta(M: int, N: int, K: int, G: int, group_k: int, cfg: dict) -> tuple[tuple, dict]:
    block_k = max(16, min(cfg["BLOCK_K"], next_power_of_2(K)))
    if G > 1:
        block_k = max(16, min(block_k, gemv_triton.pow2_at_most(group_k)))  # a step spans at most two groups
    scale_last = G == 1 if cfg["SCALE_LAST"] is None else bool(cfg["SCALE_LAST"]) and G == 1
    grid = (cdiv(M, cfg["BLOCK_M"]) * cdiv(N, cfg["BLOCK_N"]),)
    return grid, dict(SCALE_LAST=scale_last, EVEN_K=K % block_k == 0, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                      BLOCK_K=block_k, GROUP_N=cfg["GROUP_N"], W_LEFT=bool(cfg["W_LEFT"]),
                      num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def launch_prefill(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
                   bias: torch.Tensor | None, config: dict | None = None) -> torch.Tensor:
    """x2 (M, K) contiguous, bf16/fp16; returns (M, N) in x2's dtype. ``config`` overrides
    ``prefill_config`` (the benchmark's sweep); its SCALE_LAST None means: on for per-channel scales."""
    M, K = x2.shape
    N, G = weight.shape[0], scale.shape[1]
    if config:
        grid, meta = _prefill_meta(M, N, K, G, group_k, dict(prefill_config(M, N, K, G), **config))
    else:
        grid, meta = _prefill_plan(M, N, K, G, group_k)
    out = torch.empty((M, N), device=x2.device, dtype=x2.dtype)
    launch_cache.launch(_prefill, grid, *_prefill_args(x2, weight, scale, bias, out, group_k, k_offset),
                        HAS_BIAS=bias is not None, **meta)
    return out


def _prefill_args(x2, weight, scale, bias, out, group_k: int, k_offset: int) -> tuple:
    M, K = x2.shape
    return (x2, weight, scale, bias if bias is not None else x2, out, M, weight.shape[0], K, scale.shape[1], group_k,
            k_offset, x2.stride(0), weight.stride(0), scale.stride(0), out.stride(0))


def bind_prefill(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
                 bias: torch.Tensor | None, out_shape: tuple | None = None):
    """``launch_prefill`` with ``prefill_config``'s tiles, and a function that repeats it
    (``launch_cache.bind``): (out, repeat), ``repeat(x2, weight, scale, bias)`` returning the next out, or None
    where the launch cannot be bound. ``repeat`` takes tensors that ``launch_cache.launch`` would key alike
    (x2 of this shape, contiguous, and this 16-byte alignment; the same weight, scale and bias layouts): an eager
    layer keeps one per prompt shape (``hf_tp.kernels.fp8``), so that a repeat call pays the launch alone.

    The kernel takes addresses and row strides only, so ``repeat`` may be given x in any contiguous shape of
    x2's rows (a prompt's (batch, length, K)), and ``out_shape`` (default (M, N)) is the shape its outputs are
    allocated in: a repeat call then makes no view on either side."""
    M, K = x2.shape
    N, G = weight.shape[0], scale.shape[1]
    grid, meta = _prefill_plan(M, N, K, G, group_k)
    out_shape = (M, N) if out_shape is None else tuple(out_shape)
    out = torch.empty(out_shape, device=x2.device, dtype=x2.dtype)
    out2 = out.view(M, N)  # the kernel's row stride is N in any out_shape (out.stride(0) of a 3-D out is not)
    has_bias = bias is not None
    bound = launch_cache.bind(_prefill, grid, *_prefill_args(x2, weight, scale, bias, out2, group_k, k_offset),
                              HAS_BIAS=has_bias, **meta)
    if bound is None:
        return out, None
    sizes = _prefill_args(x2, weight, scale, bias, out2, group_k, k_offset)[5:]
    device, dtype = x2.device, x2.dtype

    def repeat(x, weight, scale, bias):
        out = torch.empty(out_shape, device=device, dtype=dtype)
        bound(x, weight, scale, bias if has_bias else x, out, *sizes)
        return out

    return out, repeat


@triton.jit
def _quantize_groups(x_ptr, q_ptr, qs_ptr, K, group_k, k_offset, stride_xm, stride_qm, stride_sg, stride_qt,
                     stride_st, BLOCK_K: tl.constexpr, TWO_TERM: tl.constexpr):
    """One (row, group) of x to float8_e4m3fn with one fp32 scale, amax / 448 (dynamic per-token activation
    quantization, per group): the groups are the weight's (local column k in group (k + k_offset) // group_k),
    so that a K step of the GEMM multiplies under one activation scale and one weight scale. The scales are
    stored group-major, (G, M): a K step's scales of a tile's rows are then contiguous.

    TWO_TERM: x ~ s1 * q1 + s2 * q2, q2 the FP8 rounding of what q1 leaves (x - s1 * q1, in fp32) under its own
    amax / 448. Each term keeps e4m3's 4 significant bits of what it holds, so the pair holds about 8: as close
    to x as bf16's rounding of it (relative L2 6.5e-4 against bf16's 1.7e-3 on a Gaussian row). Term t's values
    and scales lie ``stride_qt`` and ``stride_st`` after term 0's."""
    row = tl.program_id(0)
    g = tl.program_id(1)
    lo = tl.maximum(g * group_k - k_offset, 0)
    hi = tl.minimum((g + 1) * group_k - k_offset, K)
    x_row = x_ptr + row.to(tl.int64) * stride_xm
    q_row = q_ptr + row.to(tl.int64) * stride_qm
    rk = tl.arange(0, BLOCK_K)
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(lo, hi, BLOCK_K):
        amax = tl.maximum(amax, tl.abs(tl.load(x_row + k0 + rk, mask=k0 + rk < hi, other=0.0).to(tl.float32)))
    scale = tl.maximum(tl.max(amax, axis=0), 1e-12) / 448.0
    if TWO_TERM:
        amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(lo, hi, BLOCK_K):
            v = tl.load(x_row + k0 + rk, mask=k0 + rk < hi, other=0.0).to(tl.float32)
            q = tl.minimum(tl.maximum(v / scale, -448.0), 448.0).to(q_ptr.dtype.element_ty)
            amax = tl.maximum(amax, tl.abs(v - q.to(tl.float32) * scale))
        scale2 = tl.maximum(tl.max(amax, axis=0), 1e-30) / 448.0
    for k0 in range(lo, hi, BLOCK_K):
        v = tl.load(x_row + k0 + rk, mask=k0 + rk < hi, other=0.0).to(tl.float32)
        # clamped: x / (amax / 448) may round just past 448, which e4m3fn (no infinity) would make NaN
        q = tl.minimum(tl.maximum(v / scale, -448.0), 448.0).to(q_ptr.dtype.element_ty)
        tl.store(q_row + k0 + rk, q, mask=k0 + rk < hi)
        if TWO_TERM:
            rest = v - q.to(tl.float32) * scale
            tl.store(q_row + stride_qt + k0 + rk,
                     tl.minimum(tl.maximum(rest / scale2, -448.0), 448.0).to(q_ptr.dtype.element_ty), mask=k0 + rk < hi)
    tl.store(qs_ptr + g.to(tl.int64) * stride_sg + row, scale)
    if TWO_TERM:
        tl.store(qs_ptr + stride_st + g.to(tl.int64) * stride_sg + row, scale2)


@triton.jit
def _prefill_fp8(q_ptr, qs_ptr, w_ptr, st_ptr, b_ptr, o_ptr, M, N, K, group_k, k_offset, stride_qm, stride_qsg,
                 stride_wn, stride_stg, stride_om, stride_qt, stride_qst, ONE_GROUP: tl.constexpr,
                 HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, GROUP_N: tl.constexpr, TWO_TERM: tl.constexpr, PROMOTE: tl.constexpr):
    """x @ W^T with x quantized to FP8 per (row, weight group) by ``_quantize_groups``: both operands FP8, the
    tensor cores' FP8 rate (twice bf16's). Tile order as ``_prefill``. Each K step lies in one group (BLOCK_K
    divides group_k and k_offset): its product is scaled by the row's and the weight row's scale of that group
    and summed in fp32; with ONE_GROUP (per-channel weights) the products chain and the scales apply once.
    Both scales come group-major ((G, M) and (G, N)): a step's scales are contiguous loads, which the pipeliner
    prefetches (one scale per row gathered with a stride: 2074 against 1662 µs per 8B layer at M = 2048).
    With groups, Triton (3.6, sm_90 build) waits for each step's MMAs before it scales them: a product that is not
    the next step's accumulator is not kept in flight (scaling it a step later, in a second accumulator, built the
    same wait: benchmarks/RESULTS.md, seventeenth session).
    TWO_TERM (ONE_GROUP only): x came as two FP8 terms (``_quantize_groups``). A tile then multiplies 2 x BLOCK_M
    rows, both terms of its BLOCK_M rows stacked, in one MMA per step (one pipelined load: a second load and dot
    per step were not pipelined by Triton 3.6, whose build waited for each step's MMAs), and the stacked halves
    are scaled and summed once per output: twice the MMAs of one term, bf16's accuracy.
    PROMOTE (ONE_GROUP): each K step's FP8 product is summed into the fp32 accumulator by the CUDA cores
    (``max_num_imprecise_acc``: BLOCK_K), not left in the tensor cores' FP8 accumulator across all of K, whose
    precision is lower than fp32's (DeepSeek-V3 measured about 14 bits on H800 and promotes every 128 products).
    It costs a wait for each step's MMAs (one in the K loop of the sm_90 build)."""
    rm, rn = _tile_rows(M, N, BLOCK_M, BLOCK_N, GROUP_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    if TWO_TERM:
        stacked = tl.arange(0, 2 * BLOCK_M)
        term = stacked // BLOCK_M
        a_m = tl.min(rm, axis=0) + stacked % BLOCK_M
        q_rows = q_ptr + term.to(tl.int64)[:, None] * stride_qt + a_m.to(tl.int64)[:, None] * stride_qm
        acc = tl.zeros((2 * BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        a_m = rm
        q_rows = q_ptr + rm.to(tl.int64)[:, None] * stride_qm
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a_ok = a_m < M
    qs_rows = qs_ptr + rm
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * stride_wn
    st_cols = st_ptr + rn
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + rk
        if EVEN_K:
            a = tl.load(q_rows + cols[None, :], mask=a_ok[:, None], other=0.0)
            b = tl.load(w_rows + cols[None, :], mask=n_ok[:, None], other=0.0)
        else:
            k_ok = cols < K
            a = tl.load(q_rows + cols[None, :], mask=a_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_rows + cols[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if ONE_GROUP:
            if PROMOTE:
                acc = tl.dot(a, tl.trans(b), acc, max_num_imprecise_acc=BLOCK_K)
            else:
                acc = tl.dot(a, tl.trans(b), acc)
        else:
            g = (k0 + k_offset) // group_k
            sa = tl.load(qs_rows + g * stride_qsg, mask=m_ok, other=0.0)
            sb = tl.load(st_cols + g * stride_stg, mask=n_ok, other=0.0)
            acc += tl.dot(a, tl.trans(b)) * (sa[:, None] * sb[None, :])
    if TWO_TERM:
        sa = tl.load(qs_ptr + term * stride_qst + a_m, mask=a_ok, other=0.0)
        acc = tl.sum(tl.reshape(acc * sa[:, None], (2, BLOCK_M, BLOCK_N)), axis=0)
        acc = acc * tl.load(st_cols, mask=n_ok, other=0.0)[None, :]
    elif ONE_GROUP:
        acc = acc * (tl.load(qs_rows, mask=m_ok, other=0.0)[:, None] * tl.load(st_cols, mask=n_ok, other=0.0)[None, :])
    if HAS_BIAS:
        acc = acc + tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(o_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :], acc.to(o_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def fp8_step(G: int, K: int, group_k: int, k_offset: int, block_k: int = 128) -> int:
    """The K step of ``_prefill_fp8`` for these groups, or 0 where none fits (a step must lie in one group and
    hold at least 32 columns): the caller then keeps the activations in their dtype (``_prefill``)."""
    if G == 1:
        return max(32, min(block_k, next_power_of_2(K)))
    step = block_k
    while step >= 32 and (group_k % step or k_offset % step):
        step //= 2
    return step if step >= 32 else 0


def quantize_groups(x2: torch.Tensor, G: int, group_k: int, k_offset: int,
                    terms: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 (M, K) to float8_e4m3fn and fp32 scales per row and weight group (``_quantize_groups``); G == 1: one
    group per row. ``terms`` 1: (M, K) values and (M, G) scales (a view of the (G, M) tensor the GEMM reads);
    2 (G == 1 only): x ~ q[0] * qs[0] + q[1] * qs[1], values (2, M, K) and scales (2, M, 1)."""
    M, K = x2.shape
    if terms not in (1, 2) or (terms == 2 and G != 1):
        raise ValueError(f"fp8_triton.quantize_groups: terms must be 1, or 2 with one group per row; got {terms}, "
                         f"G={G}")
    q = torch.empty((terms, M, K), device=x2.device, dtype=torch.float8_e4m3fn)
    qs = torch.empty((terms, G, M), device=x2.device, dtype=torch.float32)
    if G == 1:
        group_k, k_offset = K, 0
    launch_cache.launch(_quantize_groups, (M, G), x2, q, qs, K, group_k, k_offset, x2.stride(0), q.stride(1),
                        qs.stride(1), q.stride(0), qs.stride(0),
                        BLOCK_K=max(16, min(1024, next_power_of_2(min(group_k, K)))), TWO_TERM=terms == 2,
                        num_warps=4)
    return (q[0], qs[0].t()) if terms == 1 else (q, qs.transpose(1, 2))


def prefill_fp8_config(M: int, N: int, G: int = 1, terms: int = 1) -> dict:
    """The W8A8 kernel's tiles, from the sweeps of benchmarks/fp8_prefill.py (one H100, benchmarks/RESULTS.md,
    2026-12-05, sixteenth session). One group per row: 128 x 128, halved (N first, down to 64) while there are
    fewer programs than an H100 has SMs. Block groups: the tiles most of the four 8B GEMMs chose at 128, 512
    and 2048 rows in call 4's sweep (each K step's scaling favours smaller tiles at small M). Two terms: the
    tiles their sweep chose (eighteenth session)."""
    if terms == 2 and M <= DOT_MAX_M:
        # decode sizes (DECODE_TWO_TERM_MAX_M, off: slower than the decode kernels): at least 64 MMA rows, since
        # Triton builds FP8 tiles of fewer as fp16 MMAs on the widened operands (HMMA in the sm_90 build: the
        # widening this path is for avoiding); narrow weight tiles so every SM reads
        block_n = 64
        while block_n > 32 and cdiv(N, block_n) < 2 * 132:
            block_n //= 2
        return dict(BLOCK_M=32 if M <= 32 else 64, BLOCK_N=block_n, BLOCK_K=128, GROUP_N=8, num_warps=4,
                    num_stages=4)
    if terms == 2:
        # the sweep's fastest tiles with PROMOTE (one H100, benchmarks/RESULTS.md, eighteenth session): 64 MMA rows
        # and 64-wide weight tiles for 128 rows on all but the widest weight, 128 x 128 MMA tiles above
        small = M <= 128 and N < 16384
        return dict(BLOCK_M=32 if small else 64, BLOCK_N=64 if small else 128, BLOCK_K=128, GROUP_N=8,
                    num_warps=4, num_stages=3)
    if G > 1:
        if M <= 128:
            return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, GROUP_N=8, num_warps=4, num_stages=4)
        if M <= 512:
            return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, GROUP_N=8, num_warps=8, num_stages=3)
        return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_N=8, num_warps=8, num_stages=4)
    block_m, block_n = 128 // terms, 128
    while block_n > 64 and cdiv(M, block_m) * cdiv(N, block_n) < 132:
        block_n //= 2
    while block_m > 64 // terms and cdiv(M, block_m) * cdiv(N, block_n) < 132:
        block_m //= 2
    big = terms * block_m * block_n >= 128 * 128
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=128, GROUP_N=8, num_warps=8 if big else 4,
                num_stages=3 if big else 5)


def launch_prefill_fp8(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
                       bias: torch.Tensor | None, config: dict | None = None, terms: int = 1) -> torch.Tensor:
    """x2 (M, K) contiguous bf16/fp16, quantized to FP8 per row and weight group (``terms`` 2: as two FP8 terms,
    per-channel weights only), times the FP8 weight on the FP8 tensor cores; (M, N) in x2's dtype. ``fp8_step``
    must be nonzero for these groups. ``config["PROMOTE"]`` (per-channel weights): sum each K step's product in
    fp32 (``_prefill_fp8``); by default on for two terms, whose point is accuracy, off for one term (measured so)."""
    M, K = x2.shape
    N, G = weight.shape[0], scale.shape[1]
    cfg = dict(prefill_fp8_config(M, N, G, terms), **(config or {}))
    block_k = fp8_step(G, K, group_k, k_offset, cfg["BLOCK_K"])
    if not block_k:
        raise ValueError(f"fp8_triton: no FP8 K step fits groups of {group_k} at offset {k_offset}")
    q, qs = quantize_groups(x2, G, group_k, k_offset, terms)
    if terms == 1:
        q, qs = q[None], qs[None]
    st = scale.t().contiguous()  # (G, N): 1/32 of the weight's bytes at 128-wide groups, per call
    out = torch.empty((M, N), device=x2.device, dtype=x2.dtype)
    grid = (cdiv(M, cfg["BLOCK_M"]) * cdiv(N, cfg["BLOCK_N"]),)
    launch_cache.launch(_prefill_fp8, grid, q, qs, weight, st, bias if bias is not None else x2, out, M, N, K,
                        group_k, k_offset, q.stride(1), qs.stride(2), weight.stride(0), st.stride(0), out.stride(0),
                        q.stride(0), qs.stride(0), ONE_GROUP=G == 1, HAS_BIAS=bias is not None,
                        EVEN_K=K % block_k == 0, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=block_k,
                        GROUP_N=cfg["GROUP_N"], TWO_TERM=terms == 2,
                        PROMOTE=bool(cfg.get("PROMOTE", terms == 2)) and G == 1, num_warps=cfg["num_warps"],
                        num_stages=cfg["num_stages"])
    return out


# Above DOT_MAX_M rows (prefill) the skinny kernels stop. Up to PREFILL_MAX_M rows ``_prefill`` reads the FP8
# weight once; above, the launcher dequantizes the weight (one Triton pass) and calls cuBLAS, which is faster
# there: one H100, one Llama-3-8B layer's four GEMMs, block scales, us (benchmarks/RESULTS.md, 2026-12-05):
#   M     bf16   _prefill (prefill_config's tiles)   dequantize + cuBLAS
#   128   191    295                                 434
#   192   198    483                                 447
#   512   300    902                                 543
# (it wins while the weight's bytes dominate: built for sm_90 by Triton 3.6, every tile runs the warp-group MMA,
# but the widened weight goes back to shared memory and each K step waits for its MMAs (the W @ x^T form keeps
# it in registers, and ptxas then serializes the MMAs, C7515, in most tiles): 414 TFLOPs at best at 2048 rows
# against cuBLAS's 776; benchmarks/RESULTS.md, seventeenth session). With FP8 activations (TPConfig.fp8_activations)
# prefill sizes run ``_prefill_fp8`` where its K step fits the groups (``fp8_step``): per-channel weights at
# every size (128 / 265 / 885 us at M = 128 / 512 / 2048 against bf16's 191 / 300 / 1141), block weights up to
# PREFILL_FP8_BLOCK_MAX_M rows (233 / 470 / 1662 us at the sweep's best tiles, which prefill_fp8_config now picks:
# each K step's product is scaled before it is summed, which serializes the MMAs; above 512 rows dequantize +
# cuBLAS is faster).
# Per-channel weights can also take x as two FP8 terms (``_quantize_groups`` TWO_TERM): as accurate as keeping x
# in bf16 (benchmarks/fp8_act_emulation.py: SmolLM2 passes gpu_check's criterion, one term fails it; on the GPU,
# gpu_check passed with every call forced onto it), at twice one term's MMAs. Up to PREFILL_TWO_TERM_MAX_M rows the
# default path takes it. Its GEMMs win (one H100, per 8B layer, benchmarks/RESULTS.md, eighteenth session: 202.6 us
# at 128 rows by _prefill_fp8 with PROMOTE, 171.4 by cuBLAS (TWO_TERM_SCALED_MM), against the default's 264.6 and
# bf16's 185.4; at 512 rows 538.3 / 445.9 against dequantize + cuBLAS's 541.5), but an eager prefill forward is
# host-bound and got slower with them (8B, 128 tokens: 43.8 / 45.6 ms against 36.4; bf16 21.6): off (0) until
# benchmarks/prefill_profile.py shows where that host time goes.
DOT_MAX_M = 64
PREFILL_MAX_M = 128
PREFILL_FP8_BLOCK_MAX_M = 512
PREFILL_TWO_TERM_MAX_M = 0
# The same kernel at decode sizes (per-channel weights, up to DECODE_TWO_TERM_MAX_M rows): the weight goes to the
# FP8 tensor cores as read, where the decode kernels widen every weight in registers. Slower all the same (one
# H100, per 8B layer at 1 / 8 rows: 118.4 / 120.5 us against 96.9 / 111.9; benchmarks/fp8_decode_split.py): the
# FP8 MMA needs 64 rows, so one row pays for 64. Off.
DECODE_TWO_TERM_MAX_M = 0
# Prefill's two terms by cuBLAS (``launch_two_term_scaled_mm``) instead of ``_prefill_fp8``, on sm_90 only
# (``_on_hopper``): faster per GEMM (above), a little less exact (2.44e-3 against 1.79e-3 relative L2 from the
# exact product: its halves are rounded to bf16 before the sum). Applies where PREFILL_TWO_TERM_MAX_M does.
TWO_TERM_SCALED_MM = False


@functools.lru_cache(maxsize=None)
def _on_hopper(device: torch.device) -> bool:
    """Where cuBLAS's two terms were measured (sm_90); elsewhere row-wise ``torch._scaled_mm`` may be missing or
    slower, and the Triton kernel runs."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) == (9, 0)


def launch_two_term_scaled_mm(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                              bias: torch.Tensor | None, fast_accum: bool = False) -> torch.Tensor:
    """x2 (M, K) as two FP8 terms (``quantize_groups``, terms 2) times a per-channel FP8 weight (scale (N, 1)) by
    one cuBLAS FP8 GEMM (``torch._scaled_mm``, row-wise scales): both terms' rows stacked as 2M rows, the halves
    summed once in fp32 and rounded to x2's dtype. ``fast_accum`` False: each K step's product summed in fp32, as
    PROMOTE does in ``_prefill_fp8``."""
    M, K = x2.shape
    q, qs = quantize_groups(x2, 1, K, 0, terms=2)
    scale_b = scale.reshape(1, -1).float().contiguous()
    both = torch._scaled_mm(q.view(2 * M, K), weight.t(), scale_a=qs.reshape(2 * M, 1).contiguous(),
                            scale_b=scale_b, out_dtype=torch.bfloat16, use_fast_accum=fast_accum)
    out = torch.add(both[:M], both[M:]) if x2.dtype == torch.bfloat16 else (both[:M].float() + both[M:]).to(x2.dtype)
    return out if bias is None else out.add_(bias)


def takes_fp16(M: int, N: int, K: int, G: int, group_k: int, k_offset: int) -> bool:
    """Whether a call of M bf16 rows runs the tl.dot kernel or the GEMV in fp16 ("X16" in its measured config),
    so that the caller can make the activations' fp16 copy where Inductor fuses it into the step that made them."""
    if M > DOT_MAX_M or (G == 1 and M <= DECODE_TWO_TERM_MAX_M):
        return False
    path, cfg = gemv_triton.choose(M, N, K, 1, path=None, scales="channel" if G == 1 else "block")
    if path == "gemv":  # per channel only (the GEMV's block scales do not take it)
        return G == 1 and gemv_triton.takes_fp16(cfg, 1, torch.bfloat16, 1, "gemv")
    if G == 1:
        mode = 1
    else:
        block_k = max(16, min(cfg["BLOCK_K"], next_power_of_2(K), gemv_triton.pow2_at_most(group_k)))
        mode = 2 if group_k % block_k == 0 and k_offset % block_k == 0 else 3
    return gemv_triton.takes_fp16(cfg, 1, torch.bfloat16, mode)


def choose_path(M: int, K: int, G: int, group_k: int, k_offset: int, act_fp8: bool = False,
                epilogue: bool = False) -> str | None:
    """``launch``'s path for M rows by the measured limits above ("two_term", "prefill_fp8", "prefill" or
    "dequant"); None: the decode kernels, whose own table picks the form. ``epilogue``: a norm or glu_out form."""
    if M <= DOT_MAX_M:
        return "two_term" if G == 1 and M <= DECODE_TWO_TERM_MAX_M and not epilogue else None
    if act_fp8 and not epilogue and (G == 1 or M <= PREFILL_FP8_BLOCK_MAX_M) and fp8_step(G, K, group_k, k_offset):
        return "prefill_fp8"
    if G == 1 and M <= PREFILL_TWO_TERM_MAX_M and not epilogue:
        return "two_term"
    return "prefill" if M <= PREFILL_MAX_M and not epilogue else "dequant"


def launch(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
           bias: torch.Tensor | None, config: dict | None = None, path: str | None = None,
           x16: torch.Tensor | None = None, norm: dict | None = None, act_fp8: bool = False,
           glu_out: bool = False, out16: torch.Tensor | None = None) -> torch.Tensor:
    """x2 (M, K) contiguous; returns (M, N) in x2's dtype. ``path`` ("gemv", "skinny" for the tl.dot kernel,
    "prefill", "prefill_fp8", "two_term" for x as two FP8 terms, "two_term_mm" for the same by cuBLAS, "dequant")
    and ``config`` override the measured choice (tests and the benchmark's sweep use them). ``act_fp8``: above
    DOT_MAX_M rows, x quantized to FP8 (TPConfig.fp8_activations).
    ``x16``: x2 in fp16 (contiguous), for the calls ``takes_fp16`` names. ``norm``: gemv_triton.launch's norm
    arguments (norm_weight, eps, residual, h_out, x_out): the GEMM of the RMSNorm of x2 (+ residual), decode
    sizes only. ``glu_out`` (with ``out16``): the weight is [gate | up] and the result silu(gate) * up (M, N / 2),
    made in the GEMM's epilogue (gemv_triton.launch's arguments), decode sizes only."""
    M, K = x2.shape
    N, G = weight.shape[0], scale.shape[1]
    epilogue = bool(norm) or glu_out
    if path is None:
        path = choose_path(M, K, G, group_k, k_offset, act_fp8, epilogue)
    if epilogue and path in ("prefill", "dequant", "prefill_fp8", "two_term"):
        raise ValueError(f"fp8_triton: the norm and glu_out forms run on the decode kernels only (at most "
                         f"{DOT_MAX_M} rows, paths gemv and skinny), not on path {path!r} ({M} rows)")
    if path == "two_term" and TWO_TERM_SCALED_MM and M > DOT_MAX_M and config is None and _on_hopper(x2.device):
        path = "two_term_mm"
    if path == "two_term_mm":
        return launch_two_term_scaled_mm(x2, weight, scale, bias)
    if path in ("prefill_fp8", "two_term"):
        return launch_prefill_fp8(x2, weight, scale, group_k, k_offset, bias, config,
                                  terms=2 if path == "two_term" else 1)
    if path == "prefill":
        return launch_prefill(x2, weight, scale, group_k, k_offset, bias, config)
    if path == "dequant":
        wd = torch.empty((N, K), device=x2.device, dtype=x2.dtype)
        block_k = 128 if G == 1 else min(128, gemv_triton.pow2_at_most(group_k))
        grid = (cdiv(N, 32), cdiv(K, block_k))
        launch_cache.launch(_dequant, grid, weight, scale, wd, N, K, G, group_k, k_offset, weight.stride(0),
                            scale.stride(0), wd.stride(0), BLOCK_N=32, BLOCK_K=block_k, num_warps=4)
        return torch.nn.functional.linear(x2, wd, bias)
    return gemv_triton.launch(x2, weight, scale, group_k, k_offset, bias, config=config,
                              path={None: None, "gemv": "gemv", "skinny": "dot"}[path], x16=x16, glu_out=glu_out,
                              out16=out16, **(norm or {}))
