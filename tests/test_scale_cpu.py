"""tp 4 and tp 8 on CPU (gloo): the part of the 4- and 8-GPU scale test that CPUs can do. A tiny
Llama with 8 query / 2 KV heads: at tp 4 each KV head is replicated on 2 ranks, at tp 8 on 4 ranks
with one query head per rank. Logits and 32 greedy tokens must match the unsplit model."""

from __future__ import annotations

import pytest
import torch

from conftest import load_reference, rel_err, run_ranks, save_tiny_model, tiny_config

PROMPT = torch.tensor([[5, 17, 42, 8, 99, 3, 61]])


def logits_and_tokens(folder: str, tp_size: int):
    import hf_tp

    model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=tp_size, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        logits = model(PROMPT).logits
    return logits, model.generate(PROMPT, max_new_tokens=32, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("tp_size", [4, 8])
def test_tp4_tp8_match_transformers(tmp_path, tp_size):
    folder = save_tiny_model(tmp_path / "m", tiny_config("llama", hidden_size=64, num_attention_heads=8,
                                                         num_key_value_heads=2, tie_word_embeddings=True))
    ref = load_reference(folder)
    with torch.no_grad():
        want_logits = ref(PROMPT).logits
    want_tokens = ref.generate(PROMPT, max_new_tokens=32, do_sample=False, pad_token_id=0)
    results = run_ranks(logits_and_tokens, tp_size, str(folder), tp_size, timeout=400)
    for rank, (logits, tokens) in enumerate(results):
        # fp32; the all-reduce sums partial products in a different order than one GEMM does.
        assert rel_err(logits, want_logits) <= 1e-5, f"rank {rank}"
        assert torch.equal(tokens, want_tokens), f"rank {rank}"
