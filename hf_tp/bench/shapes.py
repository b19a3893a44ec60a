"""Named model shapes for benchmarks, and random-weight checkpoints of them written to local disk."""

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


def shape_config(shape: str, dtype: torch.dtype):
    from transformers import LlamaConfig

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)} or pass a checkpoint folder")
    return LlamaConfig(**SHAPES[shape], tie_word_embeddings=False, dtype=dtype, bos_token_id=1, eos_token_id=2)


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
        if name.endswith("norm.weight") or param.dim() == 1:
            tensor = torch.ones(param.shape, dtype=dtype)
        else:
            tensor = (torch.randn(param.shape, generator=generator, device=device, dtype=torch.float32) * 0.02).to(dtype).cpu()
        shard[name] = tensor
        shard_size += tensor.numel() * tensor.element_size()
        if shard_size >= shard_bytes:
            flush()
    flush()
    config.save_pretrained(folder)
    total = sum((folder / f).stat().st_size for f in set(weight_map.values()))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return folder
