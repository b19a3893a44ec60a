"""The decode loop's compile-and-capture agreement, on 2 gloo ranks (CPU): the ranks of one group run
the same collectives in the same order whatever each rank's compile does, and a compile failure on one
rank makes every rank decode without graphs, with the right tokens (issue 12).

On CPU there is no graph to capture; the warm-up and both agreements run as on CUDA (Dynamo traces the
step whole, with its eager backend), and HF_TP_FAULT_INJECT="1:compile:raise" makes rank 1's compile fail.
The "inductor" case compiles each rank's step with Inductor, as on CUDA, the functional all-reduces included
(over gloo): each rank's generated code, different per rank with uneven heads, must keep the collectives in
one order.
"""

from __future__ import annotations

import os

import pytest
import torch

from conftest import load_reference, run_ranks, save_tiny_model, tiny_config

PAD = 0
GREEDY = dict(do_sample=False, max_new_tokens=12, pad_token_id=PAD)


def decode_with_warm_up(folder: str, ids: torch.Tensor, mask: torch.Tensor, fault: str):
    import hf_tp
    from hf_tp.generation.decode_loop import StaticDecoder

    os.environ["HF_TP_FAST_DECODE"] = "1"
    inductor_compiles = []
    if fault == "inductor":  # the loop compiles with backend="eager" off CUDA; this rank process uses Inductor
        from torch._inductor.compile_fx import compile_fx

        def inductor(graph_module, example_inputs):  # Inductor itself, counted
            inductor_compiles.append(graph_module)
            return compile_fx(graph_module, example_inputs)

        compile_ = torch.compile
        torch.compile = lambda fn, **kwargs: compile_(fn, **{**kwargs, "backend": inductor, "options": None})
        fault = ""
    if fault:
        os.environ["HF_TP_FAULT_INJECT"] = fault
    model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=2, device="cpu", dtype=torch.float32)
    # What graphs_enabled() gives on CUDA: warm up (and, there, capture) before decoding.
    model._hf_tp_static_decoder = decoder = StaticDecoder(model, model.hf_tp, use_graphs=True)
    first = model.generate(ids, attention_mask=mask, **GREEDY)
    second = model.generate(ids, attention_mask=mask, **GREEDY)
    return {"first": first, "second": second, "use_graphs": decoder.use_graphs,
            "inductor_compiles": len(inductor_compiles)}


@pytest.mark.parametrize("fault", ["", "1:compile:raise", "inductor"],
                         ids=["all-compile", "rank1-compile-fails", "inductor"])
def test_ranks_agree_on_the_compiled_step(tmp_path, fault):
    # 9 query / 3 KV heads: rank 0 holds 6 heads, rank 1 holds 3, so the ranks trace different graphs.
    config = tiny_config("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3)
    folder = str(save_tiny_model(tmp_path / "llama_uneven", config, seed=7))
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 101, (2, 8), generator=gen)
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = PAD, 0
    with torch.no_grad():
        expected = load_reference(folder).generate(ids, attention_mask=mask, **GREEDY)
    results = run_ranks(decode_with_warm_up, 2, folder, ids, mask, fault, timeout=300)
    for rank, out in enumerate(results):
        assert torch.equal(out["first"], expected), f"rank {rank}"
        assert torch.equal(out["second"], expected), f"rank {rank}"
        # Both ranks keep the compiled step, or both give it up: never one of each.
        assert out["use_graphs"] is (fault != "1:compile:raise"), (rank, out["use_graphs"])
        assert (out["inductor_compiles"] > 0) is (fault == "inductor"), (rank, out["inductor_compiles"])


def decode_models_one_after_another(folder: str, ids: torch.Tensor, mask: torch.Tensor, models: int):
    """Load the same checkpoint ``models`` times in one process per rank (a notebook that reloads it) under a
    recompile limit of 2, decoding with the compiled step each time: per model, whether it kept the step, and its
    tokens."""
    import torch._dynamo.config as dynamo_config

    import hf_tp
    from hf_tp.generation.decode_loop import StaticDecoder

    os.environ["HF_TP_FAST_DECODE"] = "1"
    dynamo_config.recompile_limit = 2  # Dynamo's default is 8: the same failure, sooner
    results = []
    for _ in range(models):
        model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=2, device="cpu", dtype=torch.float32)
        model._hf_tp_static_decoder = decoder = StaticDecoder(model, model.hf_tp, use_graphs=True)
        tokens = model.generate(ids, attention_mask=mask, **GREEDY)
        results.append((decoder.use_graphs and decoder._compiled is not None, tokens))
    return results


def test_each_model_has_its_own_recompile_limit(tmp_path):
    """Dynamo counts compiled graphs per code object: each decoder compiles its own copy of the forward, so a
    process that loads model after model never runs out of compilations (before, the third model here decoded
    without the compiled step)."""
    folder = str(save_tiny_model(tmp_path / "llama", tiny_config("llama"), seed=3))
    ids = torch.randint(1, 101, (1, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = load_reference(folder).generate(ids, attention_mask=mask, **GREEDY)
    for rank, results in enumerate(run_ranks(decode_models_one_after_another, 2, folder, ids, mask, 4, timeout=300)):
        for index, (compiled, tokens) in enumerate(results):
            assert compiled, f"rank {rank}: model {index + 1} of {len(results)} decoded without the compiled step"
            assert torch.equal(tokens, expected), f"rank {rank}, model {index + 1}: {tokens.tolist()} != {expected.tolist()}"
