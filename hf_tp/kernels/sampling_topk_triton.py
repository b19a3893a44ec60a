"""The Triton code of hf_tp/kernels/sampling_topk.py, imported on first use (Triton reads TRITON_INTERPRET when a
kernel is defined, so a CPU test can set it before). Why two kernels and what they return is said there.

Both kernels find the ``COUNT`` largest of a set of logits by radix select: each float32 logit becomes a uint32
key of the same order, and 32 / BITS rounds of a 2**BITS-bin histogram, each over the next BITS bits of the keys
that still share the chosen prefix, find the COUNT-th largest key T exactly. The selected are then every key above T and,
of the keys equal to T, the first ones in position order, as many as COUNT leaves room for. Only integer
counts and compares: nothing depends on float rounding or on the order threads run in.

A selected logit travels as one int64 "packed" key whose integer order is the order the caller wants: the
logit's order-preserving bits (signed) in the high half, 0x7FFFFFFF - position in the low half, so that of two
equal logits the lower position ranks first."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _ordered(x):
    """float32 -> uint32 keys with the float order: non-negative floats get their sign bit set, negative ones
    have every bit flipped (larger magnitude, smaller key)."""
    bits = x.to(tl.uint32, bitcast=True)
    return tl.where((bits >> 31) != 0, ~bits, bits | 0x80000000)


@triton.jit
def _pack(keys, positions):
    """uint32 ordered keys and their int32 positions -> packed int64 keys (the module docstring)."""
    signed = (keys ^ 0x80000000).to(tl.int32, bitcast=True)
    return (signed.to(tl.int64) << 32) | (0x7FFFFFFF - positions).to(tl.int64)


@triton.jit
def _keys_of(packed):
    """packed int64 keys -> their uint32 ordered keys."""
    return (packed >> 32).to(tl.int32).to(tl.uint32, bitcast=True) ^ 0x80000000


@triton.jit
def _unpack(packed):
    """packed int64 keys -> (float32 logits, int64 positions)."""
    keys = _keys_of(packed)
    bits = tl.where((keys >> 31) != 0, keys & 0x7FFFFFFF, ~keys)
    return bits.to(tl.float32, bitcast=True), 0x7FFFFFFF - (packed & 0xFFFFFFFF)


@triton.jit
def _digits(keys, valid, prefix, LEVEL: tl.constexpr, BITS: tl.constexpr):
    """The LEVEL-th BITS-bit digit (from the top) of each key; 2**BITS for keys outside the search: invalid, or
    not sharing the digits chosen so far (``prefix``)."""
    shift: tl.constexpr = 32 - BITS * (LEVEL + 1)
    digit = ((keys >> shift) & ((1 << BITS) - 1)).to(tl.int32)
    inside = valid
    if LEVEL > 0:
        inside = inside & ((keys >> (shift + BITS)) == (prefix >> (shift + BITS)))
    return tl.where(inside, digit, 1 << BITS)


@triton.jit
def _choose(hist, prefix, above, LEVEL: tl.constexpr, BITS: tl.constexpr, COUNT: tl.constexpr):
    """One radix round: from the histogram (2**(BITS + 1) bins, the first 2**BITS the digits) of the keys still
    searched, the largest digit d with ``above`` + (keys with digit >= d) >= COUNT. Returns the prefix with d
    set and ``above`` + the keys with a digit above d (they are all selected)."""
    bins = tl.arange(0, 2 << BITS)
    hist = tl.where(bins < (1 << BITS), hist, 0)
    at_or_above = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist
    fits = (above + at_or_above >= COUNT) & (bins < (1 << BITS))
    digit = tl.max(tl.where(fits, bins, 0), axis=0)
    above = above + tl.sum(tl.where(bins == digit, at_or_above - hist, 0), axis=0)
    return prefix | (digit.to(tl.uint32) << (32 - BITS * (LEVEL + 1))), above


@triton.jit
def piece_select_kernel(logits_ptr, parts_ptr, width, stride_row, pieces,
                        PIECE: tl.constexpr, COUNT: tl.constexpr, BITS: tl.constexpr):
    """Program (row, piece): the COUNT largest of logits[row, piece * PIECE : (piece + 1) * PIECE] as packed
    keys, in position order, into parts[row, piece, :]. Past the row's end: -inf at positions that rank below
    every real one."""
    row = tl.program_id(0)
    piece = tl.program_id(1)
    positions = piece * PIECE + tl.arange(0, PIECE)
    x = tl.load(logits_ptr + row.to(tl.int64) * stride_row + positions, mask=positions < width,
                other=float("-inf"))
    keys = _ordered(x.to(tl.float32))
    prefix = tl.full((), 0, tl.uint32)
    above = tl.full((), 0, tl.int32)
    for level in tl.static_range(32 // BITS):
        hist = tl.histogram(_digits(keys, positions >= 0, prefix, level, BITS), 2 << BITS)
        prefix, above = _choose(hist, prefix, above, level, BITS, COUNT)
    tied = keys == prefix
    take = (keys > prefix) | (tied & (tl.cumsum(tied.to(tl.int32), axis=0) <= COUNT - above))
    slots = tl.cumsum(take.to(tl.int32), axis=0) - 1
    tl.store(parts_ptr + (row * pieces + piece).to(tl.int64) * COUNT + slots, _pack(keys, positions), mask=take)


@triton.jit
def merge_select_kernel(parts_ptr, values_ptr, positions_ptr, total, stride_values, stride_positions,
                        CHUNK: tl.constexpr, COUNT: tl.constexpr, BITS: tl.constexpr):
    """Program row: the COUNT largest of parts[row] (``total`` packed keys, pieces in position order), read in
    CHUNKs, descending, as float32 logits and int64 vocabulary positions. The selected keys are gathered in
    the row's positions output first, then read back (volatile, after a barrier), sorted and unpacked."""
    row = tl.program_id(0)
    parts = parts_ptr + row.to(tl.int64) * total
    prefix = tl.full((), 0, tl.uint32)
    above = tl.full((), 0, tl.int32)
    for level in tl.static_range(32 // BITS):
        hist = tl.zeros((2 << BITS,), tl.int32)
        for start in range(0, total, CHUNK):
            offsets = start + tl.arange(0, CHUNK)
            valid = offsets < total
            keys = _keys_of(tl.load(parts + offsets, mask=valid, other=0))
            hist += tl.histogram(_digits(keys, valid, prefix, level, BITS), 2 << BITS)
        prefix, above = _choose(hist, prefix, above, level, BITS, COUNT)
    gathered = positions_ptr + row.to(tl.int64) * stride_positions
    ties_before = tl.full((), 0, tl.int32)
    taken_before = tl.full((), 0, tl.int32)
    for start in range(0, total, CHUNK):
        offsets = start + tl.arange(0, CHUNK)
        valid = offsets < total
        packed = tl.load(parts + offsets, mask=valid, other=0)
        keys = _keys_of(packed)
        tied = valid & (keys == prefix)
        take = (valid & (keys > prefix)) | (tied & (ties_before + tl.cumsum(tied.to(tl.int32), axis=0)
                                                    <= COUNT - above))
        tl.store(gathered + taken_before + tl.cumsum(take.to(tl.int32), axis=0) - 1, packed, mask=take)
        ties_before += tl.sum(tied.to(tl.int32), axis=0)
        taken_before += tl.sum(take.to(tl.int32), axis=0)
    tl.debug_barrier()  # every thread's gathered keys written before any thread reads them back
    slots = tl.arange(0, COUNT)
    top = tl.sort(tl.load(gathered + slots, volatile=True), dim=0, descending=True)
    tl.debug_barrier()  # every gathered key read before the positions overwrite them
    values, positions = _unpack(top)
    tl.store(values_ptr + row.to(tl.int64) * stride_values + slots, values)
    tl.store(gathered + slots, positions)
