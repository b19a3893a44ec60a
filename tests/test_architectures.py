"""Every architecture family of SPEC 4.1 at tp 2 and 3 in real gloo processes, against the unsplit
Transformers model loaded from the same tiny checkpoint: fp32 logits within 1e-5 (relative to the
largest logit; the all-reduces only change the summation order) and identical greedy tokens.

Several architectures share one multi-rank run, because each spawned rank pays seconds of imports.
"""

from __future__ import annotations

import os

import pytest
import torch
import transformers
from conftest import load_reference, rel_err, run_ranks, save_tiny_model

from hf_tp.errors import PolicyError
from hf_tp.policies import get_policy
from hf_tp.policies.auto import auto_policy
from hf_tp.policies.plan import build_plan

NEW_TOKENS = 64
TOL = 1e-5

_BASE = dict(vocab_size=101, num_hidden_layers=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=None,
             pad_token_id=0, initializer_range=0.1)
# 6 query heads everywhere: tp 2 and tp 3 both split them; with 3 KV heads tp 2 is the uneven
# GQA split (2 + 1 KV heads), and with 1 KV head (multi-query) the KV head is replicated.
_LLAMA_LIKE = dict(_BASE, hidden_size=48, intermediate_size=80, num_attention_heads=6, num_key_value_heads=3)

CONFIGS = {
    # Gemma: head_dim 16 != hidden/heads, tied embeddings, sqrt(hidden)-scaled embedding.
    "gemma": lambda: transformers.GemmaConfig(**_LLAMA_LIKE, head_dim=16),
    # Gemma 2: attention and final-logit softcapping, sliding window shorter than the prompt.
    "gemma2": lambda: transformers.Gemma2Config(**_LLAMA_LIKE, head_dim=16, sliding_window=4,
                                                attn_logit_softcapping=20.0, final_logit_softcapping=15.0),
    # Gemma 3 text: per-head q/k norms, local/global layers with a short sliding window.
    "gemma3_text": lambda: transformers.Gemma3TextConfig(**_LLAMA_LIKE, head_dim=16, sliding_window=4,
                                                         layer_types=["sliding_attention", "full_attention"]),
    # Phi-3: fused qkv_proj (uneven GQA at tp 2) and gate_up_proj, partial rotary.
    "phi3": lambda: transformers.Phi3Config(**_LLAMA_LIKE, partial_rotary_factor=0.5, tie_word_embeddings=False),
    # GPT-2: Conv1D (in, out) weights, fused c_attn, tied embeddings.
    "gpt2": lambda: transformers.GPT2Config(**_BASE,
                                            n_embd=48, n_head=6, n_inner=80),
    # GPT-NeoX: per-head interleaved query_key_value, partial rotary, parallel residual.
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**_BASE, hidden_size=48, intermediate_size=80,
                                                   num_attention_heads=6, rotary_pct=0.5, tie_word_embeddings=False),
    # OPT: biases everywhere, learned positions, tied LM head.
    "opt": lambda: transformers.OPTConfig(**_BASE, hidden_size=48, ffn_dim=80, num_attention_heads=6,
                                          word_embed_proj_dim=48),
    # Falcon, new decoder architecture: GQA packed per KV group, parallel attention/MLP with two norms.
    "falcon": lambda: transformers.FalconConfig(**_BASE, hidden_size=48, num_attention_heads=6, num_kv_heads=3,
                                                new_decoder_architecture=True, ffn_hidden_size=80, bias=True),
    # BLOOM: ALiBi (6 heads: not a power of two, so the slopes follow the interpolated rule).
    "bloom": lambda: transformers.BloomConfig(**_BASE, hidden_size=48, n_head=6),
    # Mixtral: 4 experts, top 2; experts split, router replicated.
    "mixtral": lambda: transformers.MixtralConfig(**_LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2),
    # Qwen3-MoE: per-head q/k norms, one sparse and one dense (mlp_only_layers) layer.
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(**_LLAMA_LIKE, head_dim=16, moe_intermediate_size=40,
                                                     num_experts=4, num_experts_per_tok=2, mlp_only_layers=[1]),
}
# Falcon-7B layout: multi-query (one KV head, replicated on every rank), one shared layer norm.
CONFIGS["falcon_mq"] = lambda: transformers.FalconConfig(**_BASE, hidden_size=48, num_attention_heads=6, multi_query=True,
                                                         new_decoder_architecture=False, parallel_attn=True)
# Automatic policies (no hand-written one): Granite (llama-like with multipliers), StarCoder2
# (biases, plain MLP), OLMo-2 (full-width q/k norms: Transformers' plan gathers q/k/v, kept whole).
AUTO_CONFIGS = {
    "granite": lambda: transformers.GraniteConfig(**_LLAMA_LIKE, embedding_multiplier=2.0, logits_scaling=1.5,
                                                  residual_multiplier=0.5, attention_multiplier=0.3),
    "starcoder2": lambda: transformers.Starcoder2Config(**_LLAMA_LIKE, sliding_window=None),
    "olmo2": lambda: transformers.Olmo2Config(**_LLAMA_LIKE),
}
ALL_CONFIGS = {**CONFIGS, **AUTO_CONFIGS}


def _prompt() -> torch.Tensor:
    return torch.tensor([[1, 17, 42, 9, 77, 23, 5, 61, 33, 88, 12, 4]])


def _run_all(folders: dict[str, str], new_tokens: int) -> dict:
    """One rank: load every checkpoint with hf_tp, return logits and greedy tokens per architecture
    (or the error text, so that one broken architecture does not hide the others)."""
    import hf_tp

    os.environ["HF_TP_FUSE"] = "1"  # policies' same-input groups (q/k/v, gate/up) fused, as on CUDA
    tp_size = int(os.environ["WORLD_SIZE"])
    prompt = _prompt()
    results = {}
    for arch, folder in folders.items():
        try:
            model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=tp_size, device="cpu",
                                                               dtype=torch.float32, progress=False)
            with torch.no_grad():
                logits = model(prompt).logits
                tokens = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False)
            results[arch] = (logits, tokens)
        except Exception as exc:  # noqa: BLE001 - reported per architecture by the parent
            results[arch] = f"{type(exc).__name__}: {exc}"
    return results


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch -> (folder, reference logits, reference greedy tokens), from the unsplit Transformers model."""
    root = tmp_path_factory.mktemp("arch")
    out = {}
    for arch, make in ALL_CONFIGS.items():
        folder = save_tiny_model(root / arch, make(), seed=0)
        ref = load_reference(folder)
        with torch.no_grad():
            logits = ref(_prompt()).logits
            tokens = ref.generate(_prompt(), max_new_tokens=NEW_TOKENS, do_sample=False)
        out[arch] = (str(folder), logits, tokens)
    return out


def _compare(checkpoints, tp_size: int) -> None:
    folders = {arch: folder for arch, (folder, _, _) in checkpoints.items()}
    ranks = run_ranks(_run_all, tp_size, folders, NEW_TOKENS, timeout=300)
    failures = []
    for arch, (_, ref_logits, ref_tokens) in checkpoints.items():
        got = ranks[0][arch]
        if isinstance(got, str):
            failures.append(f"{arch}: {got}")
            continue
        logits, tokens = got
        err = rel_err(logits, ref_logits)
        if err > TOL:
            failures.append(f"{arch}: logits rel err {err:.2e} > {TOL}")
        if not torch.equal(tokens, ref_tokens):
            failures.append(f"{arch}: greedy tokens differ from Transformers'")
        for rank in ranks[1:]:
            if not torch.equal(rank[arch][1], tokens):
                failures.append(f"{arch}: ranks generated different tokens")
    assert not failures, f"tp_size={tp_size}:\n" + "\n".join(failures)


def test_architectures_tp2(checkpoints):
    _compare(checkpoints, 2)


def test_architectures_tp3(checkpoints):
    _compare(checkpoints, 3)


# ---- plans (one process, no weights) -------------------------------------------------------


def _plan(arch: str, tp_size: int):
    config = ALL_CONFIGS[arch]()
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return build_plan(model, config, get_policy(config), tp_size)


def test_phi3_fused_parts_are_split_per_rank():
    plan = _plan("phi3", 2)
    # 6 q heads / 3 kv heads of 8 dims: rank 0 owns q 0-3, kv 0-1; rank 1 q 4-5, kv 2.
    qkv = plan.modules["model.layers.0.self_attn.qkv_proj"].params["weight"]
    assert qkv.pieces == (((0, 32), (48, 64), (72, 88)), ((32, 48), (64, 72), (88, 96)))
    gate_up = plan.modules["model.layers.0.mlp.gate_up_proj"].params["weight"]
    assert gate_up.pieces == (((0, 40), (80, 120)), ((40, 80), (120, 160)))


def test_grouped_qkv_and_experts_plans():
    neox = _plan("gpt_neox", 3).modules["gpt_neox.layers.0.attention.query_key_value"].params["weight"]
    assert neox.pieces == (((0, 48),), ((48, 96),), ((96, 144),))  # 2 heads x [q k v] x 8 dims each
    # Falcon-7B layout at tp 2: [q0..q5 | k | v]; each rank reads its query heads plus the shared k, v.
    mq = _plan("falcon_mq", 2).modules["transformer.h.0.self_attention.query_key_value"].params["weight"]
    assert mq.pieces == (((0, 24), (48, 64)), ((24, 64),))
    experts = _plan("mixtral", 2).modules["model.layers.0.mlp.experts"]
    assert experts.layout == "experts" and experts.style == "row"
    assert experts.params["gate_up_proj"].dim == 1 and experts.params["down_proj"].dim == 2
    assert experts.params["gate_up_proj"].pieces[1] == ((40, 80), (120, 160))
    # tp 3: intermediate 80 cut on multiples of 8 (grouped_mm needs 16-byte-aligned strides).
    down = _plan("mixtral", 3).modules["model.layers.0.mlp.experts"].params["down_proj"]
    assert down.pieces == (((0, 32),), ((32, 56),), ((56, 80),))


def test_auto_policy_translates_and_refuses():
    policy = auto_policy(AUTO_CONFIGS["granite"]())
    assert policy.rules["*.layers.*.self_attn.q_proj"] == "column"
    assert policy.heads["*.layers.*.self_attn.k_proj"] == "kv"
    assert policy.attention == "*.layers.*.self_attn"
    config = AUTO_CONFIGS["granite"]()
    config.base_model_tp_plan = {"layers.*.self_attn.q_proj": "colwise_magic"}
    with pytest.raises(PolicyError, match="colwise_magic"):
        auto_policy(config)


def test_no_policy_and_no_plan_is_a_clear_error():
    config = transformers.GPTJConfig(n_embd=48, n_head=6, n_layer=1, vocab_size=101)
    config.base_model_tp_plan = None
    with pytest.raises(PolicyError, match="Supported model types: .*bloom.*llama"):
        get_policy(config)
