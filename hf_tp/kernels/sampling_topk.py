"""Sampling's top-k candidates in two Triton launches: the ``count`` largest logits of each row and their
vocabulary positions, descending, equal logits in position order.

Why: a sampling step with Transformers' default ``top_k=50`` runs its warpers on the 64 largest logits
(hf_tp/generation/decode_loop.py, ``top_candidates``), and torch.topk on one 128k-wide row is a radix select of
several passes, each a few kernels, then a sort; the whole top-k selection costs about 70 µs of GPU time per step
against greedy's 5, 10 % of a small model's decode step. Measured, these kernels do not make it cheaper
(benchmarks/RESULTS.md, 2026-12-05), so decode_loop.TOPK_KERNEL leaves them off. Here:

  1. ``piece_top_kernel``, one program per (row, PIECE-wide piece of the vocabulary): the piece's ``count``
     largest, by sorting rows of ``count`` and merging them in pairs (a bitonic top-k merge);
  2. ``merge_top_kernel``, one program per row: the same over the pieces' results.

Every shape depends only on (rows, width, count), nothing is read back to the host, so the launches stay inside
the decode step's CUDA graph; ``sampling_top`` is a custom op so that torch.compile traces through it.
"""

from __future__ import annotations

import functools

import torch

# One program's piece of the vocabulary (doubled up to MAX_PIECE for wide vocabularies), and the most keys the
# merging program takes (pieces x count): rows wider than MAX_PIECE x MAX_MERGED / count (2M logits at count 64),
# or counts above MAX_COUNT, keep torch.topk (top_candidates).
PIECE = 4096
MAX_PIECE = 16384
MAX_MERGED = 8192
MAX_COUNT = 256


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def plan(width: int, count: int) -> tuple[int, int] | None:
    """(piece width, pieces rounded up to a power of two) for rows of ``width`` logits and ``count`` candidates,
    or None where the kernels do not apply (count not a power of two or above MAX_COUNT, or too many pieces)."""
    if count > MAX_COUNT or count & (count - 1) or count >= width:
        return None
    piece = PIECE
    while _pow2_at_least(-(-width // piece)) * count > MAX_MERGED and piece < MAX_PIECE:
        piece *= 2
    pieces = _pow2_at_least(-(-width // piece))
    return (piece, pieces) if pieces * count <= MAX_MERGED else None


@functools.cache
def _kernels():
    """The Triton kernels, imported on first use (TRITON_INTERPRET is read when a kernel is defined)."""
    from .sampling_topk_triton import merge_top_kernel, piece_top_kernel

    return piece_top_kernel, merge_top_kernel


def top_candidates_triton(logits: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values float32, positions int64), each (rows, count): the count largest logits of each row of the 2-D
    ``logits``, descending, equal ones in position order. ``plan(width, count)`` must not be None."""
    rows, width = logits.shape
    piece, pieces_pow2 = plan(width, count)
    pieces = -(-width // piece)
    logits = logits.contiguous()
    parts = torch.empty(rows, pieces, count, dtype=torch.int64, device=logits.device)
    values = torch.empty(rows, count, dtype=torch.float32, device=logits.device)
    positions = torch.empty(rows, count, dtype=torch.int64, device=logits.device)
    if rows == 0:
        return values, positions
    piece_kernel, merge_kernel = _kernels()
    piece_kernel[(rows, pieces)](logits, parts, width, logits.stride(0), pieces, PIECE=piece, COUNT=count,
                                 num_warps=8 if piece <= 4096 else 16)
    merge_kernel[(rows,)](parts, values, positions, pieces, values.stride(0), positions.stride(0),
                          PIECES=pieces_pow2, COUNT=count, num_warps=4 if pieces_pow2 * count <= 2048 else 16)
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
