"""1 process: policies and the sharding plan, computed on meta-device skeletons of the tiny models."""

from __future__ import annotations

import dataclasses
import fnmatch

import pytest
import torch
import transformers
from torch import nn

import hf_tp
from hf_tp.parallel.comm import TPGroup
from hf_tp.parallel.sharding import valid_tp_sizes
from hf_tp.parallelize import build_skeleton, parallelize
from hf_tp.policies import LLAMA, Policy, get_policy, register_policy, supported_model_types
from hf_tp.policies.plan import build_plan

from conftest import ARCHS, tiny_config

# Geometries on top of each arch's defaults (6 q / 3 kv heads, qwen3 head_dim 16).
GEOMETRIES = {
    "default": {},
    "kv1": dict(num_attention_heads=4, num_key_value_heads=1),
    "gqa9_tied": dict(hidden_size=72, num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
}
CASES = [(arch, geo, tp) for arch in ARCHS for geo in GEOMETRIES for tp in (1, 2, 3)]


def _skeleton_and_plan(arch, geometry, tp_size):
    config = tiny_config(arch, **GEOMETRIES[geometry])
    skeleton = build_skeleton(config, torch.float32)
    return config, skeleton, build_plan(skeleton, config, get_policy(config), tp_size)


def _valid(arch, geometry, tp_size):
    config = tiny_config(arch, **GEOMETRIES[geometry])
    return tp_size in valid_tp_sizes(config.num_attention_heads, config.num_key_value_heads)


@pytest.mark.parametrize("arch,geometry,tp_size", CASES)
def test_every_linear_is_covered(arch, geometry, tp_size):
    assert _valid(arch, geometry, tp_size)  # every case here is splittable; the invalid ones are in test_errors
    config, skeleton, plan = _skeleton_and_plan(arch, geometry, tp_size)
    policy = get_policy(config)
    replicated = [g for g, style in policy.rules.items() if style == "replicate"]
    linears = [n for n, m in skeleton.named_modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 7 * config.num_hidden_layers + 1
    for name in linears:
        assert name in plan.modules or any(fnmatch.fnmatchcase(name, g) for g in replicated), name
    assert plan.modules["model.embed_tokens"].style == "vocab"
    assert plan.modules["lm_head"].style == "vocab"
    assert plan.tp_size == tp_size and plan.model_type == arch
    assert len(plan.attention) == config.num_hidden_layers


@pytest.mark.parametrize("arch,geometry,tp_size", CASES)
def test_rank_slices_reassemble_each_weight(arch, geometry, tp_size):
    """Per parameter: the ranks' ranges tile the split dimension (replicated KV ranges repeat whole),
    and each rank's parallelized layer has exactly the local shape the plan promises."""
    config, skeleton, plan = _skeleton_and_plan(arch, geometry, tp_size)
    full_shapes = {n: tuple(p.shape) for n, p in skeleton.named_parameters(remove_duplicate=False)}
    for name, full_shape in full_shapes.items():
        shard = plan.param_shard(name)
        if shard is None:
            assert len(full_shape) == 1, f"{name} is replicated but is not a norm weight"
            continue
        ranges = sorted({rng for r in range(tp_size) for rng in shard.pieces[r]})
        covered = 0
        for a, b in ranges:
            assert a == covered, f"{name}: gap or partial overlap at {a} (ranges {ranges})"
            covered = b
        assert covered == full_shape[shard.dim], f"{name}: ranges {ranges} do not reach {full_shape[shard.dim]}"
    for rank in range(tp_size):
        _, local_model, _ = _skeleton_and_plan(arch, geometry, tp_size)
        parallelize(local_model, plan, TPGroup(tp_rank=rank, tp_size=tp_size, device=torch.device("cpu")))
        local = dict(local_model.named_parameters(remove_duplicate=False))
        assert local.keys() == full_shapes.keys()
        for name, full_shape in full_shapes.items():
            shard = plan.param_shard(name)
            expected = list(full_shape)
            if shard is not None:
                expected[shard.dim] = shard.local_size[rank]
            assert tuple(local[name].shape) == tuple(expected), (name, rank)
        if config.tie_word_embeddings:
            assert local_model.lm_head.weight is local_model.model.embed_tokens.weight


def test_kv_replicated_heads_on_attention_modules():
    config, skeleton, plan = _skeleton_and_plan("llama", "kv1", 3)
    shards = plan.attention["model.layers.0.self_attn"]
    assert [(s.q_heads, s.kv_heads) for s in shards] == [((0, 2), (0, 1)), ((2, 3), (0, 1)), ((3, 4), (0, 1))]
    head_dim = config.hidden_size // config.num_attention_heads
    k = plan.modules["model.layers.0.self_attn.k_proj"].params["weight"]
    assert k.pieces == (((0, head_dim),),) * 3  # the one KV head on every rank
    parallelize(skeleton, plan, TPGroup(tp_rank=1, tp_size=3, device=torch.device("cpu")))
    attn = skeleton.model.layers[0].self_attn
    assert attn.num_key_value_groups == 1  # 1 query head per (replicated) KV head on rank 1


def test_typo_rule_names_closest_module_pattern():
    rules = dict(LLAMA.rules)
    del rules["model.layers.*.mlp.gate_proj"]
    rules["model.layers.*.mlp.gate_projj"] = "column"
    policy = dataclasses.replace(LLAMA, name="typo", rules=rules)
    config = tiny_config("llama")
    with pytest.raises(hf_tp.PolicyError) as info:
        build_plan(build_skeleton(config, torch.float32), config, policy, 2)
    message = str(info.value)
    assert "'model.layers.*.mlp.gate_projj'" in message and "matched no module" in message
    assert "Closest: 'model.layers.*.mlp.gate_proj'" in message


def test_unmatched_linear_raises_not_warns():
    rules = {g: s for g, s in LLAMA.rules.items() if ".mlp." not in g}
    policy = dataclasses.replace(LLAMA, name="no_mlp", rules=rules)
    config = tiny_config("llama")
    with pytest.raises(hf_tp.PolicyError, match=r"mlp\.(gate|up|down)_proj.*replicate"):
        build_plan(build_skeleton(config, torch.float32), config, policy, 2)


def test_policy_rejects_unknown_style():
    with pytest.raises(ValueError, match="colwise"):
        Policy(name="bad", model_types=("x",), rules={"lm_head": "colwise"})


def test_get_policy_unsupported_lists_supported_types():
    with pytest.raises(hf_tp.PolicyError) as info:
        get_policy(transformers.BertConfig())
    message = str(info.value)
    assert "'bert'" in message
    for model_type in ("llama", "mistral", "qwen2", "qwen3"):
        assert model_type in message
    assert "register_policy" in message
    assert set(supported_model_types()) >= {"llama", "mistral", "qwen2", "qwen3"}


def test_register_policy(monkeypatch):
    monkeypatch.setattr(hf_tp.policies, "_REGISTRY", dict(hf_tp.policies._REGISTRY))
    config = tiny_config("llama")
    config.model_type = "my_llama"
    # A policy that keeps the MLP whole on every rank.
    rules = {g: ("replicate" if ".mlp." in g else s) for g, s in LLAMA.rules.items()}
    mine = dataclasses.replace(LLAMA, name="mine", model_types=("my_llama",), rules=rules)
    assert "my_llama" not in supported_model_types()
    try:
        assert get_policy(config) is not mine
    except hf_tp.PolicyError:
        pass  # no policy at all is fine too; what matters is that registering changes the answer
    register_policy("my_llama", mine)
    assert get_policy(config) is mine
    assert "my_llama" in supported_model_types()
    plan = build_plan(build_skeleton(tiny_config("llama"), torch.float32), config, mine, 2)
    assert not any(".mlp." in name for name in plan.modules)
    assert "model.layers.1.self_attn.q_proj" in plan.modules
    with pytest.raises(TypeError, match="Policy"):
        register_policy("my_llama", {"lm_head": "vocab"})


def test_describe(capsys):
    _, _, plan = _skeleton_and_plan("llama", "gqa9_tied", 2)
    print(plan.describe())
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == "ShardingPlan(model_type='llama', tp_size=2)"
    # one line per tensor pattern, collapsed over layers
    q_lines = [ln for ln in lines if "model.layers.*.self_attn.q_proj.weight" in ln]
    assert len(q_lines) == 1 and "column" in q_lines[0]
    assert "r0:[(0, 48)]" in q_lines[0] and "r1:[(48, 72)]" in q_lines[0]  # 6 + 3 heads of 8
    assert any("o_proj.weight" in ln and "row" in ln and "dim=1" in ln for ln in lines)
    assert any("lm_head.weight" in ln or "embed_tokens.weight" in ln for ln in lines)
    assert any(ln.strip().startswith("heads") and "r0:q(0, 6) kv(0, 2)" in ln and "r1:q(6, 9) kv(2, 3)" in ln
               for ln in lines)
    one = plan.describe(tp_rank=1)
    assert "r1:" in one and "r0:" not in one


_SMALL = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
              head_dim=32, vocab_size=128)


@pytest.mark.parametrize("model_type,extra", [
    ("llama", dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    ("gemma3_text", {}),
    # Gemma3n: a buffer of the inner Gemma3nTextModel is initialised by *its* _init_weights.
    ("gemma3n_text", dict(vocab_size_per_layer_input=128, hidden_size_per_layer_input=16, laurel_rank=8,
                          activation_sparsity_pattern=[0.0, 0.0], layer_types=["sliding_attention", "full_attention"],
                          num_kv_shared_layers=0)),
])
def test_skeleton_buffers_equal_transformers_own_init(model_type, extra):
    """build_skeleton skips weight init on meta but must leave every buffer as Transformers builds it."""
    from accelerate import init_empty_weights

    config = transformers.AutoConfig.for_model(model_type, **_SMALL, **extra)
    ours = build_skeleton(config, torch.float32)
    with init_empty_weights(include_buffers=False):
        ref = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    want = dict(ref.named_buffers())
    assert want and dict(ours.named_buffers()).keys() == want.keys()
    for name, buffer in ours.named_buffers():
        assert torch.equal(buffer, want[name]), name
    assert all(p.device.type == "meta" for p in ours.parameters())


def test_a_multimodal_model_is_refused_by_name_not_by_its_vision_tower():
    """Gemma 3's multimodal config carries a text config with a base_model_tp_plan: the text policy used to be
    taken, and the load then failed on a vision-tower weight with a head-geometry ShardingError."""
    with pytest.raises(hf_tp.PolicyError, match=r"'gemma3' is a multimodal model \(vision_config\).*'gemma3_text'"):
        get_policy(transformers.Gemma3Config())
    assert get_policy(transformers.Gemma3TextConfig()).name == "gemma"  # the text-only model keeps its policy
