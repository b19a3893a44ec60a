"""Decode-time MoE routing: one Triton program per token turns the router's logits into the chosen experts and
their weights, computed as Transformers' Qwen3-MoE and Mixtral routers compute them on CUDA.

Transformers' router (5.17 and 5.24 alike) runs, per MoE layer, a softmax over the experts in float32,
``torch.topk`` (on CUDA: a radix-select kernel, then a bitonic sort of the k values), optionally a division by
the k values' sum, and a cast: four or five launches for a handful of numbers per token. Here, for T tokens of
at most MOE_ROUTE_MAX_EXPERTS logits each, one launch per call does:

  1. the softmax, in the order PyTorch's CUDA softmax adds (its one-warp-per-row kernel for rows of at most
     1024 values: each lane adds its values at stride ``warp`` in order, then an xor butterfly across the
     lanes), with CUDA's expf (libdevice) and correctly rounded divisions, so that the probabilities are the
     ones torch computes, bit for bit where the two exp implementations agree;
  2. the top k by k rounds of "largest probability, lowest expert id among equal ones" (k <= 8: no sort).
     That is torch.topk's choice on CUDA: its select kernel keeps every value above the k-th, then the
     values equal to it in index order, so a tie at the boundary goes to the lowest ids. (torch.topk on
     CPU resolves ties otherwise, by std::nth_element: the tests compare with the CUDA rule on CPU, and with
     torch.topk itself on a GPU.) The k experts come out by decreasing probability, equal ones by id;
  3. optionally the division by the k probabilities' sum, added in the order PyTorch's CUDA sum over a row
     of k <= 8 values adds them (a lane per value, the values k - W.. added to lanes 0.., W the largest power
     of two <= k, then a tree of neighbouring lanes), and the cast Transformers does.

Expert ids are int64 and the weights float32 or the logits' dtype, shaped (T, k) as Transformers' router
returns them and as hf_tp's experts kernels (hf_tp/kernels/moe_decode.py) read them. Nothing is read back to
the host and every shape depends only on T, so the launch stays inside the decode step's CUDA graph.

``route_reference`` is the same computation in plain torch (ties to the lowest id); it is the tests'
yardstick next to Transformers' routers.
"""

from __future__ import annotations

import functools
import os

import torch

# Router calls of at most this many tokens go through the kernel (decode steps, small prefills); larger calls
# keep Transformers' router. benchmarks/moe_routing_bench.py times both at 1..8 tokens (docs/moe.md).
MOE_ROUTE_MAX_TOKENS = 8
# One program holds a token's whole row of probabilities in registers: enough for 256 experts (DeepSeek-V3's
# count; Qwen3-MoE has 128, Mixtral 8). k is bounded by the k rounds of selection, unrolled in the kernel.
MOE_ROUTE_MAX_EXPERTS = 256
MOE_ROUTE_MAX_TOP_K = 8


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _pow2_at_most(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def route_reference(logits: torch.Tensor, top_k: int, renormalize: bool, cast_weights: bool):
    """(weights, ids) for router logits (T, E): softmax in float32, the k largest probabilities (ties to the
    lowest expert id, as torch.topk on CUDA), divided by their sum if ``renormalize``, rounded to the logits'
    dtype if ``cast_weights`` (Qwen3-MoE) or kept in float32 (Mixtral)."""
    probs = torch.softmax(logits.float(), dim=-1)
    order = torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :top_k]
    values = probs.gather(-1, order)
    if renormalize:
        values = values / values.sum(dim=-1, keepdim=True)
    return (values.to(logits.dtype) if cast_weights else values), order


@functools.cache
def _kernel():
    """The Triton kernel, built on first use (TRITON_INTERPRET is read when a kernel is defined, so a CPU
    test can set it before the first call)."""
    import triton
    import triton.language as tl

    try:  # CUDA's expf as a Triton function (tl.exp is the faster ex2.approx, a few ulp off torch's exp)
        from triton.language.extra import libdevice
    except ImportError:  # pragma: no cover - older layout of Triton's packages
        from triton.language.extra.cuda import libdevice

    @triton.jit
    def route_kernel(logits_ptr, weights_ptr, ids_ptr, experts, stride_l, stride_w, stride_i,
                     TOP_K: tl.constexpr, BLOCK_E: tl.constexpr, WARP: tl.constexpr, LANES_K: tl.constexpr,
                     RENORMALIZE: tl.constexpr, ROUND_BF16: tl.constexpr, LIBDEVICE_EXP: tl.constexpr):
        token = tl.program_id(0)
        offs = tl.arange(0, BLOCK_E)
        valid = offs < experts
        x = tl.load(logits_ptr + token * stride_l + offs, mask=valid, other=float("-inf")).to(tl.float32)
        if LIBDEVICE_EXP:
            e = libdevice.exp(x - tl.max(x, axis=0))
        else:  # Triton's interpreter has no libdevice
            e = tl.exp(x - tl.max(x, axis=0))
        e = tl.where(valid, e, 0.0)

        # The softmax's sum, in torch's order: lane l adds e[l], e[l + WARP], ... in turn (from 0, as torch
        # does), then the lanes are combined by an xor butterfly (lane l with l ^ WARP/2, ^ WARP/4, ...).
        ITER: tl.constexpr = BLOCK_E // WARP
        rows = tl.reshape(e, (ITER, WARP))
        row_id = tl.arange(0, ITER)[:, None]
        lanes = tl.zeros([WARP], tl.float32)
        for i in tl.static_range(ITER):
            lanes += tl.sum(tl.where(row_id == i, rows, 0.0), axis=0)  # row i alone: adding zeros is exact
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

        # Top k by k rounds of argmax; equal probabilities go to the lowest id (torch.topk on CUDA). Padding
        # lanes (-1) and lanes already taken (-2) rank below every probability (>= 0).
        left = tl.where(valid, probs, -1.0)
        rank = tl.full([BLOCK_E], -1, tl.int32)
        slot = tl.arange(0, 2 * LANES_K)
        chosen = tl.zeros([2 * LANES_K], tl.float32)
        for j in tl.static_range(TOP_K):
            best = tl.max(left, axis=0)
            pick = tl.min(tl.where(left == best, offs, BLOCK_E), axis=0)
            rank = tl.where(offs == pick, j, rank)
            chosen = tl.where(slot == j, best, chosen)
            left = tl.where(offs == pick, -2.0, left)

        if RENORMALIZE:
            # The k values' sum in torch's order for a row of k: lane l of W = LANES_K holds value l plus
            # value l + W (if k > l + W), then neighbouring lanes are added (shuffle-down by 1, 2, 4).
            part = tl.sum(tl.reshape(chosen, (2, LANES_K)), axis=0)
            if LANES_K >= 8:
                part = tl.sum(tl.reshape(part, (4, 2)), axis=1)
            if LANES_K >= 4:
                part = tl.sum(tl.reshape(part, (2, 2)), axis=1)
            if LANES_K >= 2:
                part = tl.sum(tl.reshape(part, (1, 2)), axis=1)
            weights = tl.math.div_rn(probs, tl.sum(part, axis=0))
        else:
            weights = probs
        if ROUND_BF16:
            # Round to nearest even by hand, then the cast is exact: Triton's interpreter truncates to bf16.
            # (Weights are in [0, 1]: no sign, infinity or NaN to care for.)
            bits = weights.to(tl.int32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
            weights = bits.to(tl.float32, bitcast=True)
        taken = rank >= 0
        tl.store(weights_ptr + token * stride_w + rank, weights.to(weights_ptr.dtype.element_ty), mask=taken)
        tl.store(ids_ptr + token * stride_i + rank, offs.to(tl.int64), mask=taken)

    return route_kernel


def route(logits: torch.Tensor, top_k: int, renormalize: bool, cast_weights: bool):
    """The kernel's (weights, ids) for ``route_reference``'s arguments; logits (T, E) with E <=
    MOE_ROUTE_MAX_EXPERTS, 1 <= top_k <= min(E, MOE_ROUTE_MAX_TOP_K)."""
    tokens, experts = logits.shape
    if not (1 <= top_k <= min(experts, MOE_ROUTE_MAX_TOP_K) and experts <= MOE_ROUTE_MAX_EXPERTS):
        raise ValueError(f"moe_route: top_k {top_k} of {experts} experts is outside the kernel's range "
                         f"(E <= {MOE_ROUTE_MAX_EXPERTS}, k <= {MOE_ROUTE_MAX_TOP_K})")
    logits = logits.contiguous()
    weights = torch.empty(tokens, top_k, dtype=logits.dtype if cast_weights else torch.float32, device=logits.device)
    ids = torch.empty(tokens, top_k, dtype=torch.int64, device=logits.device)
    if tokens == 0:
        return weights, ids
    block = _pow2_at_least(experts)
    # torch's one-warp-per-row softmax uses min(next power of two of E, 32) lanes.
    _kernel()[(tokens,)](logits, weights, ids, experts, logits.stride(0), weights.stride(0), ids.stride(0),
                         TOP_K=top_k, BLOCK_E=block, WARP=min(block, 32), LANES_K=_pow2_at_most(top_k),
                         RENORMALIZE=renormalize, ROUND_BF16=weights.dtype == torch.bfloat16,
                         LIBDEVICE_EXP=os.environ.get("TRITON_INTERPRET", "") != "1",
                         num_warps=1 if block <= 128 else 2)
    return weights, ids


@torch.library.custom_op("hf_tp::moe_route", mutates_args=())
def moe_route(logits: torch.Tensor, top_k: int, renormalize: bool, cast_weights: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``route`` as one opaque op: torch.compile (fullgraph) traces the decode step through it, and the CUDA
    graph captures its launch."""
    return route(logits, top_k, renormalize, cast_weights)


@moe_route.register_fake
def _(logits, top_k, renormalize, cast_weights):
    tokens = logits.shape[0]
    weights = logits.new_empty(tokens, top_k, dtype=logits.dtype if cast_weights else torch.float32)
    return weights, logits.new_empty(tokens, top_k, dtype=torch.int64)
