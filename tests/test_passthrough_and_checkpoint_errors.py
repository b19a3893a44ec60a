"""Paths no other test ran (found with the coverage run, docs/testing.md "Tests and coverage"): tp_size None or 1
is plain Transformers (SPEC 2), and the checkpoint errors raised in the calling process before any
worker starts. One process, no process group."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import hf_tp
from conftest import load_reference, rel_err


@pytest.mark.parametrize("tp_size", [None, 1])
def test_tp_size_none_or_1_is_transformers_itself(tiny_checkpoint, tp_size):
    """SPEC 2: behave exactly like Transformers, no processes, no wrapping: Transformers' own class and
    the same logits, bit for bit (same kernels, same order of sums)."""
    path = tiny_checkpoint("llama", sharded=False)
    model = hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=tp_size, device="cpu", dtype=torch.float32)
    ref = load_reference(path)
    assert type(model) is type(ref) is transformers.LlamaForCausalLM
    assert not hasattr(model, "hf_tp") and model.device == torch.device("cpu")
    assert not any(type(m).__module__.startswith("hf_tp") for m in model.modules())
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_positional_model_args_are_refused_at_tp_2(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    with pytest.raises(TypeError, match="model arguments as keywords only"):
        hf_tp.AutoModelForCausalLM.from_pretrained(path, "extra", tp_size=2, device="cpu")


def _corrupt_index(folder):
    (folder / "model.safetensors.index.json").write_text("{not json")


def _no_weights(folder):
    for f in list(folder.glob("*.safetensors")) + [folder / "model.safetensors.index.json"]:
        f.unlink()


def _index_without_weight_map(folder):
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({k: v for k, v in json.loads(index.read_text()).items() if k != "weight_map"}))


@pytest.mark.parametrize("damage, message", [
    (_corrupt_index, r"model\.safetensors\.index\.json is corrupt"),
    (_index_without_weight_map, r"model\.safetensors\.index\.json is corrupt \('weight_map'\)"),
    (_no_weights, r"holds no model\.safetensors or model\.safetensors\.index\.json"),
])
def test_damaged_checkpoint_is_refused_before_any_worker_starts(tiny_checkpoint, damage, message):
    path = tiny_checkpoint("llama")
    damage(path)
    with pytest.raises(hf_tp.CheckpointError, match=message):
        hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu")


def test_unknown_hub_id_is_one_clear_error():
    """Hub errors come in many types; the user gets one CheckpointError that says what to check.
    local_files_only: nothing leaves this machine."""
    with pytest.raises(hf_tp.CheckpointError, match=r"Could not find 'hf-tp-tests/no-such-model'.*HF_HUB_OFFLINE"):
        hf_tp.AutoModelForCausalLM.from_pretrained("hf-tp-tests/no-such-model", tp_size=2, device="cpu",
                                                   local_files_only=True)


def test_unindexed_safetensors_files_are_read_as_one_checkpoint(tiny_checkpoint, tmp_path):
    """A folder of *.safetensors with another name and no index (hand-made checkpoints) is read as one
    checkpoint; the handle pre-flight plans it, and the forward at tp 2 equals Transformers' on the same weights."""
    from safetensors.torch import save_file

    path = tiny_checkpoint("llama", sharded=False)
    state = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
    names = sorted(state)
    half = len(names) // 2
    (path / "model.safetensors").unlink()
    save_file({k: state[k].contiguous() for k in names[:half]}, str(path / "part-a.safetensors"), metadata={"format": "pt"})
    save_file({k: state[k].contiguous() for k in names[half:]}, str(path / "part-b.safetensors"), metadata={"format": "pt"})
    # Transformers itself reads only model.safetensors or an index: the reference is built from the state dict.
    ref = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(path), dtype=torch.float32)
    ref.load_state_dict(state)
    ref.eval()
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype=torch.float32) as model:
        got = model(ids).logits
    with torch.no_grad():
        # fp32; the all-reduce sums partial products in another order (SPEC 4.5).
        assert rel_err(got, ref(ids).logits) <= 1e-5
