"""Mixtral and Qwen3-MoE at tp 1, 2 and 3 (real gloo processes) against the unsplit Transformers model, with a
routing tie built into the checkpoint: three experts have identical router rows, so every token's top-2 is
decided by torch.topk's tie-breaking among them. hf_tp must choose the very experts Transformers chooses
(compared id for id at every layer), and generate the same greedy tokens, through generate() and through
hf_tp's own decode loop (fast_decode; on CPU it runs without graphs)."""

from __future__ import annotations

import os

import pytest
import torch
import transformers
from conftest import load_reference, rel_err, run_ranks

NEW_TOKENS = 24
TIED = (1, 2, 3)  # experts whose router rows are made equal
_BASE = dict(vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
             max_position_embeddings=128, bos_token_id=1, eos_token_id=None, pad_token_id=0, initializer_range=0.1,
             tie_word_embeddings=False)
CONFIGS = {
    "mixtral": lambda: transformers.MixtralConfig(**_BASE, intermediate_size=40, num_local_experts=4,
                                                  num_experts_per_tok=2),
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(**_BASE, intermediate_size=80, head_dim=16, moe_intermediate_size=40,
                                                     num_experts=4, num_experts_per_tok=2, norm_topk_prob=True),
}


def _prompt() -> torch.Tensor:
    return torch.tensor([[1, 17, 42, 9, 77, 23, 5, 61, 33, 88, 12, 4], [1, 5, 8, 13, 21, 34, 55, 89, 44, 33, 77, 2]])


def _routers(model):
    return [layer.mlp.gate for layer in model.model.layers if hasattr(layer.mlp, "experts")]


def _route(model, prompt):
    """Every MoE layer's router logits and chosen experts for ``prompt``, plus the model's logits."""
    seen = []
    hooks = [r.register_forward_hook(lambda _m, _a, out: seen.append((out[0].detach(), out[2].detach())))
             for r in _routers(model)]
    try:
        with torch.no_grad():
            logits = model(prompt).logits
    finally:
        for h in hooks:
            h.remove()
    return logits, seen


def _save_tied(folder, config):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:  # norms away from 1, so a norm applied to the wrong slice shows
                param.add_(torch.randn_like(param) * 0.1)
        for router in _routers(model):
            router.weight[list(TIED)] = router.weight[TIED[0]].clone()
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """arch -> (folder, reference logits, reference chosen experts per layer, reference greedy tokens)."""
    root = tmp_path_factory.mktemp("moe_tie")
    out = {}
    for arch, make in CONFIGS.items():
        folder = _save_tied(root / arch, make())
        ref = load_reference(folder)
        logits, routes = _route(ref, _prompt())
        # The tie is real: the tied experts' router logits are bitwise equal for every token, and for every
        # token the top-2 boundary falls inside the tied group (only some of them are chosen) ...
        for router_logits, chosen in routes:
            tied_logits = router_logits[:, list(TIED)]
            assert torch.equal(tied_logits, tied_logits[:, :1].expand_as(tied_logits))
            assert all(0 < len(set(row.tolist()) & set(TIED)) < len(TIED) for row in chosen)
        # ... and choosing another of the tied experts would change the output: their weights differ.
        experts = ref.model.layers[0].mlp.experts.gate_up_proj
        assert not torch.equal(experts[TIED[0]], experts[TIED[1]]) and not torch.equal(experts[TIED[1]], experts[TIED[2]])
        with torch.no_grad():
            tokens = ref.generate(_prompt(), max_new_tokens=NEW_TOKENS, do_sample=False)
        out[arch] = (folder, logits, [c for _, c in routes], tokens)
    return out


def _rank(folders: dict, new_tokens: int) -> dict:
    """One rank: each checkpoint through hf_tp; logits, chosen experts, greedy tokens (generate and decode loop)."""
    import hf_tp
    from hf_tp.assembly import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    tp_size = int(os.environ.get("WORLD_SIZE", "1"))
    results = {}
    for arch, folder in folders.items():
        tokens = {}
        for fast in (False, True):
            config = hf_tp.TPConfig(fast_decode=fast)
            if tp_size == 1:  # hf_tp's own layers and decode loop at tp 1 (from_pretrained would be plain Transformers)
                model = load_parallel_model(folder, TPGroup(tp_rank=0, tp_size=1, device=torch.device("cpu")),
                                            dtype=torch.float32, progress=False, tp_config=config)
            else:
                model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=tp_size, device="cpu",
                                                                   dtype=torch.float32, progress=False, tp_config=config)
            if not fast:
                logits, routes = _route(model, _prompt())
            with torch.no_grad():
                tokens[fast] = model.generate(_prompt(), max_new_tokens=new_tokens, do_sample=False)
        results[arch] = (logits, [c for _, c in routes], tokens[False], tokens[True])
    return results


def _check(tied, ranks, tp_size):
    failures = []
    for arch, (_, ref_logits, ref_routes, ref_tokens) in tied.items():
        logits, routes, tokens, loop_tokens = ranks[0][arch]
        if len(routes) != len(ref_routes) or any(not torch.equal(a, b) for a, b in zip(routes, ref_routes)):
            failures.append(f"{arch}: chosen experts differ from Transformers'")
        if rel_err(logits, ref_logits) > 1e-5:
            failures.append(f"{arch}: logits rel err {rel_err(logits, ref_logits):.2e}")
        if not torch.equal(tokens, ref_tokens):
            failures.append(f"{arch}: generate() tokens differ from Transformers'")
        if not torch.equal(loop_tokens, ref_tokens):
            failures.append(f"{arch}: decode-loop tokens differ from Transformers'")
        for rank in ranks[1:]:
            if not torch.equal(rank[arch][2], tokens) or not torch.equal(rank[arch][3], loop_tokens):
                failures.append(f"{arch}: ranks generated different tokens")
    assert not failures, f"tp_size={tp_size}:\n" + "\n".join(failures)


def test_moe_routing_tie_tp1(tied):
    torch.set_num_threads(1)
    _check(tied, [_rank({a: f for a, (f, *_) in tied.items()}, NEW_TOKENS)], 1)


@pytest.mark.parametrize("tp_size", [2, 3])
def test_moe_routing_tie_multi_rank(tied, tp_size):
    ranks = run_ranks(_rank, tp_size, {a: f for a, (f, *_) in tied.items()}, NEW_TOKENS, timeout=300)
    _check(tied, ranks, tp_size)
