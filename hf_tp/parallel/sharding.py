"""Pure slicing math: which contiguous range of a dimension, or of the attention heads, each rank owns.

Nothing here imports torch.distributed, so every rule can be printed and unit-tested in one process.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ShardingError

Range = tuple[int, int]  # [start, stop)


def shard_range(size: int, tp_size: int, tp_rank: int) -> Range:
    """Split ``size`` into ``tp_size`` contiguous chunks whose lengths differ by at most one.

    The first ``size % tp_size`` ranks get the longer chunks, so 10 over 3 ranks is 4, 3, 3.
    """
    if not 0 <= tp_rank < tp_size:
        raise ValueError(f"tp_rank={tp_rank} is outside [0, tp_size={tp_size})")
    base, extra = divmod(size, tp_size)
    start = tp_rank * base + min(tp_rank, extra)
    return start, start + base + (1 if tp_rank < extra else 0)


def aligned_shard_range(size: int, tp_size: int, tp_rank: int, granule: int) -> Range:
    """Like shard_range, but every boundary falls on a multiple of ``granule`` when ``size`` allows
    (e.g. 80 over 3 ranks with granule 8: 32, 24, 24 instead of 27, 27, 26)."""
    if granule <= 1 or size % granule or size // granule < tp_size:
        return shard_range(size, tp_size, tp_rank)
    start, stop = shard_range(size // granule, tp_size, tp_rank)
    return start * granule, stop * granule


def padded_shard_range(size: int, tp_size: int, tp_rank: int) -> tuple[Range, int]:
    """Equal-length chunks of ``ceil(size / tp_size)``; the last ranks hold fewer real rows.

    Used for the vocabulary, whose shards must be the same length so the logits can be
    all-gathered into one tensor. Returns this rank's real range and its padded length.
    """
    local = -(-size // tp_size)
    start = min(tp_rank * local, size)
    return (start, min(start + local, size)), local


@dataclass(frozen=True)
class HeadShard:
    """The attention heads one rank owns: query heads and the key/value heads they read."""

    q_heads: Range
    kv_heads: Range

    @property
    def num_q(self) -> int:
        return self.q_heads[1] - self.q_heads[0]

    @property
    def num_kv(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]


def _head_shards_or_reason(num_q: int, num_kv: int, tp_size: int) -> tuple[list[HeadShard] | None, str]:
    """Split heads by whole GQA groups, or say why that is impossible.

    A GQA group is one key/value head and the ``num_q // num_kv`` query heads that read it.

      tp_size <= num_kv: each rank takes whole groups (contiguous, counts differ by at most one),
                         e.g. 9 q / 3 kv on 2 ranks -> rank 0: q 0-5, kv 0-1; rank 1: q 6-8, kv 2.
      tp_size >  num_kv: the key/value heads are replicated: each group is shared by
                         tp_size / num_kv ranks, which split its query heads between them.
    """
    if num_q % num_kv:
        return None, f"num_attention_heads={num_q} is not a multiple of num_key_value_heads={num_kv}"
    group = num_q // num_kv
    if tp_size <= num_kv:
        shards = []
        for rank in range(tp_size):
            kv = shard_range(num_kv, tp_size, rank)
            shards.append(HeadShard(q_heads=(kv[0] * group, kv[1] * group), kv_heads=kv))
        return shards, ""
    if tp_size % num_kv:
        return None, f"tp_size={tp_size} exceeds num_key_value_heads={num_kv} and is not a multiple of it"
    ranks_per_group = tp_size // num_kv
    if ranks_per_group > group:
        return None, f"tp_size={tp_size} exceeds num_attention_heads={num_q}"
    shards = []
    for rank in range(tp_size):
        kv_head, sub_rank = divmod(rank, ranks_per_group)
        q0, q1 = shard_range(group, ranks_per_group, sub_rank)
        shards.append(HeadShard(q_heads=(kv_head * group + q0, kv_head * group + q1), kv_heads=(kv_head, kv_head + 1)))
    return shards, ""


def valid_tp_sizes(num_q: int, num_kv: int, limit: int | None = None) -> list[int]:
    """Every tp_size up to ``limit`` (default: num_q) for which the heads can be split."""
    return [t for t in range(1, (limit or num_q) + 1) if _head_shards_or_reason(num_q, num_kv, t)[0] is not None]


def head_shards(num_q: int, num_kv: int, tp_size: int, model_name: str = "this model") -> list[HeadShard]:
    """One HeadShard per rank; raises ShardingError naming the tp sizes that would work."""
    shards, reason = _head_shards_or_reason(num_q, num_kv, tp_size)
    if shards is None:
        raise ShardingError(
            f"Cannot split the attention heads of {model_name} (num_attention_heads={num_q}, "
            f"num_key_value_heads={num_kv}) over tp_size={tp_size}: {reason}. "
            f"Valid tp_size for this model: {', '.join(map(str, valid_tp_sizes(num_q, num_kv)))}."
        )
    return shards


def head_rows(heads: Range, head_dim: int) -> Range:
    """The weight rows (or columns) that hold heads [start, stop) when each head is head_dim wide."""
    return heads[0] * head_dim, heads[1] * head_dim


def merge_ranges(ranges) -> tuple[Range, ...]:
    """Drop empty ranges and join adjacent ones, so a rank reads as few slices as possible."""
    merged: list[Range] = []
    for start, stop in ranges:
        if stop <= start:
            continue
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return tuple(merged)


def packed_ranges(parts) -> tuple[Range, ...]:
    """Ranges in a packed tensor from (part_size, range within that part) pairs in packing order.

    Phi-3's ``qkv_proj`` packs [q | k | v] along its output rows; rank r owns its q heads,
    its k heads and its v heads, so it reads three slices and concatenates them:

        rows  0 ........ Q  Q ..... Q+K  Q+K ..... Q+2K
              | q0 q1 | q2 q3 |  k0 | k1  |  v0 | v1  |      (tp_size 2)
        r0:    [q0 q1]           [k0]        [v0]
        r1:           [q2 q3]         [k1]        [v1]
    """
    ranges, offset = [], 0
    for size, (start, stop) in parts:
        if not 0 <= start <= stop <= size:
            raise ValueError(f"range [{start}, {stop}) lies outside a part of size {size}")
        ranges.append((offset + start, offset + stop))
        offset += size
    return merge_ranges(ranges)


def grouped_qkv_ranges(shard: HeadShard, group: int, head_dim: int) -> tuple[Range, ...]:
    """Rows a rank owns in a QKV weight packed per key/value head (GPT-NeoX, BLOOM, Falcon).

    For each key/value head j the weight holds its ``group`` query heads, then k_j, then v_j,
    each ``head_dim`` rows. GPT-NeoX and BLOOM are the case group == 1 (q_j k_j v_j per head):

        | q0 q1 k0 v0 | q2 q3 k1 v1 |      group 2, 2 KV heads; tp_size 2 takes one block each
    When KV heads are replicated (tp_size > num_kv) a rank takes part of a block's query heads
    plus the block's k and v.
    """
    ranges = []
    for kv in range(*shard.kv_heads):
        block = kv * (group + 2)
        q0 = max(shard.q_heads[0], kv * group) - kv * group
        q1 = min(shard.q_heads[1], (kv + 1) * group) - kv * group
        ranges.append(((block + q0) * head_dim, (block + q1) * head_dim))
        ranges.append(((block + group) * head_dim, (block + group + 2) * head_dim))
    return merge_ranges(ranges)
