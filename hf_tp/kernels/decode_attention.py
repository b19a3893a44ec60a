"""Decode attention (one query token per sequence) over a static KV cache, split along the KV length.

Transformers' sdpa path in the compiled decode step copies the cache's keys and values once per query head
group (repeat_kv) and runs SDPA over every slot of the static cache, filled or not, with a boolean mask. Here,
for a query (B, Hq, 1, D) and a cache layer's keys/values (B, Hkv, S, D):

  1. split: program (b, kv head, split) owns SPLIT_LEN consecutive slots. It reads the boolean mask of its
     slots once (one byte per slot) and walks its keys and values only from the first to the last slot the
     mask keeps, so the unfilled tail of the cache and the left padding of the prompt are never read. The
     GROUP query heads that share the KV head are the M rows of one tl.dot (GQA without copies). It stores
     its softmax-normalized partial output and log-sum-exp per query head, in fp32;
  2. reduce, in the same launch when the splits are few (``fused_combine_fits``): each split program then
     increments its (b, kv head)'s counter (an atomic with acquire-release order); the one that sees every
     other split done combines the splits' partial outputs of the GROUP query heads, weighted by
     exp(lse - max lse), in one pass (all heads and splits as one tile: one round trip to L2, not one per
     head), rounds once to the query's dtype and sets the counter back to zero. One launch per layer instead
     of two (each launch costs latency inside the decode step's CUDA graph), and no memset: the counters are
     zero again at the end of every call. With more splits, or ``fused_reduce=False``, the combine is a
     second kernel, program (b, query head). The two combines sum in a different order: results agree to
     rounding, not bit for bit (each is deterministic). With one split the first kernel writes the output
     directly.

The mask has SDPA's meaning (True = attend; absent = attend every slot), as Transformers' sdpa mask function
builds it, so this computes what ``F.scaled_dot_product_attention`` computes for these inputs. The grid
depends only on shapes, and nothing is read back to the host: the launches stay inside the decode step's
CUDA graph, and the valid range comes from the mask on the device at every replay.

``decode_attention_reference`` is the same computation in plain torch (fp32): the tests' yardstick.
"""

import functools
import math
from typing import Optional

import torch

from . import counters as counter_pool
from . import pdl as pdl_launch
from .sizes import cdiv, next_power_of_2

BLOCK_N = 64  # slots per inner step: a [64, head_dim] tile of keys and of values
MAX_SPLIT_LEN = 2048  # a split's mask is read in one [SPLIT_LEN] vector
PROGRAMS_PER_SM = 4  # split programs per SM at a full cache: enough loads in flight to stream the KV
# Measured on one H200 (benchmarks/decode_attention_bench.py --sweep, benchmarks/RESULTS.md 2026-12-03): splits of
# 128 slots beat 64 for a tp-2 rank at batch 1 (8192-slot cache, 4096 filled), and 3 pipeline stages beat 2
# at both swept shapes; 8 warps did not help.
MIN_SPLIT_LEN = 128
# Caches of at most SHORT_CACHE slots are latency-bound at small batches: splits of 64 slots beat 128 there (one
# H200, 2026-12-04, kernel alone at batch 1 with 4 KV heads: 256 slots 6.6 vs 7.7 µs, 1024 slots 7.0 vs 8.2,
# 2048 slots 8.5 vs 8.6; benchmarks/RESULTS.md).
SHORT_CACHE, SHORT_MIN_SPLIT_LEN = 2048, 64
NUM_WARPS, NUM_STAGES = 4, 3
REDUCE_CHUNK = 16  # splits combined per step of the reduce kernel
# The fused combine (the last split program of each (sequence, KV head)) holds all its partial outputs at once, as a
# [BLOCK_GC, BLOCK_S, BLOCK_D] fp32 tile (next powers of two of GROUP, splits, head_dim). It runs only while
#   - splits <= FUSED_MAX_SPLITS: short caches (few splits) are latency-bound, where the launch it saves matters;
#     long caches have many splits, are bandwidth-bound, and the reduce kernel spreads their combine over
#     batch * query heads programs instead of one program per (sequence, KV head);
#   - the tile has at most FUSED_MAX_TILE values: 64 fp32 registers a thread at 4 warps (128 threads), e.g.
#     head_dim 128 with GROUP 4 up to 16 splits, GROUP 8 up to 8 splits.
# Otherwise (and for fused_reduce=False) the two-kernel path runs.
FUSED_MAX_SPLITS = 16
FUSED_MAX_TILE = 8192
FUSED_REDUCE = True  # the op's choice of reduce (decode_attention_forward's fused_reduce); benchmarks flip it
# With PDL, each split program asks L2 for its slots' keys and values before it waits for the kernel before it
# (the rope and cache write), for caches of at most SHORT_CACHE slots: there the kernel is latency-bound, a chain
# of dependent loads, and the DRAM idle while the kernel before runs. Longer caches are bandwidth-bound, and
# unfilled slots would be read for nothing. Off: not faster on one H100 with the GEMMs' prefetch (ranks of tp 8
# and 4, benchmarks/RESULTS.md, 2026-12-07 thirty-fifth session); benchmarks flip it (next_cycle.sh KVPF).
PREFETCH_KV = False
MIN_COUNTERS = 4096  # (sequence, KV head) pairs the first counter buffer of a device holds

# The fused reduce's counters, one int32 per (sequence, KV head), per device. Zero between calls: the last split
# program of each pair sets its counter back to zero, so no memset enters the CUDA graph. The op declares no
# mutation (mutates_args=()) and torch.compile does not see this buffer: it is hidden scratch, zero at every call's
# start and end. Buffers are never freed: a captured graph keeps the address it was captured with. One buffer per
# device means two calls must not run at once on two streams of a device (the decode step runs its layers in order).
_COUNTERS: dict = {}


def decode_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               mask: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """query (B, Hq, 1, D); key/value (B, Hkv, S, D); mask None or bool broadcastable to (B, 1, 1, S).
    Returns (B, 1, Hq, D) in query's dtype, as Transformers' attention functions return it."""
    group = query.shape[1] // key.shape[1]
    k = key.float().repeat_interleave(group, dim=1)
    v = value.float().repeat_interleave(group, dim=1)
    scores = torch.matmul(query.float(), k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.matmul(scores.softmax(-1), v)
    return out.transpose(1, 2).to(query.dtype)


# The combines (Triton functions, set by _kernels): module globals, because Triton's interpreter looks a kernel's
# names up in its module, not in the enclosing function.
_combine_splits = None  # one query head, the reduce kernel's
_combine_group = None  # GROUP query heads at once, the fused path's


def fused_combine_fits(group: int, num_splits: int, head_dim: int) -> bool:
    """Whether the last split program may combine the splits itself (FUSED_MAX_SPLITS, FUSED_MAX_TILE)."""
    tile = _next_pow2(group) * _next_pow2(num_splits) * max(16, _next_pow2(head_dim))
    return 1 < num_splits <= FUSED_MAX_SPLITS and tile <= FUSED_MAX_TILE


def _next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


@functools.cache
def _kernels():
    """The Triton kernels, built on first use (so that TRITON_INTERPRET, read when a kernel is defined, can be
    set by whoever calls first, e.g. a CPU test)."""
    import triton
    import triton.language as tl

    global _combine_splits, _combine_group

    from .gemv_triton import prefetch_l2

    @triton.jit
    def _combine_splits(o_base, lse_base, out_row, num_splits, stride_ps,
                        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK: tl.constexpr):
        """One query head's output from its splits' partial outputs (o_base: [split, HEAD_DIM] at stride_ps) and
        log-sum-exps (lse_base: [split]): the reduce kernel's combine, CHUNK splits a step."""
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        offs_s = tl.arange(0, BLOCK_S)
        lse_all = tl.load(lse_base + offs_s, mask=offs_s < num_splits, other=float("-inf"), cache_modifier=".cg")
        top = tl.max(lse_all, axis=0)
        top = tl.where(top == float("-inf"), 0.0, top)  # no split saw a kept slot: every weight is 0 below
        total = tl.sum(tl.where(lse_all == float("-inf"), 0.0, tl.exp(lse_all - top)), axis=0)
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for s0 in range(0, num_splits, CHUNK):
            offs_c = s0 + tl.arange(0, CHUNK)
            lse = tl.load(lse_base + offs_c, mask=offs_c < num_splits, other=float("-inf"), cache_modifier=".cg")
            used = lse != float("-inf")  # empty splits (past the filled slots) are not read
            weight = tl.where(used, tl.exp(lse - top), 0.0)
            o = tl.load(o_base + offs_c[:, None] * stride_ps + offs_d[None, :], mask=used[:, None] & mask_d[None, :],
                        other=0.0, cache_modifier=".cg")
            acc += tl.sum(o * weight[:, None], axis=0)
        out = acc / tl.where(total > 0, total, 1.0)
        tl.store(out_row + offs_d, out.to(out_row.dtype.element_ty), mask=mask_d)

    @triton.jit
    def _combine_group(o_base, lse_base, out_base, num_splits, stride_ph, stride_ps, stride_lh, stride_oh,
                       GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_GC: tl.constexpr, BLOCK_S: tl.constexpr,
                       BLOCK_D: tl.constexpr):
        """The GROUP query heads' outputs (rows of out_base at stride_oh) from their splits' partial outputs
        (o_base: [head, split, HEAD_DIM]) and log-sum-exps (lse_base: [head, split]), all loaded at once: one
        [BLOCK_GC, BLOCK_S] tile of lse and one [BLOCK_GC, BLOCK_S, BLOCK_D] tile of partials, so the fused path's
        last program waits for about one L2 round trip. The loads bypass L1 (.cg): other programs of this launch
        wrote the partials. Empty splits (lse = -inf) are not read; a head with no kept slot gives zeros."""
        offs_g = tl.arange(0, BLOCK_GC)
        offs_s = tl.arange(0, BLOCK_S)
        offs_d = tl.arange(0, BLOCK_D)
        mask_g = offs_g < GROUP
        mask_d = offs_d < HEAD_DIM
        lse = tl.load(lse_base + offs_g[:, None] * stride_lh + offs_s[None, :],
                      mask=mask_g[:, None] & (offs_s < num_splits)[None, :], other=float("-inf"),
                      cache_modifier=".cg")  # [BLOCK_GC, BLOCK_S]
        top = tl.max(lse, axis=1)
        top = tl.where(top == float("-inf"), 0.0, top)  # no split saw a kept slot: every weight is 0 below
        used = lse != float("-inf")
        weight = tl.where(used, tl.exp(lse - top[:, None]), 0.0)
        total = tl.sum(weight, axis=1)
        o = tl.load(o_base + offs_g[:, None, None] * stride_ph + offs_s[None, :, None] * stride_ps
                    + offs_d[None, None, :], mask=used[:, :, None] & mask_d[None, None, :], other=0.0,
                    cache_modifier=".cg")  # [BLOCK_GC, BLOCK_S, BLOCK_D]
        acc = tl.sum(o * weight[:, :, None], axis=1)
        out = acc / tl.where(total > 0, total, 1.0)[:, None]
        tl.store(out_base + offs_g[:, None] * stride_oh + offs_d[None, :], out.to(out_base.dtype.element_ty),
                 mask=mask_g[:, None] & mask_d[None, :])

    @triton.jit
    def decode_attention_split(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, part_o_ptr, part_lse_ptr, counter_ptr, scale,
                     kv_len, kv_heads,
                     stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
                     stride_mb, stride_ms, stride_ob, stride_oh, stride_pb, stride_ph, stride_ps, stride_lb, stride_lh,
                     GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_N: tl.constexpr, SPLIT_LEN: tl.constexpr, HAS_MASK: tl.constexpr, DIRECT: tl.constexpr,
                     PRECISION: tl.constexpr, FUSED: tl.constexpr, BLOCK_GC: tl.constexpr, BLOCK_S: tl.constexpr,
                     PDL: tl.constexpr = False, PREFETCH: tl.constexpr = False, ROW_LINES: tl.constexpr = 1,
                     LINE: tl.constexpr = 64):
        bh = tl.program_id(0)
        split = tl.program_id(1)
        b = (bh // kv_heads).to(tl.int64)  # 64-bit offsets: a large cache's batch stride times b passes 2**31
        kv_head = (bh % kv_heads).to(tl.int64)
        if PREFETCH:  # with PDL, before the wait: this split's cached keys and values (ROW_LINES lines of LINE
            # elements a slot) asked of L2 while the kernel before finishes. Earlier steps wrote them; the slot this
            # step writes may arrive stale, but the write lands in L2, where the loads after the wait read it.
            slots = tl.minimum(split * SPLIT_LEN + tl.arange(0, SPLIT_LEN), kv_len - 1).to(tl.int64)
            cols = tl.minimum(tl.arange(0, ROW_LINES) * LINE, HEAD_DIM - 1)
            prefetch_l2(k_ptr + b * stride_kb + kv_head * stride_kh + slots[:, None] * stride_ks + cols[None, :])
            prefetch_l2(v_ptr + b * stride_vb + kv_head * stride_vh + slots[:, None] * stride_vs + cols[None, :])
        if PDL:  # launched with programmatic dependent launch (hf_tp.kernels.pdl): nothing read before this but
            # the cache lines asked of L2 above
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, BLOCK_D)
        mask_g = offs_g < GROUP
        mask_d = offs_d < HEAD_DIM
        heads = kv_head * GROUP + offs_g
        q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                    mask=mask_g[:, None] & mask_d[None, :], other=0.0)
        start = split * SPLIT_LEN
        # The slots this split must read: from its first kept slot to its last (the mask read once, a byte a slot).
        if HAS_MASK:
            offs_s = start + tl.arange(0, SPLIT_LEN)
            in_cache = offs_s < kv_len
            kept = tl.load(mask_ptr + b * stride_mb + offs_s * stride_ms, mask=in_cache, other=0) != 0
            lo = tl.min(tl.where(kept, offs_s, start + SPLIT_LEN), axis=0)
            hi = tl.max(tl.where(kept, offs_s + 1, start), axis=0)
        else:
            lo = start
            hi = tl.minimum(start + SPLIT_LEN, kv_len)
        k_base = k_ptr + b * stride_kb + kv_head * stride_kh
        v_base = v_ptr + b * stride_vb + kv_head * stride_vh
        # A finite start for the running max: a step whose slots are all masked leaves it (and acc, l) unchanged.
        m_i = tl.full([BLOCK_G], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            valid = offs_n < hi
            if HAS_MASK:
                valid = valid & (tl.load(mask_ptr + b * stride_mb + offs_n * stride_ms, mask=valid, other=0) != 0)
            k = tl.load(k_base + offs_n[None, :] * stride_ks + offs_d[:, None],
                        mask=valid[None, :] & mask_d[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
            s = tl.dot(q, k, input_precision=PRECISION) * scale
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_base + offs_n[:, None] * stride_vs + offs_d[None, :],
                        mask=valid[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        seen = l_i > 0
        out = acc / tl.where(seen, l_i, 1.0)[:, None]
        if DIRECT:  # one split: this is the answer (a row with no kept slot gives zeros)
            tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=mask_g[:, None] & mask_d[None, :])
        else:
            lse = tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), float("-inf"))
            tl.store(part_o_ptr + b * stride_pb + heads[:, None] * stride_ph + split * stride_ps + offs_d[None, :],
                     out, mask=mask_g[:, None] & mask_d[None, :])
            tl.store(part_lse_ptr + b * stride_lb + heads * stride_lh + split, lse, mask=mask_g)
            if FUSED:
                num_splits = tl.num_programs(1)
                # Every thread's stores above happen before thread 0's release below (the atomic is one thread's).
                tl.debug_barrier()
                done = tl.atomic_add(counter_ptr + bh, 1, sem="acq_rel", scope="gpu")  # the count before this one
                if done == num_splits - 1:  # the other splits' partials are written: combine them
                    head0 = kv_head * GROUP
                    _combine_group(part_o_ptr + b * stride_pb + head0 * stride_ph,
                                   part_lse_ptr + b * stride_lb + head0 * stride_lh,
                                   out_ptr + b * stride_ob + head0 * stride_oh, num_splits,
                                   stride_ph, stride_ps, stride_lh, stride_oh,
                                   GROUP, HEAD_DIM, BLOCK_GC, BLOCK_S, BLOCK_D)
                    tl.store(counter_ptr + bh, 0)  # zero for the next call: every split has counted

    @triton.jit
    def decode_attention_reduce(part_o_ptr, part_lse_ptr, out_ptr, num_splits, q_heads, stride_pb, stride_ph, stride_ps,
                      stride_lb, stride_lh, stride_ob, stride_oh,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK: tl.constexpr,
                      PDL: tl.constexpr = False):
        if PDL:  # as in decode_attention_split
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        pid = tl.program_id(0)
        b = (pid // q_heads).to(tl.int64)
        head = (pid % q_heads).to(tl.int64)
        _combine_splits(part_o_ptr + b * stride_pb + head * stride_ph, part_lse_ptr + b * stride_lb + head * stride_lh,
                        out_ptr + b * stride_ob + head * stride_oh, num_splits, stride_ps,
                        HEAD_DIM, BLOCK_D, BLOCK_S, CHUNK)

    return triton, decode_attention_split, decode_attention_reduce


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # Triton's interpreter on the CPU (tests): a few splits, as a small GPU would use


def split_length(batch: int, kv_heads: int, slots: int, sms: int) -> int:
    """Slots per split, a power of two up to MAX_SPLIT_LEN. Fixed by the shapes (one CUDA graph per shape).

    When the batch's (sequence, KV head) pairs alone fill the SMs, splits as long as allowed (one split up to
    MAX_SPLIT_LEN slots): at batch 32 with 8 KV heads and 512 slots, one split took 15.4 µs against 21.2 for
    two. Otherwise splits small enough that a full cache gives about PROGRAMS_PER_SM programs per SM, and at
    least MIN_SPLIT_LEN slots (SHORT_MIN_SPLIT_LEN for caches of at most SHORT_CACHE slots)."""
    pairs = batch * kv_heads
    if pairs >= sms:
        length = slots
    else:
        length = -(-slots // max(1, -(-PROGRAMS_PER_SM * sms // pairs)))
    length = 1 << max(0, math.ceil(math.log2(max(1, length))))
    shortest = SHORT_MIN_SPLIT_LEN if slots <= SHORT_CACHE else MIN_SPLIT_LEN
    return max(shortest, min(MAX_SPLIT_LEN, length))


def reserve_counters(device: torch.device, pairs: int = MIN_COUNTERS) -> torch.Tensor:
    """Allocate the device's zeroed counters for at least ``pairs`` (sequence, KV head) pairs, once, outside any
    CUDA graph: at load (parallel.decode_attention.install_decode_attention) and in tests (hf_tp.kernels.counters
    says why a call never allocates them on CUDA). Only fewer pairs than SMs ever split (split_length), so the
    default covers every batch."""
    return counter_pool.reserve(_COUNTERS, device, pairs, MIN_COUNTERS)


def _counters(device: torch.device, pairs: int) -> Optional[torch.Tensor]:
    """The device's zeroed counters, at least ``pairs`` of them; None (that call takes the two-kernel path) on
    CUDA when ``reserve_counters`` has not reserved enough."""
    return counter_pool.lookup(_COUNTERS, device, pairs, MIN_COUNTERS)


def decode_attention_forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             mask: Optional[torch.Tensor], scale: float, split_len: Optional[int] = None,
                             num_warps: int = NUM_WARPS, num_stages: int = NUM_STAGES,
                             fused_reduce: bool = True) -> torch.Tensor:
    """The kernels' result for ``decode_attention_reference``'s arguments. ``split_len`` (a power of two, at
    least 16) overrides the split sizing (tests, tuning). The splits are combined by the last split program of
    each (sequence, KV head) when ``fused_combine_fits``, else (and with ``fused_reduce=False``) by a second
    kernel: the same result up to rounding (a different order of summation), each deterministic."""
    _, decode_attention_split, decode_attention_reduce = _kernels()
    batch, q_heads, _, head_dim = query.shape
    kv_heads, slots = key.shape[1], key.shape[2]
    group = q_heads // kv_heads
    if query.stride(-1) != 1:
        query = query.contiguous()
    if key.stride(-1) != 1:
        key = key.contiguous()
    if value.stride(-1) != 1:
        value = value.contiguous()
    if split_len is None:
        split_len = split_length(batch, kv_heads, slots, _sm_count(query.device))
    num_splits = cdiv(slots, split_len)
    out = torch.empty(batch, 1, q_heads, head_dim, dtype=query.dtype, device=query.device)
    has_mask = mask is not None
    if has_mask:
        mask = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
        stride_mb = mask.stride(0) if mask.shape[0] > 1 else 0
        stride_ms = mask.stride(-1)
    else:
        mask, stride_mb, stride_ms = key, 0, 0  # never read (HAS_MASK=False)
    direct = num_splits == 1
    fits = fused_reduce and not direct and fused_combine_fits(group, num_splits, head_dim)
    counters = _counters(query.device, batch * kv_heads) if fits else None
    if direct:
        part_o = part_lse = out  # never written
        part_strides = (0, 0, 0, 0, 0)
    else:
        part_o = torch.empty(batch, q_heads, num_splits, head_dim, dtype=torch.float32, device=query.device)
        part_lse = torch.empty(batch, q_heads, num_splits, dtype=torch.float32, device=query.device)
        part_strides = (part_o.stride(0), part_o.stride(1), part_o.stride(2), part_lse.stride(0), part_lse.stride(1))
    block_d = max(16, next_power_of_2(head_dim))
    block_s = max(16, next_power_of_2(num_splits))
    fused = counters is not None
    pdl = pdl_launch.launch_args(query.device)  # programmatic dependent launch, where on
    split_pdl = pdl
    if pdl and PREFETCH_KV and slots <= SHORT_CACHE:
        line = 128 // key.element_size()
        split_pdl = dict(pdl, PREFETCH=True, ROW_LINES=max(1, block_d // line), LINE=line)
    decode_attention_split[(batch * kv_heads, num_splits)](
        query, key, value, mask, out, part_o, part_lse, counters if fused else out, float(scale), slots, kv_heads,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), stride_mb, stride_ms, out.stride(0), out.stride(2),
        *part_strides,
        GROUP=group, HEAD_DIM=head_dim, BLOCK_G=max(16, next_power_of_2(group)), BLOCK_D=block_d,
        BLOCK_N=min(BLOCK_N, split_len), SPLIT_LEN=split_len, HAS_MASK=has_mask, DIRECT=direct,
        # fp32 models: full-precision products (the default would round the operands to tf32)
        PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        FUSED=fused, BLOCK_GC=next_power_of_2(group) if fused else 1,
        BLOCK_S=next_power_of_2(num_splits) if fused else 1, num_warps=num_warps, num_stages=num_stages,
        **split_pdl)
    if not direct and not fused:
        decode_attention_reduce[(batch * q_heads,)](
            part_o, part_lse, out, num_splits, q_heads, *part_strides, out.stride(0), out.stride(2),
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=block_s, CHUNK=REDUCE_CHUNK, num_warps=4, **pdl)
    return out


@torch.library.custom_op("hf_tp::decode_attention", mutates_args=())
def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Optional[torch.Tensor],
                     scale: float) -> torch.Tensor:
    """``decode_attention_forward`` as one opaque op: torch.compile (fullgraph) traces the decode step through
    it, and the CUDA graph captures its launches."""
    return decode_attention_forward(query, key, value, mask, scale, fused_reduce=FUSED_REDUCE)


@decode_attention.register_fake
def _(query, key, value, mask, scale):
    batch, q_heads, _, head_dim = query.shape
    return query.new_empty(batch, 1, q_heads, head_dim)
