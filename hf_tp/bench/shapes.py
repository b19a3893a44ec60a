"""Named model shapes for benchmarks, and random-weight checkpoints of them written to local disk.

Llama shapes (``SHAPES``) and mixture-of-experts shapes (``MOE_SHAPES``: Qwen3-MoE and Mixtral). MoE
checkpoints are written in the layout Transformers' ``save_pretrained`` writes (5.x): one 2-D tensor per
expert and projection (``mlp.experts.3.gate_proj.weight``; Mixtral ``block_sparse_moe.experts.3.w1.weight``),
not the fused 3-D parameters the model holds, so a bench reads what a Hub checkpoint makes it read.
"""

from __future__ import annotations

import json
import math
import re
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


# How the decoder layers' linear weights are stored (``hf-tp bench --weights``). Embeddings, norms and the LM
# head stay in the model dtype in every format, as in the published FP8 checkpoints.
WEIGHT_FORMATS = ("bf16", "fp8-block", "fp8-channel")
FP8_BLOCK = 128
_QUANTIZED = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$")
# config.json's quantization_config of each FP8 format, as Transformers / compressed-tensors write it.
QUANTIZATION_CONFIGS = {
    "fp8-block": {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                  "weight_block_size": [FP8_BLOCK, FP8_BLOCK]},
    "fp8-channel": {
        "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {
            "targets": ["Linear"], "format": "float-quantized",
            "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "dynamic": False, "symmetric": True},
            "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True,
                                  "symmetric": True}}},
        "ignore": ["lm_head"]},
}


def quantize_fp8(name: str, w: torch.Tensor, weights: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The checkpoint tensors for one weight ``w`` (float32) in format ``weights``:
    fp8-block   ``weight`` float8_e4m3fn (N, K) and ``weight_scale_inv`` float32 (ceil(N/128), ceil(K/128)), one
                scale per 128 x 128 block (amax / 448), W = weight * scale block by block;
    fp8-channel ``weight`` float8_e4m3fn and ``weight_scale`` (N, 1) in the model dtype (compressed-tensors)."""
    fp8 = torch.float8_e4m3fn
    fp8_max = torch.finfo(fp8).max
    if weights == "fp8-channel":
        scale = (w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / fp8_max).to(dtype)
        q = (w / scale.float()).clamp(-fp8_max, fp8_max).to(fp8)
        return {name: q, name[:-len("weight")] + "weight_scale": scale}
    n, k = w.shape
    rows, cols = math.ceil(n / FP8_BLOCK), math.ceil(k / FP8_BLOCK)
    padded = torch.nn.functional.pad(w, (0, cols * FP8_BLOCK - k, 0, rows * FP8_BLOCK - n))
    blocks = padded.reshape(rows, FP8_BLOCK, cols, FP8_BLOCK)
    scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / fp8_max  # (rows, cols)
    q = (blocks / scale[:, None, :, None]).reshape(rows * FP8_BLOCK, cols * FP8_BLOCK)[:n, :k]
    return {name: q.clamp(-fp8_max, fp8_max).to(fp8), name + "_scale_inv": scale.float()}



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
                            shard_bytes: int = 4 * 2**30, weights: str = "bf16") -> Path:
    """Write a sharded safetensors checkpoint of ``shape`` with N(0, 0.02) weights, once.

    Tensors are drawn one at a time (on the GPU when there is one) and written shard by shard,
    so host memory stays near one shard, whatever the model size. ``weights`` (WEIGHT_FORMATS) stores the
    decoder layers' linear weights as drawn ("bf16": in ``dtype``) or quantized to FP8 (``quantize_fp8``),
    with the config's quantization_config; the same seed draws the same weights in every format.
    """
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {weights!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
    folder = Path(folder)
    if (folder / "model.safetensors.index.json").is_file():
        return folder
    config = shape_config(shape, dtype)
    print(f"hf_tp bench: writing a random {shape} checkpoint ({weights}) into {folder}, once (later runs reuse "
          f"it)", flush=True)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _write_shards(config, folder, dtype, shard_bytes, weights)
    except BaseException:  # interrupted or failed: leave no partial checkpoint of many GB behind
        if created:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        raise


def _write_shards(config, folder: Path, dtype: torch.dtype, shard_bytes: int, weights: str) -> Path:
    from safetensors.torch import save_file

    from ..parallelize import build_skeleton

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
                parts = {key: torch.ones(shape, dtype=dtype)}
            else:
                tensor = torch.randn(shape, generator=generator, device=device, dtype=torch.float32) * 0.02
                if weights != "bf16" and _QUANTIZED.match(key):
                    parts = quantize_fp8(key, tensor, weights, dtype)
                else:
                    parts = {key: tensor.to(dtype)}
            for part_key, part in parts.items():
                shard[part_key] = part.cpu()
                shard_size += part.numel() * part.element_size()
            if shard_size >= shard_bytes:
                flush()
    flush()
    config.save_pretrained(folder)
    if weights != "bf16":
        saved = json.loads((folder / "config.json").read_text())
        saved["quantization_config"] = QUANTIZATION_CONFIGS[weights]
        (folder / "config.json").write_text(json.dumps(saved, indent=2))
    total = sum((folder / f).stat().st_size for f in set(weight_map.values()))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return folder
