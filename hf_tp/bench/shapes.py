"""Named model shapes for benchmarks, and random-weight checkpoints of them written to local disk.

Llama shapes (``SHAPES``) and mixture-of-experts shapes (``MOE_SHAPES``: Qwen3-MoE and Mixtral). MoE
checkpoints are written in the layout Transformers' ``save_pretrained`` writes (5.x): one 2-D tensor per
expert and projection (``mlp.experts.3.gate_proj.weight``; Mixtral ``block_sparse_moe.experts.3.w1.weight``),
not the fused 3-D parameters the model holds, so a bench reads what a Hub checkpoint makes it read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Llama-architecture shapes (random weights: speed and memory depend on shape, not values).
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=512),
    "llama3-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096),
    "llama2-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096),
}


_QWEN3_MOE_30B = dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_attention_heads=32,
                      num_key_value_heads=4, head_dim=128, num_experts_per_tok=8, norm_topk_prob=True, vocab_size=151936,
                      max_position_embeddings=8192, rope_theta=1000000.0)
_MIXTRAL_8X7B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                     num_local_experts=8, num_experts_per_tok=2, vocab_size=32000, max_position_embeddings=8192,
                     rope_theta=1000000.0)
# model_type -> config kwargs. "-mini" shapes keep the full model's layer shapes with fewer layers (and, for
# qwen3-moe-mini, 64 experts instead of 128), so that one layer costs what it costs in the full model.
MOE_SHAPES = {
    "tiny-moe": ("qwen3_moe", dict(hidden_size=64, intermediate_size=176, moe_intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8,
                                   num_experts_per_tok=2, norm_topk_prob=True, vocab_size=512, max_position_embeddings=512)),
    "tiny-mixtral": ("mixtral", dict(hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=512,
                                     max_position_embeddings=512)),
    "qwen3-moe-mini": ("qwen3_moe", dict(_QWEN3_MOE_30B, num_experts=64, num_hidden_layers=24)),  # 8.33 B, 16.7 GB bf16
    "qwen3-30b-a3b": ("qwen3_moe", dict(_QWEN3_MOE_30B, num_experts=128, num_hidden_layers=48)),  # 30.5 B, 61.1 GB bf16
    "mixtral-mini": ("mixtral", dict(_MIXTRAL_8X7B, num_hidden_layers=4)),  # 6.07 B parameters, 12.1 GB bf16
    "mixtral-8x7b": ("mixtral", dict(_MIXTRAL_8X7B, num_hidden_layers=32)),  # 46.7 B, 93.4 GB bf16
}


def shape_names() -> list[str]:
    return [*SHAPES, *MOE_SHAPES]


def shape_config(shape: str, dtype: torch.dtype):
    import transformers

    common = dict(tie_word_embeddings=False, dtype=dtype, bos_token_id=1, eos_token_id=2)
    if shape in SHAPES:
        return transformers.LlamaConfig(**SHAPES[shape], **common)
    if shape in MOE_SHAPES:
        model_type, kwargs = MOE_SHAPES[shape]
        return transformers.AutoConfig.for_model(model_type, **kwargs, **common)
    raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(shape_names())} or pass a checkpoint folder")


def checkpoint_tensors(name: str, shape: tuple, model_type: str):
    """The checkpoint keys Transformers' save_pretrained writes for the model parameter ``name``, with the
    slice of the parameter each holds: [(key, expert or None, (start, stop) along dim 1 or None)].

    Fused 3-D experts ``...mlp.experts.gate_up_proj`` (experts, 2 x inter, hidden) become per-expert gate and
    up halves, ``down_proj`` (experts, hidden, inter) per-expert down; Mixtral names them w1/w3/w2 under
    ``block_sparse_moe`` (its router too). Checked against save_pretrained in tests/test_moe_bench.py."""
    if model_type == "mixtral":
        name = name.replace(".mlp.gate.", ".block_sparse_moe.gate.").replace(".mlp.experts.", ".block_sparse_moe.experts.")
    prefix, _, local = name.rpartition(".")
    if not prefix.endswith(".experts") or local not in ("gate_up_proj", "down_proj"):
        return [(name, None, None)]
    gate, up, down = ("w1", "w3", "w2") if model_type == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    if local == "down_proj":
        return [(f"{prefix}.{e}.{down}.weight", e, None) for e in range(shape[0])]
    half = shape[1] // 2
    return [(f"{prefix}.{e}.{part}.weight", e, span) for e in range(shape[0])
            for part, span in ((gate, (0, half)), (up, (half, 2 * half)))]


def write_random_checkpoint(shape: str, folder: Path, dtype: torch.dtype = torch.bfloat16,
                            shard_bytes: int = 4 * 2**30) -> Path:
    """Write a sharded safetensors checkpoint of ``shape`` with N(0, 0.02) weights, once.

    Tensors are drawn one at a time (on the GPU when there is one) and written shard by shard,
    so host memory stays near one shard, whatever the model size.
    """
    from safetensors.torch import save_file

    from ..parallelize import build_skeleton

    folder = Path(folder)
    if (folder / "model.safetensors.index.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = shape_config(shape, dtype)
    skeleton = build_skeleton(config, dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)
    shard, shard_size, weight_map, index = {}, 0, {}, 0

    def flush():
        nonlocal shard, shard_size, index
        if shard:
            index += 1
            name = f"model-{index:05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
            shard, shard_size = {}, 0

    for name, param in skeleton.named_parameters():
        for key, expert, span in checkpoint_tensors(name, tuple(param.shape), config.model_type):
            shape = param.shape if expert is None else param.shape[1:]
            if span is not None:
                shape = (span[1] - span[0], *shape[1:])
            if name.endswith("norm.weight") or param.dim() == 1:
                tensor = torch.ones(shape, dtype=dtype)
            else:
                tensor = (torch.randn(shape, generator=generator, device=device, dtype=torch.float32) * 0.02).to(dtype).cpu()
            shard[key] = tensor
            shard_size += tensor.numel() * tensor.element_size()
            if shard_size >= shard_bytes:
                flush()
    flush()
    config.save_pretrained(folder)
    total = sum((folder / f).stat().st_size for f in set(weight_map.values()))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return folder
