"""Sampling's top-k candidates in two Triton launches: the ``count`` largest logits of each row and their
vocabulary positions, descending, equal logits in position order.

Why: a sampling step with Transformers' default ``top_k=50`` runs its warpers on the 64 largest logits
(hf_tp/generation/decode_loop.py, ``top_candidates``). torch.topk on one 128k-wide row is a multi-block radix
select of four passes of three kernels each, then a sort: 28 kernels and about 45 µs of the selection's ~64 µs of
GPU time per step on an H100, against greedy's 5. With these two launches the selection's kernels take 36 µs
(`benchmarks/select_cost.py --topk-kernel 0,1 --profile`; benchmarks/RESULTS.md, 2026-12-05, fifteenth
session). Here, by radix select (sampling_topk_triton.py says how):

  1. ``piece_select_kernel``, one program per (row, PIECE-wide piece of the vocabulary): the piece's ``count``
     largest, so that the pieces spread the read of the row over the GPU;
  2. ``merge_select_kernel``, one program per row: the ``count`` largest of the pieces' results, sorted.

Every shape depends only on (rows, width, count), nothing is read back to the host, so the launches stay inside
the decode step's CUDA graph; ``sampling_top`` is a custom op so that torch.compile traces through it.
"""

from __future__ import annotations

import functools

import torch

# One program's piece of the vocabulary: PIECE, or wider for large counts (a piece keeps count of its logits;
# 8 x count wide keeps the merge small), at most MAX_PIECE; the merging program reads the pieces' results in
# CHUNKs. Counts that are not powers of two (tl.sort's length) or above MAX_COUNT keep torch.topk
# (top_candidates), as do rows not wider than the candidates.
PIECE = 2048
MAX_PIECE = 16384
CHUNK = 4096
MAX_COUNT = 1024
# Bits per radix round (4 or 8): 32 / DIGIT_BITS rounds of a 2**DIGIT_BITS-bin histogram.
DIGIT_BITS = 4


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def plan(width: int, count: int) -> int | None:
    """The piece width for rows of ``width`` logits and ``count`` candidates, or None where the kernels do not
    apply (count not a power of two or above MAX_COUNT, or not below the width)."""
    if count > MAX_COUNT or count & (count - 1) or count >= width:
        return None
    return min(MAX_PIECE, max(PIECE, _pow2_at_least(8 * count)))


@functools.cache
def available() -> bool:
    """Whether Triton imports here (the decode loop keeps torch.topk where it does not)."""
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - missing or broken: torch.topk still works
        return False
    return True


@functools.cache
def _kernels():
    """The Triton kernels, imported on first use (TRITON_INTERPRET is read when a kernel is defined)."""
    from .sampling_topk_triton import merge_select_kernel, piece_select_kernel

    return piece_select_kernel, merge_select_kernel


def top_candidates_triton(logits: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values float32, positions int64), each (rows, count): the count largest logits of each row of the 2-D
    float32 ``logits``, descending, equal ones in position order. ``plan(width, count)`` must not be None."""
    rows, width = logits.shape
    piece = plan(width, count)
    pieces = -(-width // piece)
    logits = logits.contiguous()
    parts = torch.empty(rows, pieces, count, dtype=torch.int64, device=logits.device)
    values = torch.empty(rows, count, dtype=torch.float32, device=logits.device)
    positions = torch.empty(rows, count, dtype=torch.int64, device=logits.device)
    if rows == 0:
        return values, positions
    piece_kernel, merge_kernel = _kernels()
    piece_kernel[(rows, pieces)](logits, parts, width, logits.stride(0), pieces, PIECE=piece, COUNT=count,
                                 BITS=DIGIT_BITS, num_warps=8 if piece <= 4096 else 16)
    merge_kernel[(rows,)](parts, values, positions, pieces * count, values.stride(0), positions.stride(0),
                          CHUNK=CHUNK, COUNT=count, BITS=DIGIT_BITS,
                          num_warps=8)
    return values, positions


@torch.library.custom_op("hf_tp::sampling_top", mutates_args=())
def sampling_top(logits: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``top_candidates_triton`` as one opaque op: the compiled selection traces through it, the CUDA graph
    captures its two launches."""
    return top_candidates_triton(logits, count)


@sampling_top.register_fake
def _(logits, count):
    rows = logits.shape[0]
    return (logits.new_empty(rows, count, dtype=torch.float32), logits.new_empty(rows, count, dtype=torch.int64))
