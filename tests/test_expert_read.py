"""hf_tp.loading.experts.read_experts on real checkpoints written by Transformers' save_pretrained (one 2-D tensor
per expert and part) and read through real safe_open slices: every rank's slice of every fused 3-D expert parameter
lands in the rank's (experts, out, in) tensor in place, with no concatenation or stacking op, and equals the slice
of the unsplit Transformers model's parameter that the plan gives the rank (gate/up halves split per rank, down
split along its input dim, uneven pieces at tp 3, block FP8 dequantized piece by piece, tp 2 cutting a block).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import load_reference, save_tiny_model
from fp8_checkpoints import dequantized_reference, write_block_fp8
from torch.utils._python_dispatch import TorchDispatchMode

from hf_tp.loading.checkpoint import CheckpointIndex
from hf_tp.loading.experts import expert_part_keys, read_experts
from hf_tp.loading.quantization import read_quantization
from hf_tp.parallelize import build_skeleton
from hf_tp.policies import get_policy
from hf_tp.policies.plan import build_plan

_BASE = dict(vocab_size=101, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
             max_position_embeddings=128, bos_token_id=1, eos_token_id=None, pad_token_id=0, initializer_range=0.1,
             tie_word_embeddings=False)


class _Ops(TorchDispatchMode):
    """The names of the aten ops run inside the block."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """name -> (folder, the unsplit Transformers model holding the truth: fp32, FP8 weights dequantized)."""
    root = tmp_path_factory.mktemp("expert_read")
    # Expert widths of 40: cut in multiples of 8 at tp 3, rank 2 gets 8 where ranks 0 and 1 get 16.
    qwen = save_tiny_model(root / "qwen3_moe", transformers.Qwen3MoeConfig(
        **_BASE, hidden_size=48, intermediate_size=80, head_dim=16, moe_intermediate_size=40, num_experts=4,
        num_experts_per_tok=2, norm_topk_prob=True))
    mixtral = save_tiny_model(root / "mixtral", transformers.MixtralConfig(
        **_BASE, hidden_size=48, intermediate_size=40, num_local_experts=4, num_experts_per_tok=2),
        max_shard_size=None)
    # Block FP8 (128 x 128) experts of width 384: tp 2 cuts a block (192), tp 3 does not (128).
    src = save_tiny_model(root / "src_fp8", transformers.MixtralConfig(
        **{**_BASE, "num_attention_heads": 8, "num_key_value_heads": 4}, hidden_size=256, head_dim=32,
        intermediate_size=384, num_local_experts=4, num_experts_per_tok=2), max_shard_size=None)
    fp8 = write_block_fp8(src, root / "fp8")
    return {"qwen3_moe": (qwen, load_reference(qwen)), "mixtral": (mixtral, load_reference(mixtral)),
            "mixtral_fp8": (fp8, dequantized_reference(fp8, root / "fp8_reference"))}


def _rank_slice(full: torch.Tensor, shard, rank: int) -> torch.Tensor:
    """The rank's slice of an unsplit (experts, out, in) parameter, its pieces in order (the test's truth)."""
    if shard is None:
        return full
    return torch.cat([full.narrow(shard.dim, a, b - a) for a, b in shard.pieces[rank]], dim=shard.dim)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["qwen3_moe", "mixtral", "mixtral_fp8"])
def test_experts_read_straight_into_the_rank_parameter(checkpoints, name, dtype):
    folder, reference = checkpoints[name]
    config = transformers.AutoConfig.from_pretrained(folder)
    index = CheckpointIndex(folder, quantization=read_quantization(config))
    truth = {n: p.detach() for n, p in reference.named_parameters()}
    skeleton = build_skeleton(config, dtype)
    read, uneven = 0, False
    for tp_size in (1, 2, 3):
        plan = build_plan(skeleton, config, get_policy(config), tp_size)
        for pname, param in skeleton.named_parameters():
            keys = expert_part_keys(pname, index)
            if keys is None:
                continue
            assert pname.endswith(("gate_up_proj", "down_proj")) and param.dim() == 3
            shard = plan.param_shard(pname)
            assert shard is not None and shard.dim == (1 if pname.endswith("gate_up_proj") else 2)
            sizes = set()
            for rank in range(tp_size):
                shape = list(param.shape)
                shape[shard.dim] = shard.local_size[rank]
                sizes.add(shard.local_size[rank])
                dest = torch.full(shape, float("nan"), dtype=dtype)
                address = dest.data_ptr()
                with _Ops() as ops:
                    nbytes = read_experts(index, keys, shard.dim, shard.pieces[rank], dest)
                assert not {"cat", "stack", "_cat"} & ops.names, sorted(ops.names)
                # Written in place: copied into (copy_), or read straight from the file (preadv) when the dtypes match
                assert dest.data_ptr() == address and ("copy_" in ops.names or dtype == torch.float32)
                expected = _rank_slice(truth[pname], shard, rank).to(dtype)
                assert torch.equal(dest, expected), (name, pname, tp_size, rank)
                file_bytes = dest.numel() * (1 if name.endswith("fp8") else 4)  # FP8 or fp32 in the file
                assert nbytes >= file_bytes and (name.endswith("fp8") or nbytes == file_bytes)
                read += 1
            uneven |= len(sizes) > 1
    assert read == 2 * config.num_hidden_layers * (1 + 2 + 3)
    assert uneven == (name != "mixtral_fp8")  # 40 at tp 3: 16, 16, 8; 384: 384, 192, 128


def test_experts_read_refuses_a_mismatched_checkpoint(checkpoints):
    """A destination the checkpoint's experts do not fill (a config with more experts, or wider ones) is an
    error that says so, not a silent broadcast or a half-written parameter."""
    from hf_tp.errors import CheckpointError

    folder, _ = checkpoints["qwen3_moe"]
    index = CheckpointIndex(folder)
    keys = expert_part_keys("model.layers.0.mlp.experts.gate_up_proj", index)
    with pytest.raises(CheckpointError, match="4 experts where the config needs 5"):
        read_experts(index, keys, 1, ((0, 40), (40, 80)), torch.empty(5, 80, 48))
    with pytest.raises(CheckpointError, match="does not match its config"):
        read_experts(index, keys, 1, ((0, 40), (40, 80)), torch.empty(4, 80, 64))
    with pytest.raises(CheckpointError, match="does not match its config"):
        read_experts(index, keys, 1, ((0, 40), (40, 80)), torch.empty(4, 96, 48))
