"""Decode attention per layer, GPU time: Transformers' sdpa attention function as the compiled decode step runs it
(repeat_kv + SDPA over every slot of the static cache, with sdpa's boolean mask) against hf_tp's split-KV kernel
through its attention hook (TPConfig.decode_attention="triton"), both compiled with Inductor like the step.

bf16, head dim 128. Each call reads its own cache (as each layer does), and enough caches are cycled that their
total exceeds the GPU's L2 several times, so every call reads its KV from memory, as in a real step where the
layer's weights pass through L2 in between. GPU time per call = CUDA-graph replay of one call per cache.
Also printed: the KV bytes the mask keeps, their time at --bandwidth TB/s (the floor), and the max error of
both against an fp32 reference. ``--sweep`` times the kernel's split length and pipeline stages around the
default on two shapes, or on ``--shapes`` (for tuning hf_tp/kernels/decode_attention.py). ``--unfused`` also
times the kernel with its splits combined by a second kernel (``fused_reduce=False``) instead of the last split
program of each (sequence, KV head), in the table and in the sweep (shapes whose splits exceed the fused combine's
limits, hf_tp.kernels.decode_attention.fused_combine_fits, run the two-kernel path in both rows).

Usage: python benchmarks/decode_attention_bench.py [--sweep] [--unfused] [--shapes NAME,NAME] [--bandwidth 4.8]
       [--json OUT]
"""
import argparse
import json
import math

import torch

# name, batch, query heads, kv heads, slots, filled slots (rows alternate left padding of 0 and 37)
SHAPES = [
    ("tp-2 rank b1 256/192", 1, 16, 4, 256, 192),
    ("tp-2 rank b1 8192/4096", 1, 16, 4, 8192, 4096),
    ("tp-1 b1 8192/4096", 1, 32, 8, 8192, 4096),
    ("tp-1 b8 8192/4096", 8, 32, 8, 8192, 4096),
    ("tp-1 b1 16384/16000", 1, 32, 8, 16384, 16000),
    ("tp-1 b32 512/300", 32, 32, 8, 512, 300),
    ("tp-2 rank b8 256/192", 8, 16, 4, 256, 192),
    ("qwen3-moe tp-1 b1 256/192", 1, 32, 4, 256, 192),
    ("qwen3-moe tp-2 rank b1 256/192", 1, 16, 2, 256, 192),
    ("qwen3-moe tp-1 b1 512/400", 1, 32, 4, 512, 400),
    ("qwen3-moe tp-1 b1 1024/900", 1, 32, 4, 1024, 900),
    ("qwen3-moe tp-1 b1 2048/1800", 1, 32, 4, 2048, 1800),
]
SWEEP_SHAPES = ("tp-2 rank b1 8192/4096", "tp-1 b8 8192/4096")
HEAD_DIM = 128
COLD_BYTES = 512 * 2**20  # caches cycled per graph: several times the H200's 50 MB L2


class _Attention(torch.nn.Module):  # what Transformers' attention functions read from the layer
    def __init__(self, group):
        super().__init__()
        self.num_key_value_groups, self.is_causal = group, True


def _graph_us(calls, reps=5) -> float:
    """GPU time per call: one CUDA graph holding every call, replayed ``reps`` times."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls[:2]:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (reps * len(calls))


def _inputs(batch, q_heads, kv_heads, slots, fill):
    gen = torch.Generator(device="cuda").manual_seed(0)
    per_cache = 2 * batch * kv_heads * slots * HEAD_DIM * 2
    copies = max(4, min(256, math.ceil(COLD_BYTES / per_cache)))
    q = torch.randn(batch, q_heads, 1, HEAD_DIM, device="cuda", generator=gen).bfloat16()
    caches = [tuple(torch.randn(batch, kv_heads, slots, HEAD_DIM, device="cuda", generator=gen).bfloat16()
                    for _ in range(2)) for _ in range(copies)]
    mask = torch.zeros(batch, 1, 1, slots, dtype=torch.bool, device="cuda")
    for row in range(batch):
        mask[row, ..., (37 if row % 2 else 0):fill] = True
    return q, caches, mask


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--unfused", action="store_true", help="also time the two-kernel reduce")
    parser.add_argument("--bandwidth", type=float, default=4.8, help="TB/s for the floor (H200: 4.8)")
    parser.add_argument("--json")
    parser.add_argument("--shapes", help="comma-separated shape names (default: all rows; --sweep: SWEEP_SHAPES)")
    args = parser.parse_args()

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from hf_tp.kernels import decode_attention as kernel
    from hf_tp.parallel.decode_attention import sdpa_decode_attention

    kernel.reserve_counters(torch.device("cuda", torch.cuda.current_device()))  # as a model's load does

    import torch._dynamo.config as dynamo_config

    # One lambda compiled per (shape, variant): Dynamo keys its cache on the code object, so the default limit
    # (8) would silently leave later shapes uncompiled.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, 256)
    scale = HEAD_DIM ** -0.5
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; GPU us per layer (CUDA-graph replay)")
    print(f"{'shape':26s} {'sdpa':>9s} {'triton':>9s} {'speedup':>8s} {'floor':>7s} {'x floor':>8s} "
          f"{'err sdpa':>9s} {'err triton':>10s} {'splits':>6s}" + (f" {'unfused':>9s}" if args.unfused else ""))
    rows = []
    chosen = args.shapes.split(",") if args.shapes else None
    for name, batch, q_heads, kv_heads, slots, fill in SHAPES:
        if chosen and name not in chosen:
            continue
        q, caches, mask = _inputs(batch, q_heads, kv_heads, slots, fill)
        module = _Attention(q_heads // kv_heads)
        results = {}
        variants = [("sdpa", sdpa_attention_forward), ("triton", sdpa_decode_attention)]
        if args.unfused:
            variants.append(("unfused", sdpa_decode_attention))
        for label, fn in variants:
            kernel.FUSED_REDUCE = label != "unfused"  # read by the op at every call (compiled or captured)
            torch._dynamo.reset()
            compiled = torch.compile(lambda q, k, v, m, fn=fn: fn(module, q, k, v, m, dropout=0.0, scaling=scale)[0],
                                     fullgraph=True, dynamic=False)
            out = compiled(q, *caches[0], mask)
            ref = kernel.decode_attention_reference(q, *caches[0], mask, scale)
            err = float((out.float() - ref.float()).abs().max())
            us = _graph_us([lambda k=k, v=v, c=compiled: c(q, k, v, mask) for k, v in caches])
            results[label] = (us, err)
        kernel.FUSED_REDUCE = True
        kept = int(mask.sum())
        floor = 2 * kept * kv_heads * HEAD_DIM * 2 / (args.bandwidth * 1e12) * 1e6
        split = kernel.split_length(batch, kv_heads, slots, kernel._sm_count(q.device))
        row = dict(shape=name, sdpa_us=round(results["sdpa"][0], 2), triton_us=round(results["triton"][0], 2),
                   floor_us=round(floor, 2), sdpa_err=results["sdpa"][1], triton_err=results["triton"][1],
                   split_len=split, splits=-(-slots // split))
        if args.unfused:
            row.update(unfused_us=round(results["unfused"][0], 2), unfused_err=results["unfused"][1])
        rows.append(row)
        print(f"{name:26s} {row['sdpa_us']:9.2f} {row['triton_us']:9.2f} {row['sdpa_us'] / row['triton_us']:7.1f}x "
              f"{floor:7.2f} {row['triton_us'] / floor:7.1f}x {row['sdpa_err']:9.2e} {row['triton_err']:10.2e} "
              f"{row['splits']:6d}" + (f" {row['unfused_us']:9.2f}" if args.unfused else ""), flush=True)
        del caches
    sweep = []
    if args.sweep:
        print("\nsweep: kernel alone (decode_attention_forward), us per call")
        for name, batch, q_heads, kv_heads, slots, fill in SHAPES:
            if name not in (chosen or SWEEP_SHAPES):
                continue
            q, caches, mask = _inputs(batch, q_heads, kv_heads, slots, fill)
            default = kernel.split_length(batch, kv_heads, slots, kernel._sm_count(q.device))
            for split in sorted({max(64, default // 2), default, min(2048, default * 2), max(64, default // 4)}):
                for warps, stages in ((4, 2), (4, 3), (8, 2)):
                    timed = {}
                    for fused in (True, False) if args.unfused else (True,):
                        timed[fused] = _graph_us([
                            lambda k=k, v=v, s=split, w=warps, st=stages, f=fused: kernel.decode_attention_forward(
                                q, k, v, mask, scale, split_len=s, num_warps=w, num_stages=st, fused_reduce=f)
                            for k, v in caches])
                    us = timed[True]
                    entry = dict(shape=name, split_len=split, warps=warps, stages=stages, us=round(us, 2))
                    if args.unfused:
                        entry["unfused_us"] = round(timed[False], 2)
                    sweep.append(entry)
                    is_default = (split, warps, stages) == (default, kernel.NUM_WARPS, kernel.NUM_STAGES)
                    print(f"{name:26s} split {split:5d} warps {warps} stages {stages}: {us:8.2f}"
                          + (f"  unfused {timed[False]:8.2f}" if args.unfused else "")
                          + f"{'  (default)' if is_default else ''}", flush=True)
            del caches
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows, sweep=sweep), f,
                      indent=1)


if __name__ == "__main__":
    main()
