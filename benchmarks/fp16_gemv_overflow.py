"""How often the FP8 GEMV's fp16 form would fall back to fp32 sums on a real model's activations.

The fp16 form (gemv_triton._gemv_f16_sums, a GEMV entry with "X16") multiplies FP8 per-channel weights (|w| <= 448
before the row's scale) by x's fp16 copy and sums K / BLOCK_K products per fp16 accumulator; a tile with an inf or
NaN sum is computed again in fp32, which re-reads its weights. This script runs greedy decoding of a Transformers
model on the CPU (bf16, as on the GPU), quantizes every decoder Linear per channel to e4m3 in memory, and for every
decode step's Linear call (one token) emulates those fp16 sums: it reports, per kind of Linear, how many calls
would have had at least one tile fall back, and the largest |x| seen.

    python benchmarks/fp16_gemv_overflow.py --model ~/.cache/hf_tp/SmolLM2-135M-Instruct --new-tokens 64
"""

from __future__ import annotations

import argparse
import collections
import json
import os

import torch
import transformers

FP8_MAX = 448.0  # e4m3's largest value: per-channel quantization puts each row's largest |w| there

PROMPTS = [
    "The capital of France is",
    "Write a short poem about the sea.\n\n",
    "List three prime numbers, one per line:\n1.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Question: What is 17 times 23? Answer step by step.",
]


def per_channel_fp8(weight: torch.Tensor) -> torch.Tensor:
    """The weight as its e4m3 values (before the row's scale), as a per-channel checkpoint stores it."""
    w = weight.float()
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (w / scale).to(torch.float8_e4m3fn).float()


def falls_back(x: torch.Tensor, w8: torch.Tensor, block_k: int, block_n: int) -> tuple[int, int]:
    """(tiles that would fall back, tiles) for one token's x (K,) against the e4m3 values w8 (N, K): each fp16
    accumulator column j sums x16[k] * w8[n, k] over k = j, j + block_k, ..., rounded once per fused multiply-add."""
    n, k = w8.shape
    x16 = x.to(torch.float16).float()
    steps = (k + block_k - 1) // block_k
    pad = steps * block_k - k
    xs = torch.nn.functional.pad(x16, (0, pad)).view(steps, block_k)
    ws = torch.nn.functional.pad(w8, (0, pad)).view(n, steps, block_k)
    acc = torch.zeros(n, block_k, dtype=torch.float16)
    for s in range(steps):
        acc = (acc.float() + ws[:, s] * xs[s]).to(torch.float16)
    bad_rows = ~torch.isfinite(acc.float().sum(dim=1))
    tiles = (n + block_n - 1) // block_n
    bad_tiles = torch.nn.functional.pad(bad_rows, (0, tiles * block_n - n)).view(tiles, block_n).any(dim=1)
    return int(bad_tiles.sum()), tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a Transformers checkpoint folder")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--block-k", type=int, default=1024, help="the GEMV config's BLOCK_K (TABLE's: 1024)")
    parser.add_argument("--block-n", type=int, default=4, help="the GEMV config's BLOCK_N (TABLE's: 4)")
    parser.add_argument("--out", help="write the counts as JSON here")
    args = parser.parse_args()

    tok = transformers.AutoTokenizer.from_pretrained(os.path.expanduser(args.model))
    model = transformers.AutoModelForCausalLM.from_pretrained(os.path.expanduser(args.model), dtype=torch.bfloat16)
    model.eval()
    linears = {name: mod for name, mod in model.named_modules()
               if isinstance(mod, torch.nn.Linear) and name != "lm_head"}
    w8 = {name: per_channel_fp8(mod.weight) for name, mod in linears.items()}

    stats = collections.defaultdict(lambda: {"calls": 0, "calls_with_fallback": 0, "tiles": 0,
                                             "tiles_fallback": 0, "max_abs_x": 0.0})

    def hook(name):
        kind = name.rsplit(".", 1)[-1]

        def record(_module, inputs):
            x = inputs[0]
            if x.shape[-2] != 1:  # prefill: not the GEMV's M = 1 path
                return
            row = x.reshape(-1, x.shape[-1])[0].float()
            bad, tiles = falls_back(row, w8[name], args.block_k, args.block_n)
            s = stats[kind]
            s["calls"] += 1
            s["calls_with_fallback"] += int(bad > 0)
            s["tiles"] += tiles
            s["tiles_fallback"] += bad
            s["max_abs_x"] = max(s["max_abs_x"], float(row.abs().max()))
        return record

    for name, mod in linears.items():
        mod.register_forward_pre_hook(hook(name))
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            model.generate(**ids, max_new_tokens=args.new_tokens, do_sample=False)
    result = {"model": args.model, "block_k": args.block_k, "block_n": args.block_n,
              "new_tokens": args.new_tokens, "prompts": len(PROMPTS), "per_kind": dict(stats)}
    for kind, s in stats.items():
        print(f"{kind:10s} calls {s['calls']:6d}  with a fallback {s['calls_with_fallback']:5d}  "
              f"tiles falling back {s['tiles_fallback'] / max(s['tiles'], 1):.2%}  max |x| {s['max_abs_x']:.1f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
