"""The Triton code of hf_tp/kernels/sampling_topk.py, imported on first use (Triton reads TRITON_INTERPRET when a
kernel is defined, so a CPU test can set it before). Why two kernels and what they return is said there.

A logit and its vocabulary position travel as one int64 "packed" key whose integer order is the order the
selection wants: the float32 logit's bits made order-preserving (negative floats have their magnitude bits
flipped) in the high half, and 0x7FFFFFFF - position in the low half, so that of two equal logits the lower
position ranks first. Only integer compares and moves follow: no float rounding, nothing order-dependent."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _pack(x, positions):
    """float32 logits and their int32 positions -> packed int64 keys (the module docstring)."""
    bits = x.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (key.to(tl.int64) << 32) | (0x7FFFFFFF - positions).to(tl.int64)


@triton.jit
def _unpack(packed):
    """packed int64 keys -> (float32 logits, int64 positions)."""
    key = (packed >> 32).to(tl.int32)
    bits = key ^ ((key >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True), 0x7FFFFFFF - (packed & 0xFFFFFFFF)


@triton.jit
def _sort_alternating(x, ROWS: tl.constexpr):
    """Each row of x (ROWS, COUNT) sorted: even rows descending, odd rows ascending (an odd row is sorted
    descending as its bitwise complement, which reverses int64 order exactly)."""
    odd = (tl.arange(0, ROWS) % 2 == 1)[:, None]
    x = tl.where(odd, ~x, x)
    x = tl.sort(x, dim=1, descending=True)
    return tl.where(odd, ~x, x)


@triton.jit
def _largest(packed, ROWS: tl.constexpr, COUNT: tl.constexpr):
    """The COUNT largest of ROWS * COUNT packed keys, descending. Rows of COUNT are sorted, then merged in pairs:
    a row sorted descending against its neighbour sorted ascending, the larger of each column pair are the COUNT
    largest of both rows (the bitonic top-k merge); sorting that row again readies the next level."""
    tl.static_assert(ROWS <= 256, "at most 256 rows of COUNT keys (8 merge levels)")
    x = _sort_alternating(tl.reshape(packed, (ROWS, COUNT)), ROWS)
    for level in tl.static_range(8):  # unrolled; the rows halve at each level
        if (ROWS >> level) >= 2:
            x = _sort_alternating(tl.max(tl.reshape(x, (ROWS >> (level + 1), 2, COUNT)), axis=1), ROWS >> (level + 1))
    return tl.reshape(x, (COUNT,))


@triton.jit
def piece_top_kernel(logits_ptr, parts_ptr, width, stride_row, pieces,
                     PIECE: tl.constexpr, COUNT: tl.constexpr):
    """Program (row, piece): the COUNT largest packed keys of logits[row, piece * PIECE : (piece + 1) * PIECE],
    descending, into parts[row, piece, :]. Past the row's end: -inf at positions that rank below every real one."""
    row = tl.program_id(0)
    piece = tl.program_id(1)
    positions = piece * PIECE + tl.arange(0, PIECE)
    x = tl.load(logits_ptr + row * stride_row + positions, mask=positions < width, other=float("-inf"))
    top = _largest(_pack(x.to(tl.float32), positions), PIECE // COUNT, COUNT)
    tl.store(parts_ptr + (row * pieces + piece) * COUNT + tl.arange(0, COUNT), top)


@triton.jit
def merge_top_kernel(parts_ptr, values_ptr, positions_ptr, pieces, stride_values, stride_positions,
                     PIECES: tl.constexpr, COUNT: tl.constexpr):
    """Program row: the COUNT largest of parts[row] (pieces x COUNT keys; PIECES a power of two >= pieces),
    descending, as float32 logits and int64 vocabulary positions."""
    row = tl.program_id(0)
    offsets = tl.arange(0, PIECES * COUNT)
    packed = tl.load(parts_ptr + row * pieces * COUNT + offsets, mask=offsets < pieces * COUNT, other=0)
    lowest = tl.full([PIECES * COUNT], -2147483648, tl.int64) << 32  # below every packed logit
    top = _largest(tl.where(offsets < pieces * COUNT, packed, lowest), PIECES, COUNT)
    values, positions = _unpack(top)
    slots = tl.arange(0, COUNT)
    tl.store(values_ptr + row * stride_values + slots, values)
    tl.store(positions_ptr + row * stride_positions + slots, positions)
