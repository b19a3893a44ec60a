"""Decode-time MoE routing: one Triton program per token turns the router's logits into the chosen experts and
their weights, as Transformers' Qwen3-MoE and Mixtral routers compute them on CUDA, bit for bit.

Transformers' router (5.17 and 5.24 alike) runs, per MoE layer, a softmax over the experts in float32,
``torch.topk`` (on CUDA: a radix-select kernel, then a bitonic sort of the k values), optionally a division by
the k values' sum, and a cast: four to six launches for a handful of numbers per token. Here, for T tokens of
at most MOE_ROUTE_MAX_EXPERTS logits each, one launch per call (hf_tp/kernels/moe_routing_triton.py) does:

  1. the softmax, adding in the order PyTorch's CUDA softmax adds (its one-warp-per-row kernel for rows of at
     most 1024 values: each lane adds its values at stride ``warp`` in turn, then an xor butterfly across the
     lanes), with CUDA's expf (libdevice) and correctly rounded divisions: torch's probabilities, bit for bit;
  2. the top k by k rounds of "largest probability, lowest expert id among equal ones" (k <= 8: no sort), one
     integer max a round over (probability bits, id) keys: torch.topk's choice on CUDA, whose select kernel
     keeps every value above the k-th, then the values equal to it in index order;
  3. torch.topk's order: distinct values come out decreasing, as the rounds found them. Where two chosen
     probabilities are equal (frequent: bf16 logits tie often; a branch taken per token), the select kernel's
     output order (values above the k-th by id, then the equal ones by id) goes through the same 32-item
     bitonic network as PyTorch's small sort, so that they come out in the order Transformers gets;
  4. optionally the division by the k probabilities' sum, added in the order PyTorch's CUDA sum over a row
     of k <= 8 values adds them (W lanes, W the largest power of two <= k, lane l holding value l plus value
     l + W; then a shuffle-down tree, W/2 apart first), and the cast Transformers does.

torch.topk on CPU resolves ties otherwise (std::nth_element): the kernel follows CUDA, where it runs.
Expert ids are int64 and the weights float32 or the logits' dtype, shaped (T, k) as Transformers' router
returns them and as hf_tp's experts kernels (hf_tp/kernels/moe_decode.py) read them. Nothing is read back to
the host and every shape depends only on T, so the launch stays inside the decode step's CUDA graph.

``route_reference`` computes the same in plain torch and Python on any device (``topk_cuda_order`` for the
choice and order of step 2-3); it is the CPU tests' yardstick next to Transformers' routers.
"""

from __future__ import annotations

import functools
import os

import torch

from . import pdl as pdl_launch

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


def _bitonic_order(values: list, ids: list) -> list:
    """The ids in the order PyTorch's small bitonic sort (SortUtils.cuh, descending, 32 items: 16 threads of 2)
    leaves ``values``/``ids`` (k <= 32 items, padded with invalid ones that sort to the end)."""
    size_k = len(values)
    keys, idx, valid = values + [0.0] * (32 - size_k), ids + [0] * (32 - size_k), [True] * size_k + [False] * (32 - size_k)

    def stage(size, stride, final):
        for thread in range(16):
            a = 2 * thread - (thread & (stride - 1))
            b = a + stride
            swap = (keys[a] > keys[b] and valid[a]) or not valid[b]
            if swap == (False if final else (thread & (size // 2)) != 0):
                keys[a], keys[b], idx[a], idx[b], valid[a], valid[b] = keys[b], keys[a], idx[b], idx[a], valid[b], valid[a]

    for log_size in range(1, 5):
        for m in range(log_size):
            stage(1 << log_size, 1 << (log_size - 1 - m), False)
    for m in range(5):
        stage(32, 16 >> m, True)
    return idx[:size_k]


def topk_cuda_order(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """The expert ids torch.topk(probs, top_k) returns on CUDA (sorted, k <= 32), computed on any device: its
    select kernel keeps the values above the k-th and the lowest ids among those equal to it, written in id
    order (above first), then its bitonic sort orders them."""
    out = []
    for row in probs.tolist():
        kth = sorted(row, reverse=True)[top_k - 1]
        above = [i for i, v in enumerate(row) if v > kth]
        chosen = above + [i for i, v in enumerate(row) if v == kth][: top_k - len(above)]
        out.append(_bitonic_order([row[i] for i in chosen], chosen))
    return torch.tensor(out, dtype=torch.int64, device=probs.device).view(-1, top_k)


def route_reference(logits: torch.Tensor, top_k: int, renormalize: bool, cast_weights: bool):
    """(weights, ids) for router logits (T, E), computed as Transformers' routers do on CUDA: softmax in
    float32, the top k with torch.topk's CUDA choice and order (``topk_cuda_order``), divided by their sum if
    ``renormalize``, rounded to the logits' dtype if ``cast_weights`` (Qwen3-MoE) or kept in float32 (Mixtral)."""
    probs = torch.softmax(logits.float(), dim=-1)
    order = topk_cuda_order(probs, top_k)
    values = probs.gather(-1, order)
    if renormalize:
        values = values / values.sum(dim=-1, keepdim=True)
    return (values.to(logits.dtype) if cast_weights else values), order


@functools.cache
def _kernel():
    """The Triton kernel, imported on first use (TRITON_INTERPRET is read when a kernel is defined, so a CPU
    test can set it before the first call)."""
    from .moe_routing_triton import route_kernel

    return route_kernel


def route(logits: torch.Tensor, top_k: int, renormalize: bool, cast_weights: bool, torch_order: bool = True):
    """The kernel's (weights, ids) for ``route_reference``'s arguments; logits (T, E) with E <=
    MOE_ROUTE_MAX_EXPERTS, 1 <= top_k <= min(E, MOE_ROUTE_MAX_TOP_K). ``torch_order=False`` (benchmarks only) leaves
    equal probabilities in id order instead of torch.topk's."""
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
                         LIBDEVICE_EXP=os.environ.get("TRITON_INTERPRET", "") != "1", TORCH_ORDER=torch_order,
                         num_warps=1 if block <= 128 else 2, **pdl_launch.launch_args(logits.device))
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
