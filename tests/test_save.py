"""save_pretrained on a split model (tp 2 and 3, gloo, real processes): the folder it writes loads in
plain Transformers with exactly the weights of the checkpoint the split model was loaded from.

Covers the ways a rank's slice maps back: row and column splits, uneven GQA groups and padded vocab
shards (Llama, 9 query / 3 KV heads, vocab 101), tied embeddings, GPT-2's transposed Conv1D with fused
c_attn, Phi-3's fused qkv (several pieces per rank), 3-D MoE experts (Qwen3-MoE), and a multi-query KV
head replicated on every rank (Falcon).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import load_reference, run_ranks_once, save_tiny_model, tiny_config

ARCHS = ("llama", "gpt2", "phi3", "qwen3_moe", "falcon_mq")
_RUNS: dict = {}


def _config(arch: str):
    from test_architectures import CONFIGS

    if arch == "llama":
        return tiny_config("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3,
                           tie_word_embeddings=True)
    return CONFIGS[arch]()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("save")
    return {arch: str(save_tiny_model(root / arch, _config(arch), seed=i)) for i, arch in enumerate(ARCHS)}


def load_and_save(folders: dict[str, str], tp_size: int) -> dict[str, str]:
    """Rank function: load each checkpoint split over the ranks, save it back unsplit from rank 0.
    With the same-input GEMM fusion on (the CUDA default), so q/k/v and gate/up are views of one buffer."""
    import os

    import hf_tp

    os.environ["HF_TP_FUSE"] = "1"

    saved = {}
    for arch, folder in folders.items():
        model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=tp_size, dtype=torch.float32)
        out = str(Path(folder).parent / f"{arch}_saved_tp{tp_size}")
        model.save_pretrained(out)
        saved[arch] = out
    return saved


@pytest.mark.parametrize("tp_size", [2, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_saved_checkpoint_equals_the_original(folders, arch, tp_size):
    saved = run_ranks_once(_RUNS, load_and_save, tp_size, folders, tp_size, timeout=400)[0]
    want = load_reference(folders[arch]).state_dict()
    got = load_reference(saved[arch]).state_dict()
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), (arch, tp_size, name)
    assert (Path(saved[arch]) / "config.json").is_file()


def test_state_dict_argument_is_refused():
    """The split model gathers its own state dict; a caller's dict would be written instead of it."""
    from hf_tp.generation.spmd import TensorParallelMixin

    with pytest.raises(ValueError, match="gathers the full state dict"):
        TensorParallelMixin.save_pretrained(object(), "/nonexistent", state_dict={})
