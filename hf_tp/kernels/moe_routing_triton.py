"""The Triton code of hf_tp/kernels/moe_routing.py, imported on first use (Triton reads TRITON_INTERPRET when a
kernel is defined, so a CPU test can set it before). What each step reproduces, and why, is said there.

Every reduction below is written so that its order of additions is a fixed one (PyTorch's), not Triton's:
sums over an axis of size 2 (one addition), or over an axis where all but one value are zero (exact)."""

from __future__ import annotations

import triton
import triton.language as tl

try:  # CUDA's expf (tl.exp is the faster ex2.approx, a few ulp away from torch's exp)
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - older layout of Triton's packages
    from triton.language.extra.cuda import libdevice

SORT_SIZE = tl.constexpr(32)  # PyTorch's small bitonic sort: 16 threads x 2 items, k <= 32 padded with invalid items


@triton.jit
def _pick(x, onehot):
    """x at the one position where ``onehot`` (same shape, or broadcast) is true; exact (the rest adds zeros)."""
    return tl.sum(tl.where(onehot, x, tl.zeros_like(x)), axis=0)


@triton.jit
def _bitonic_stage(keys, ids, valid, SIZE: tl.constexpr, STRIDE: tl.constexpr, FINAL: tl.constexpr):
    """One compare-exchange stage of PyTorch's bitonicSort over SORT_SIZE items (SortUtils.cuh): items pos and
    pos + STRIDE (pos with bit STRIDE clear); GTOp for a descending sort, invalid items sort to the end:
    swap = (key_a > key_b and valid_a) or not valid_b, exchanged when swap equals the direction, which is
    ((pos & SIZE) != 0) while merging and False in the final pass."""
    GROUPS: tl.constexpr = SORT_SIZE // (2 * STRIDE)
    half = tl.arange(0, 2)[None, :, None]
    k3 = tl.reshape(keys, (GROUPS, 2, STRIDE))
    i3 = tl.reshape(ids, (GROUPS, 2, STRIDE))
    v3 = tl.reshape(valid, (GROUPS, 2, STRIDE))  # int32 0/1
    ka = tl.sum(tl.where(half == 0, k3, 0.0), axis=1)  # (GROUPS, STRIDE): exact, one term is nonzero
    kb = tl.sum(tl.where(half == 1, k3, 0.0), axis=1)
    ia = tl.sum(tl.where(half == 0, i3, 0), axis=1)
    ib = tl.sum(tl.where(half == 1, i3, 0), axis=1)
    va = tl.sum(tl.where(half == 0, v3, 0), axis=1)
    vb = tl.sum(tl.where(half == 1, v3, 0), axis=1)
    swap = ((ka > kb) & (va != 0)) | (vb == 0)
    if FINAL:
        exchange = swap == 0
    else:
        pos = tl.arange(0, GROUPS)[:, None] * (2 * STRIDE) + tl.arange(0, STRIDE)[None, :]
        exchange = swap == ((pos & SIZE) != 0)
    na, nb = tl.where(exchange, kb, ka), tl.where(exchange, ka, kb)
    keys = tl.reshape(tl.where(half == 0, na[:, None, :], nb[:, None, :]), (SORT_SIZE,))
    na, nb = tl.where(exchange, ib, ia), tl.where(exchange, ia, ib)
    ids = tl.reshape(tl.where(half == 0, na[:, None, :], nb[:, None, :]), (SORT_SIZE,))
    na, nb = tl.where(exchange, vb, va), tl.where(exchange, va, vb)
    valid = tl.reshape(tl.where(half == 0, na[:, None, :], nb[:, None, :]), (SORT_SIZE,))
    return keys, ids, valid


@triton.jit
def route_kernel(logits_ptr, weights_ptr, ids_ptr, experts, stride_l, stride_w, stride_i,
                 TOP_K: tl.constexpr, BLOCK_E: tl.constexpr, WARP: tl.constexpr, LANES_K: tl.constexpr,
                 RENORMALIZE: tl.constexpr, ROUND_BF16: tl.constexpr, LIBDEVICE_EXP: tl.constexpr,
                 TORCH_ORDER: tl.constexpr, PDL: tl.constexpr = False):
    if PDL:  # launched with programmatic dependent launch (hf_tp.kernels.pdl): nothing touched before this
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    token = tl.program_id(0)
    offs = tl.arange(0, BLOCK_E)
    valid_e = offs < experts
    x = tl.load(logits_ptr + token * stride_l + offs, mask=valid_e, other=float("-inf")).to(tl.float32)
    if LIBDEVICE_EXP:
        e = libdevice.exp(x - tl.max(x, axis=0))
    else:  # Triton's interpreter has no libdevice
        e = tl.exp(x - tl.max(x, axis=0))
    e = tl.where(valid_e, e, 0.0)

    # 1. The softmax's sum in torch's order: lane l adds e[l], e[l + WARP], ... in turn, then the lanes are
    # combined by an xor butterfly (lane l with l ^ WARP/2, then ^ WARP/4, ...).
    ITER: tl.constexpr = BLOCK_E // WARP
    rows = tl.reshape(e, (ITER, WARP))
    row_id = tl.arange(0, ITER)[:, None]
    lanes = tl.zeros([WARP], tl.float32)
    for i in tl.static_range(ITER):
        lanes += _pick(rows, row_id == i)
    if WARP >= 32:
        lanes = tl.sum(tl.reshape(lanes, (2, 16)), axis=0)
    if WARP >= 16:
        lanes = tl.sum(tl.reshape(lanes, (2, 8)), axis=0)
    if WARP >= 8:
        lanes = tl.sum(tl.reshape(lanes, (2, 4)), axis=0)
    if WARP >= 4:
        lanes = tl.sum(tl.reshape(lanes, (2, 2)), axis=0)
    if WARP >= 2:
        lanes = tl.sum(tl.reshape(lanes, (2, 1)), axis=0)
    probs = tl.math.div_rn(e, tl.sum(lanes, axis=0))

    # 2. The top k by k rounds of argmax, equal probabilities to the lowest id: the set torch.topk's select
    # kernel keeps. One reduction a round: a probability (>= 0, so its float bits order as integers) and its id
    # packed into one int64 key, the lower id winning among equal probabilities; padding and taken lanes (-1)
    # rank below every key. The rounds also note whether two chosen probabilities are equal.
    ID_BITS: tl.constexpr = 32
    key = (probs.to(tl.int32, bitcast=True).to(tl.int64) << ID_BITS) | (BLOCK_E - 1 - offs).to(tl.int64)
    key = tl.where(valid_e, key, -1)
    slot = tl.arange(0, SORT_SIZE)
    top_p = tl.zeros([SORT_SIZE], tl.float32)
    top_id = tl.zeros([SORT_SIZE], tl.int32)
    kth = 0.0
    tie = 0
    for j in tl.static_range(TOP_K):
        best = tl.max(key, axis=0)
        pick = BLOCK_E - 1 - best.to(tl.int32)  # the low 32 bits
        value = (best >> ID_BITS).to(tl.int32).to(tl.float32, bitcast=True)
        if j > 0:
            tie = tie | (value == kth).to(tl.int32)  # the rounds give decreasing values: equal ones are adjacent
        kth = value
        top_p = tl.where(slot == j, kth, top_p)
        top_id = tl.where(slot == j, pick, top_id)
        key = tl.where(offs == pick, -1, key)

    # 3. torch.topk's order. Distinct values: decreasing, as the rounds found them (its sort is a sort). Equal
    # values (a run-time branch, per token): its select kernel writes the values above the k-th
    # in id order, then the ones equal to it in id order; its sort (k <= 32: a bitonic network over 32 items)
    # then orders them, equal values where the network leaves them. The same network on the same input gives
    # the same order.
    taken = slot < TOP_K
    keys, ids = top_p, top_id
    if TORCH_ORDER:
        if tie != 0:
            above = taken & (top_p > kth)
            n_above = tl.sum(above.to(tl.int32), axis=0)
            lower = (top_id[None, :] < top_id[:, None]) & taken[None, :]  # [j, r]: r is a chosen id below j's
            before_above = tl.sum((lower & above[None, :]).to(tl.int32), axis=1)
            before_equal = tl.sum((lower & (above[None, :] == 0)).to(tl.int32), axis=1)
            where_in = tl.where(above, before_above, n_above + before_equal)  # select kernel's output position of j
            placed = (where_in[:, None] == slot[None, :]) & taken[:, None]  # [j, position]
            keys = _pick(tl.broadcast_to(top_p[:, None], (SORT_SIZE, SORT_SIZE)), placed)
            ids = _pick(tl.broadcast_to(top_id[:, None], (SORT_SIZE, SORT_SIZE)), placed)
            valid = taken.to(tl.int32)
            for lg in tl.static_range(1, 5):  # merging: sizes 2, 4, 8, 16
                for m in tl.static_range(lg):
                    keys, ids, valid = _bitonic_stage(keys, ids, valid, 1 << lg, 1 << (lg - 1 - m), False)
            for m in tl.static_range(5):  # final pass: strides 16 .. 1
                keys, ids, valid = _bitonic_stage(keys, ids, valid, SORT_SIZE, 16 >> m, True)
    # TORCH_ORDER off (benchmarks: what the order costs): equal probabilities stay in id order

    # 4. Renormalisation: the k values' sum in the order of PyTorch's CUDA sum over a row of k <= 8 values (a
    # lane per value, W = LANES_K lanes: lane l holds value l plus value l + W when k > l + W; then a
    # shuffle-down tree with decreasing offsets, W/2 first, as Reduce.cuh's block_x_reduce has it on CUDA).
    # Values equal in torch's order and in rank order where they differ, so either order gives this sum.
    if RENORMALIZE:
        part = tl.reshape(top_p, (SORT_SIZE // (2 * LANES_K), 2, LANES_K))
        part = tl.sum(tl.sum(part, axis=1), axis=0)  # (LANES_K,): groups past the first hold zeros only
        if LANES_K >= 8:
            part = tl.sum(tl.reshape(part, (2, 4)), axis=0)
        if LANES_K >= 4:
            part = tl.sum(tl.reshape(part, (2, 2)), axis=0)
        if LANES_K >= 2:
            part = tl.sum(tl.reshape(part, (2, 1)), axis=0)
        weights = tl.math.div_rn(keys, tl.sum(part, axis=0))
    else:
        weights = keys
    if ROUND_BF16:
        # Round to nearest even by hand, so that the cast below is exact: Triton's interpreter truncates to
        # bf16. Weights lie in [0, 1]: no sign, infinity or NaN to care for.
        bits = weights.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        weights = bits.to(tl.float32, bitcast=True)
    tl.store(weights_ptr + token * stride_w + slot, weights.to(weights_ptr.dtype.element_ty), mask=taken)
    tl.store(ids_ptr + token * stride_i + slot, ids.to(tl.int64), mask=taken)
