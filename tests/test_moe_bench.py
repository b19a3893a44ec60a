"""MoE bench shapes: random checkpoints in the layout Transformers' save_pretrained writes, and the bench's
MoE rows, whose bandwidth floor counts only the experts a step's tokens chose (measured)."""

import json
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors import safe_open

from hf_tp.bench.shapes import MOE_SHAPES, shape_config, write_random_checkpoint


def _keys(folder) -> dict:
    index = folder / "model.safetensors.index.json"
    files = set(json.loads(index.read_text())["weight_map"].values()) if index.exists() else {"model.safetensors"}
    out = {}
    for name in files:
        with safe_open(str(folder / name), "pt") as f:
            out.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    return out


@pytest.mark.parametrize("shape", ["tiny-moe", "tiny-mixtral"])
def test_random_moe_checkpoint_has_save_pretrained_layout(tmp_path, shape):
    ours = write_random_checkpoint(shape, tmp_path / "ours", dtype=torch.float32)
    config = shape_config(shape, torch.float32)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "hf")
    keys = _keys(ours)
    assert keys == _keys(tmp_path / "hf")  # per-expert 2-D tensors, Mixtral's block_sparse_moe / w1 w2 w3 names
    assert any(".experts.3." in k for k in keys)
    # Transformers loads it with nothing missing or unexpected, and the experts are the written tensors.
    model, info = transformers.AutoModelForCausalLM.from_pretrained(ours, output_loading_info=True)
    assert not any(info.values()), info
    prefix = "model.layers.1." + ("block_sparse_moe" if config.model_type == "mixtral" else "mlp")
    up = "w3" if config.model_type == "mixtral" else "up_proj"
    with safe_open(str(ours / json.loads((ours / "model.safetensors.index.json").read_text())["weight_map"][
            f"{prefix}.experts.2.{up}.weight"]), "pt") as f:
        written = f.get_tensor(f"{prefix}.experts.2.{up}.weight")
    fused = model.model.layers[1].mlp.experts.gate_up_proj[2]
    assert torch.equal(fused[written.shape[0]:], written)


def test_moe_shapes_are_the_models_layer_shapes():
    q = shape_config("qwen3-moe-mini", torch.bfloat16)
    assert (q.hidden_size, q.moe_intermediate_size, q.num_experts, q.num_experts_per_tok, q.num_hidden_layers,
            q.num_attention_heads, q.num_key_value_heads, q.head_dim, q.vocab_size) == (2048, 768, 64, 8, 24, 32, 4, 128, 151936)
    assert shape_config("qwen3-30b-a3b", torch.bfloat16).num_experts == 128
    m = shape_config("mixtral-mini", torch.bfloat16)
    assert (m.hidden_size, m.intermediate_size, m.num_local_experts, m.num_experts_per_tok, m.num_hidden_layers) == (4096, 14336, 8, 2, 4)
    assert shape_config("mixtral-8x7b", torch.bfloat16).num_hidden_layers == 32
    assert {"qwen3-moe-mini", "mixtral-mini", "qwen3-30b-a3b", "mixtral-8x7b"} <= set(MOE_SHAPES)


def test_bench_moe_rows_count_active_experts(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "hf_tp.cli", "bench", "--shape", "tiny-moe", "--device", "cpu",
                           "--dtype", "float32", "--systems", "hf_tp", "--tp-size", "2", "--batches", "1,4",
                           "--prompt-len", "8", "--new-tokens", "6", "--checkpoint-dir", str(tmp_path / "ckpt"),
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log
    rows = json.loads(out.read_text())
    assert not [r for r in rows if "error" in r], log
    assert sorted((r["tp_size"], r["batch"]) for r in rows) == [(1, 1), (1, 4), (2, 1), (2, 4)]
    config = shape_config("tiny-moe", torch.float32)
    experts, top_k, layers = config.num_experts, config.num_experts_per_tok, config.num_hidden_layers
    ckpt = next((tmp_path / "ckpt").iterdir())
    weights = json.loads((ckpt / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    all_experts = layers * experts * 3 * config.hidden_size * config.moe_intermediate_size * 4
    for r in rows:
        assert r["moe_experts"] == experts and r["moe_top_k"] == top_k and "active experts" in r["floor_counts"]
        assert r["moe_expert_bytes_per_gpu"] == all_experts // r["tp_size"]
        distinct = r["moe_distinct_experts_per_step"]
        if r["batch"] == 1:
            assert distinct == top_k  # one token: exactly its top-k
        else:
            assert top_k <= distinct <= min(experts, r["batch"] * top_k)
        expected = weights / r["tp_size"] - r["moe_expert_bytes_per_gpu"] * (1 - distinct / experts)
        assert abs(r["bytes_per_step_per_gpu"] - expected) <= 1 + 1e-2 * r["moe_expert_bytes_per_gpu"] / experts
        floor = r["batch"] * r["copy_bandwidth_bytes_s"] / r["bytes_per_step_per_gpu"]
        assert abs(r["bandwidth_floor_tok_s"] - floor) <= 0.05 + 1e-3 * floor
    # The same routing at tp 1 and 2 (router replicated): the same distinct counts.
    by = {(r["tp_size"], r["batch"]): r["moe_distinct_experts_per_step"] for r in rows}
    assert by[(1, 4)] == by[(2, 4)]
    # The printed floor line says what it counts; CPU rows print none (a CPU copy rate tells nothing), so the
    # line is checked on the same rows as a GPU run would print them.
    assert "bandwidth floor" not in proc.stdout
    from hf_tp.bench import floor_lines
    lines = floor_lines([dict(r, device="cuda") for r in rows])
    assert len(lines) == len(rows) and all("counts the active experts" in line for line in lines), lines
