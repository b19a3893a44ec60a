"""Decode GEMMs at tp 1 and tp 2 widths on one GPU: the weight bandwidth each projection reaches (issue 13, item 3).

Usage: python benchmarks/gemm_widths.py [--shape llama3-8b] [--batches 1,8,32] [--json OUT]
Each projection of one layer (fused q/k/v, o, fused gate/up, down) and the LM head, at the local shape rank 0
holds at tp 1 and at tp 2, bf16, timed as 200 back-to-back calls captured in one CUDA graph (no launch gaps).
Row-parallel layers (o, down) are timed as hf_tp runs them at tp > 1 (``torch.mm(..., out_dtype=float32)``,
the fp32 partial sums), the LM head with and without its fp32 logits. GB/s counts the weight bytes read once
per call; the H200's device-to-device copy reaches about 4.3 TB/s (device notes), the ceiling to compare with.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

SHAPES = {  # hidden, intermediate, query heads, KV heads, head_dim, vocab
    "llama3-8b": (4096, 14336, 32, 8, 128, 128256),
    "qwen2.5-32b": (5120, 27648, 40, 8, 128, 152064),
}
CALLS = 200


def projections(shape: str, tp: int) -> list[tuple[str, int, int, str]]:
    """(name, out, in, kind) of rank 0's local weights at ``tp``."""
    hidden, inter, heads, kv, head_dim, vocab = SHAPES[shape]
    return [("qkv", (heads + 2 * kv) * head_dim // tp, hidden, "column"),
            ("o", hidden, heads * head_dim // tp, "row"),
            ("gate_up", 2 * inter // tp, hidden, "column"),
            ("down", hidden, inter // tp, "row"),
            ("lm_head", -(-vocab // tp), hidden, "vocab")]


def timed(fn) -> float:
    """Seconds per call of ``fn`` (CUDA-graph replay of CALLS calls, median of 5 replays)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / CALLS)
    return sorted(times)[2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    for tp in (1, 2):
        for name, out, inp, kind in projections(args.shape, tp):
            weight = torch.randn(out, inp, device="cuda", dtype=torch.bfloat16) * 0.02
            for batch in (int(b) for b in args.batches.split(",")):
                x = torch.randn(batch, inp, device="cuda", dtype=torch.bfloat16)
                variants = {"bf16_out": lambda: F.linear(x, weight)}
                if kind in ("row", "vocab"):  # what hf_tp runs: the fp32 accumulator kept
                    variants["fp32_out"] = lambda: torch.mm(x, weight.t(), out_dtype=torch.float32)
                for variant, fn in variants.items():
                    seconds = timed(fn)
                    row = {"shape": args.shape, "tp": tp, "projection": name, "out": out, "in": inp, "batch": batch,
                           "variant": variant, "us": round(seconds * 1e6, 2),
                           "weight_gb_per_s": round(out * inp * 2 / seconds / 1e9, 1)}
                    rows.append(row)
                    print("GEMM", json.dumps(row), flush=True)
            del weight
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    # Per batch: one layer's projections at tp 2 against tp 1 (the time a tp-2 rank spends in GEMMs).
    for batch in (int(b) for b in args.batches.split(",")):
        layer = {tp: sum(r["us"] for r in rows if r["tp"] == tp and r["batch"] == batch and r["projection"] != "lm_head"
                         and r["variant"] == ("fp32_out" if tp > 1 and r["projection"] in ("o", "down") else "bf16_out"))
                 for tp in (1, 2)}
        print(f"SUMMARY batch {batch}: one layer's GEMMs {layer[1]:.1f} us at tp 1, {layer[2]:.1f} us at tp 2 "
              f"({layer[2] / layer[1]:.2f} of tp 1; 0.50 would be perfect halving)", flush=True)


if __name__ == "__main__":
    main()
