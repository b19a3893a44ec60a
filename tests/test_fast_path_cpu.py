"""The fast decode path's compiled step, on CPU at tp 2: Transformers' static cache with the
decode forward compiled as one full graph (fullgraph=True: no graph break allowed), the
parallel layers' collectives traced as functional collectives. Tokens must equal the eager path.
On GPU the same graph runs with mode="reduce-overhead" (CUDA graphs)."""

from __future__ import annotations

import torch

from conftest import run_ranks, save_tiny_model, tiny_config

PROMPT = torch.tensor([[5, 17, 42, 8, 99, 3, 61, 7, 12]])


def eager_and_compiled(folder: str):
    from transformers import CompileConfig

    import os

    import hf_tp

    os.environ["HF_TP_FUSE"] = "1"  # trace the fused q/k/v and gate/up GEMMs too, as on CUDA
    model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=2, device="cpu", dtype=torch.float32)
    greedy = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    eager = model.generate(PROMPT, **greedy)
    config = CompileConfig(fullgraph=True, mode="default")
    config._compile_all_devices = True  # Transformers compiles on CUDA only unless told (its testing switch)
    compiled = model.generate(PROMPT, cache_implementation="static", compile_config=config, **greedy)
    return eager, compiled


def test_static_cache_compiled_decode_matches_eager(tmp_path):
    folder = save_tiny_model(tmp_path / "m", tiny_config("llama"))
    for rank, (eager, compiled) in enumerate(run_ranks(eager_and_compiled, 2, str(folder), timeout=500)):
        assert torch.equal(eager, compiled), f"rank {rank}: {eager.tolist()} != {compiled.tolist()}"
