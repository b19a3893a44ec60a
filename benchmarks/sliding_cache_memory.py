"""KV-cache memory of sliding-window models in hf_tp's decode loop against Transformers' static cache.

The loop gives a sliding-window layer a static layer as long as the whole cache (the model's sliding-window
mask hides what lies outside the window; hf_tp.compat.static_cache says why); Transformers' StaticCache keeps
only the window in those layers. This allocates both caches on the meta device (nothing is computed, no
weights are needed) for published model shapes and prints what one rank holds per sequence.

Usage (repo root, any machine):
    python benchmarks/sliding_cache_memory.py [--lengths 8192 32768] [--batch 1] [--tp 1] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse

import torch
import transformers
from transformers.cache_utils import StaticSlidingWindowLayer

from hf_tp.compat import static_cache

# The attention shapes of three checkpoints' config.json files; Transformers derives the layer types
# (Gemma 2: local and global alternating; Gemma 3: five local layers per global one; Mistral: all local).
SHAPES = {
    "Gemma 2 9B": lambda: transformers.Gemma2Config(num_hidden_layers=42, num_attention_heads=16, num_key_value_heads=8,
                                                    head_dim=256, hidden_size=3584, sliding_window=4096),
    "Gemma 3 27B": lambda: transformers.Gemma3TextConfig(num_hidden_layers=62, num_attention_heads=32,
                                                         num_key_value_heads=16, head_dim=128, hidden_size=5376,
                                                         sliding_window=1024),
    "Mistral 7B v0.1": lambda: transformers.MistralConfig(num_hidden_layers=32, num_attention_heads=32,
                                                          num_key_value_heads=8, head_dim=128, hidden_size=4096,
                                                          sliding_window=4096),
}


def cache_bytes(cache, config, batch: int, tp: int, dtype: torch.dtype) -> int:
    """Bytes of keys and values one rank allocates for ``cache`` (its KV heads: num_key_value_heads / tp)."""
    heads = max(1, config.num_key_value_heads // tp)
    total = 0
    for layer in cache.layers:
        states = torch.empty(batch, heads, 1, config.head_dim, dtype=dtype, device="meta")
        layer.lazy_initialization(states, states)
        total += (layer.keys.numel() + layer.values.numel()) * layer.keys.element_size()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768], help="cache length (prompt + new)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    size = torch.empty((), dtype=dtype).element_size()
    print("| model | sliding layers / all | window | bytes per token per layer | length | loop GiB | "
          "Transformers static GiB | extra GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, make in SHAPES.items():
        config = make()
        probe = transformers.StaticCache(config=config, max_cache_len=max(args.lengths))
        sliding = sum(type(layer) is StaticSlidingWindowLayer for layer in probe.layers)
        per_token = 2 * max(1, config.num_key_value_heads // args.tp) * config.head_dim * size
        for length in args.lengths:
            ours = cache_bytes(static_cache(config, length), config, args.batch, args.tp, dtype)
            theirs = cache_bytes(transformers.StaticCache(config=config, max_cache_len=length), config, args.batch,
                                 args.tp, dtype)
            print(f"| {name} | {sliding} / {config.num_hidden_layers} | {config.sliding_window} | {per_token} | "
                  f"{length} | {ours / 2**30:.2f} | {theirs / 2**30:.2f} | {(ours - theirs) / 2**30:.2f} |")


if __name__ == "__main__":
    main()
