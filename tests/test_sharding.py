"""1 process: the pure slicing math (ranges, padded vocab ranges, head splits, KV replication)."""

from __future__ import annotations

import pytest
import torch

import hf_tp
from hf_tp.parallel.sharding import head_rows, head_shards, padded_shard_range, shard_range, valid_tp_sizes
from hf_tp.parallelize import build_skeleton
from hf_tp.policies import get_policy
from hf_tp.policies.plan import build_plan

from conftest import tiny_config


@pytest.mark.parametrize("size,tp_size", [(s, t) for s in (1, 2, 3, 7, 10, 64, 101, 1536) for t in (1, 2, 3, 4, 5, 8) if s >= t])
def test_shard_range_covers_contiguously_and_evenly(size, tp_size):
    ranges = [shard_range(size, tp_size, r) for r in range(tp_size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    for (_, stop), (start, _) in zip(ranges, ranges[1:]):
        assert stop == start  # contiguous, no gap, no overlap
    lengths = [b - a for a, b in ranges]
    assert sum(lengths) == size
    assert max(lengths) - min(lengths) <= 1
    assert lengths == sorted(lengths, reverse=True)  # the longer chunks come first


def test_shard_range_examples_and_bad_rank():
    assert [shard_range(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError, match="tp_rank=3"):
        shard_range(10, 3, 3)
    with pytest.raises(ValueError):
        shard_range(10, 3, -1)


@pytest.mark.parametrize("size,tp_size", [(101, 2), (101, 3), (100, 4), (1001, 3), (49152, 3), (5, 4)])
def test_padded_shard_range(size, tp_size):
    out = [padded_shard_range(size, tp_size, r) for r in range(tp_size)]
    local = -(-size // tp_size)
    assert all(length == local for _, length in out)  # equal lengths, so the logits all-gather works
    ranges = [rng for rng, _ in out]
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    for (_, stop), (start, _) in zip(ranges, ranges[1:]):
        assert stop == start
    assert all(0 <= b - a <= local for a, b in ranges)
    assert sum(b - a for a, b in ranges) == size
    assert local * tp_size - size < tp_size  # at most tp_size - 1 padded rows in total


def _heads(num_q, num_kv, tp_size):
    return [(s.q_heads, s.kv_heads) for s in head_shards(num_q, num_kv, tp_size)]


def test_head_shards_uneven_gqa_9q_3kv():
    # SmolLM2: 9 query heads in 3 groups of 3. tp 2 splits whole groups 2 + 1.
    assert _heads(9, 3, 2) == [((0, 6), (0, 2)), ((6, 9), (2, 3))]
    assert _heads(9, 3, 3) == [((0, 3), (0, 1)), ((3, 6), (1, 2)), ((6, 9), (2, 3))]
    assert _heads(9, 3, 1) == [((0, 9), (0, 3))]


@pytest.mark.parametrize("num_q,num_kv,tp_size,expected", [
    # 8 q / 2 kv at tp 4: each KV head is replicated on 2 ranks, which split its 4 query heads.
    (8, 2, 4, [((0, 2), (0, 1)), ((2, 4), (0, 1)), ((4, 6), (1, 2)), ((6, 8), (1, 2))]),
    (4, 1, 2, [((0, 2), (0, 1)), ((2, 4), (0, 1))]),
    (4, 1, 3, [((0, 2), (0, 1)), ((2, 3), (0, 1)), ((3, 4), (0, 1))]),
    (4, 1, 4, [((i, i + 1), (0, 1)) for i in range(4)]),
])
def test_head_shards_replicate_kv_when_tp_exceeds_kv(num_q, num_kv, tp_size, expected):
    assert _heads(num_q, num_kv, tp_size) == expected


@pytest.mark.parametrize("num_q,num_kv", [(9, 3), (8, 2), (32, 8), (4, 1), (6, 6), (12, 4), (14, 2)])
def test_head_shards_invariants(num_q, num_kv):
    group = num_q // num_kv
    for tp_size in valid_tp_sizes(num_q, num_kv):
        shards = head_shards(num_q, num_kv, tp_size)
        assert len(shards) == tp_size
        # every query head owned by exactly one rank, contiguously
        assert shards[0].q_heads[0] == 0 and shards[-1].q_heads[1] == num_q
        for a, b in zip(shards, shards[1:]):
            assert a.q_heads[1] == b.q_heads[0]
        for s in shards:
            assert s.num_q >= 1 and s.num_kv >= 1
            # a rank's query heads read exactly the KV heads it holds (GQA groups never cross ranks)
            assert (s.q_heads[0] // group, (s.q_heads[1] - 1) // group + 1) == s.kv_heads
            assert s.num_q % s.num_kv == 0


def test_no_valid_split_names_valid_sizes():
    with pytest.raises(hf_tp.ShardingError) as info:
        head_shards(4, 2, 3, model_name="tiny-llama")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "tiny-llama" in message and "tp_size=3" in message
    # SPEC 4.1: the message names the model, the head counts and the tp sizes that would work.
    assert "num_attention_heads=4" in message and "num_key_value_heads=2" in message
    assert "Valid tp_size for this model: 1, 2, 4." in message
    assert valid_tp_sizes(4, 2) == [1, 2, 4]
    assert valid_tp_sizes(9, 3) == [1, 2, 3, 6, 9]  # tp 6: each KV head on 2 ranks, q heads 2 + 1


def test_head_rows():
    assert head_rows((6, 9), 64) == (384, 576)


@pytest.mark.parametrize("arch,tp_size,overrides", [
    ("llama", 2, dict(hidden_size=72, num_attention_heads=9, num_key_value_heads=3)),
    ("llama", 3, dict(num_attention_heads=4, num_key_value_heads=1)),
    ("qwen2", 2, {}),
    ("qwen3", 3, {}),
])
def test_shard_then_concat_is_the_original(arch, tp_size, overrides):
    """Cut random full tensors with the plan's ParamShard pieces, as the loader does, then put every
    rank's local tensor back at its ranges: the original comes back. Ranges may repeat across ranks
    only as whole identical ranges (replicated KV heads), never overlap partially."""
    config = tiny_config(arch, **overrides)
    skeleton = build_skeleton(config, torch.float32)
    plan = build_plan(skeleton, config, get_policy(config), tp_size)
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for name, param in skeleton.named_parameters():
        shard = plan.param_shard(name)
        if shard is None:
            continue
        full = torch.randn(tuple(param.shape), generator=gen)
        rebuilt = torch.full_like(full, float("nan"))
        ranges = set()
        for r in range(tp_size):
            local = torch.cat([full.narrow(shard.dim, a, b - a) for a, b in shard.pieces[r]], dim=shard.dim)
            assert local.shape[shard.dim] <= shard.local_size[r]
            offset = 0
            for a, b in shard.pieces[r]:
                rebuilt.narrow(shard.dim, a, b - a).copy_(local.narrow(shard.dim, offset, b - a))
                offset += b - a
                ranges.add((a, b))
        ordered = sorted(ranges)
        for (_, stop), (start, _) in zip(ordered, ordered[1:]):
            assert stop <= start, f"{name}: ranges {ordered} overlap partially"
        torch.testing.assert_close(rebuilt, full, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")
        checked += 1
    assert checked >= 7 * config.num_hidden_layers + 1  # q, k, v, o, gate, up, down per layer + vocab
