"""Decode-time MoE experts: Triton programs per (token, chosen expert, block of outputs), reading only the
experts the router chose.

Transformers' grouped path sorts the (token, expert) pairs by expert, counts them per expert and runs a
grouped GEMM over all experts (offsets skip the empty ones): at batch 1 that is a sort, a histogram, gathers
and a GEMM kernel sized for prefill, for 8 small matrix-vector products. Here, for T tokens with top-k
experts each (P = T * k pairs):

  1. gate/up: program (pair, block of intermediate features) reads x[token] and the block's gate and up rows of
     expert ids[pair], accumulates both in fp32, and stores silu(gate) * up, rounded once to the input dtype
     (Transformers rounds the product too before the down projection);
  2. down: program (pair, block of hidden features) reads that pair's activation and the block's rows of the
     expert's down projection, and stores routing weight * result in fp32 (the weight applied in the epilogue);
  3. the k pairs of each token are summed in fp32 (a fixed order: no atomics, the same result every run) and
     rounded once to the input dtype, as Transformers' grouped path sums them.
  Steps 2 and 3 can also be one kernel (DOWN_BLOCKS' fourth entry): program (token, block of hidden features)
  reads all k pairs' activations and down rows and writes the rounded sum.

Every shape depends only on T, k and the weights' shapes, and nothing is read back to the host, so the
launches (two with the summing down kernel, three and torch's sum without) stay inside the decode step's CUDA
graph. The ids and weights are the router's: Transformers' own, or
hf_tp's routing kernel (hf_tp/kernels/moe_routing.py), which chooses the experts torch.topk chooses on CUDA.

``experts_reference`` is what the kernels compute, in plain torch; it is the tests' yardstick.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import pdl as pdl_launch
from .sizes import cdiv, next_power_of_2

# Tokens per experts call at or below which the kernels run; above it the grouped GEMM path reads each
# touched expert once for all its tokens, while the kernels read an expert once per (token, expert) pair.
# Measured on one H200 (benchmarks/moe_switch.py, benchmarks/RESULTS.md 2026-12-03 second session), Qwen3-30B-A3B
# experts, µs per layer, kernels (the earlier blocks) / grouped: 48.4 / 104.0 at 1 token, 151.5 / 225.1 at 8,
# 257.9 / 266.3 at 16. 16 would still pay, barely; 8 is kept until a decode step at 9-16 tokens is measured.
MOE_DECODE_MAX_TOKENS = 8

# Block sizes: (outputs per program, reduction chunk, warps[, down: sums the pairs]), the fastest of
# `benchmarks/moe_switch.py --sweep` summed over expert widths 768 and 384 at 1 token on one H200. Few outputs
# per program and long chunks: a batch-1 call is latency-bound, so many programs, each with few long loads in
# flight, beat fewer programs walking the reduction in many short steps (one experts call, gate/up's blocks swept with down's earlier
# (32, 128, 4): 33.1 instead of 48.4 µs per layer at width 768 against the earlier (16, 256, 4), 20.7 instead of
# 41.7 at 384; down (16, 128, 8) then saved about 1 µs more). 2026-12-04: the summing down kernel, (2, 256, 4),
# took 23.3 / 14.6 µs per layer at widths 768 / 384 against the best per-pair form's 27.7 / 18.0 with torch's sum
# (benchmarks/RESULTS.md).
# Down's fourth entry: whether one program sums its token's k pairs itself (grid tokens x hidden blocks: the
# output is written once, in the input dtype, and no separate sum and cast kernels run) or each pair writes its
# fp32 product and torch sums them (grid pairs x hidden blocks: k times the programs).
GATE_UP_BLOCKS = (4, 1024, 4)
DOWN_BLOCKS = (2, 256, 4, True)


def experts_reference(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, ids: torch.Tensor,
                      weights: torch.Tensor) -> torch.Tensor:
    """x (T, H); gate_up (E, 2I, H) [gate; up]; down (E, H, I); ids, weights (T, k). Returns (T, H) in x's dtype:
    sum over the k chosen experts of weight * down(silu(gate x) * up x), with the rounding the kernels do."""
    tokens, top_k = ids.shape
    inter = down.shape[-1]
    pair_x = x.repeat_interleave(top_k, dim=0).float()  # (P, H)
    flat = ids.reshape(-1)
    gu = torch.einsum("ph,pnh->pn", pair_x, gate_up[flat].float())
    act = (F.silu(gu[:, :inter]) * gu[:, inter:]).to(x.dtype).float()
    out = torch.einsum("pi,phi->ph", act, down[flat].float()) * weights.reshape(-1, 1).float()
    return out.view(tokens, top_k, -1).sum(1).to(x.dtype)


@functools.cache
def _kernels():
    """The Triton kernels, built on first use (so that TRITON_INTERPRET, read when a kernel is defined,
    can be set by whoever calls first, e.g. a CPU test)."""
    import triton
    import triton.language as tl

    @triton.jit
    def gate_up_kernel(x_ptr, w_ptr, ids_ptr, act_ptr, hidden, inter, stride_xt, stride_we, stride_wn, stride_at,
                       TOP_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr = False):
        if PDL:  # launched with programmatic dependent launch (hf_tp.kernels.pdl): nothing touched before this
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        pair = tl.program_id(0)
        token = pair // TOP_K
        expert = tl.load(ids_ptr + pair).to(tl.int64)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < inter
        gate_rows = w_ptr + expert * stride_we + offs_n[:, None].to(tl.int64) * stride_wn
        up_rows = gate_rows + inter * stride_wn
        acc_gate = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc_up = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k0 in range(0, hidden, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < hidden
            xv = tl.load(x_ptr + token * stride_xt + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            mask = mask_n[:, None] & mask_k[None, :]
            g = tl.load(gate_rows + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
            u = tl.load(up_rows + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
            acc_gate += tl.sum(g * xv[None, :], axis=1)
            acc_up += tl.sum(u * xv[None, :], axis=1)
        act = acc_gate / (1.0 + tl.exp(-acc_gate)) * acc_up  # silu(gate) * up, in fp32
        tl.store(act_ptr + pair * stride_at + offs_n, act.to(act_ptr.dtype.element_ty), mask=mask_n)

    @triton.jit
    def down_kernel(act_ptr, w_ptr, ids_ptr, rw_ptr, out_ptr, hidden, inter, stride_at, stride_we, stride_wn,
                    stride_ot, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr = False):
        if PDL:  # as in gate_up_kernel
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        pair = tl.program_id(0)
        expert = tl.load(ids_ptr + pair).to(tl.int64)
        route = tl.load(rw_ptr + pair).to(tl.float32)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hidden
        rows = w_ptr + expert * stride_we + offs_n[:, None].to(tl.int64) * stride_wn
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k0 in range(0, inter, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < inter
            a = tl.load(act_ptr + pair * stride_at + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            w = tl.load(rows + offs_k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(w * a[None, :], axis=1)
        tl.store(out_ptr + pair * stride_ot + offs_n, acc * route, mask=mask_n)  # routing weight in the epilogue

    @triton.jit
    def down_sum_kernel(act_ptr, w_ptr, ids_ptr, rw_ptr, out_ptr, hidden, inter, stride_at, stride_we, stride_wn,
                        stride_ot, TOP_K: tl.constexpr, TOP_K_P2: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, PDL: tl.constexpr = False):
        if PDL:  # as in gate_up_kernel
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        # One program: BLOCK_N outputs of one token, all k of its experts at once ((k, BLOCK_N, BLOCK_K) tiles:
        # the k experts' loads of a step are in flight together); the pairs are summed in one fixed order.
        token = tl.program_id(0)
        offs_e = tl.arange(0, TOP_K_P2)
        mask_e = offs_e < TOP_K
        pairs = token * TOP_K + offs_e
        experts = tl.load(ids_ptr + pairs, mask=mask_e, other=0).to(tl.int64)
        routes = tl.load(rw_ptr + pairs, mask=mask_e, other=0.0).to(tl.float32)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hidden
        rows = w_ptr + experts[:, None, None] * stride_we + offs_n[None, :, None].to(tl.int64) * stride_wn
        acts = act_ptr + pairs[:, None].to(tl.int64) * stride_at
        mask_en = mask_e[:, None, None] & mask_n[None, :, None]
        acc = tl.zeros([TOP_K_P2, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, inter, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < inter
            a = tl.load(acts + offs_k[None, :], mask=mask_e[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
            w = tl.load(rows + offs_k[None, None, :], mask=mask_en & mask_k[None, None, :], other=0.0).to(tl.float32)
            acc += tl.sum(w * a[:, None, :], axis=2)
        out = tl.sum(acc * routes[:, None], axis=0)  # routing weights in the epilogue, then the k pairs summed
        tl.store(out_ptr + token * stride_ot + offs_n, out.to(out_ptr.dtype.element_ty), mask=mask_n)

    return triton, gate_up_kernel, down_kernel, down_sum_kernel


def experts_decode(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, ids: torch.Tensor,
                   weights: torch.Tensor, gate_up_blocks=None, down_blocks=None) -> torch.Tensor:
    """The kernels' result for ``experts_reference``'s arguments. Weights need unit stride in their last dim
    (checked once at load by hf_tp.parallel.moe_decode); ``ids``/``weights`` (T, k) as the router returns them."""
    _, gate_up_kernel, down_kernel, down_sum_kernel = _kernels()
    tokens, top_k = ids.shape
    pairs, hidden, inter = tokens * top_k, x.shape[-1], down.shape[-1]
    ids, weights = ids.reshape(-1), weights.reshape(-1)
    x = x.contiguous()
    act = torch.empty(pairs, inter, dtype=x.dtype, device=x.device)
    pdl = pdl_launch.launch_args(x.device)  # programmatic dependent launch, where on (TPConfig.pdl)
    bn, bk, warps = gate_up_blocks or GATE_UP_BLOCKS
    gate_up_kernel[(pairs, cdiv(inter, bn))](
        x, gate_up, ids, act, hidden, inter, x.stride(0), gate_up.stride(0), gate_up.stride(1), act.stride(0),
        TOP_K=top_k, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, **pdl)
    bn, bk, warps, *form = down_blocks or DOWN_BLOCKS
    sums_pairs = bool(form and form[0])  # (outputs, chunk, warps) without the fourth entry: per-pair products
    if sums_pairs:
        out = torch.empty(tokens, hidden, dtype=x.dtype, device=x.device)
        down_sum_kernel[(tokens, cdiv(hidden, bn))](
            act, down, ids, weights, out, hidden, inter, act.stride(0), down.stride(0), down.stride(1), out.stride(0),
            TOP_K=top_k, TOP_K_P2=next_power_of_2(top_k), BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, **pdl)
        return out
    out = torch.empty(pairs, hidden, dtype=torch.float32, device=x.device)
    down_kernel[(pairs, cdiv(hidden, bn))](
        act, down, ids, weights, out, hidden, inter, act.stride(0), down.stride(0), down.stride(1), out.stride(0),
        BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, **pdl)
    return out.view(tokens, top_k, hidden).sum(1).to(x.dtype)


@torch.library.custom_op("hf_tp::moe_experts_decode", mutates_args=())
def moe_experts_decode(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, ids: torch.Tensor,
                       weights: torch.Tensor) -> torch.Tensor:
    """``experts_decode`` as one opaque op: torch.compile (fullgraph) traces the decode step through it, and
    the CUDA graph captures its launches."""
    return experts_decode(x, gate_up, down, ids, weights)


@moe_experts_decode.register_fake
def _(x, gate_up, down, ids, weights):
    return torch.empty_like(x)
