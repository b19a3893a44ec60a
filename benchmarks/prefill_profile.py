"""Where an eager prefill forward's time goes: GPU kernels, or host work the GPU waits for (issue 19's "prefill not
slower than bf16").

Bench rows time a prefill (``prefill_ms``: one forward of the prompt between CUDA events) of FP8 per channel well
above bf16 at the 8B shape (36.4 against 21.6 ms on an H100), while one layer's prefill GEMMs differ by 79 µs
(2.5 ms over 32 layers). This loads a checkpoint as the bench does at tp 1 (hf_tp's parallel layers, the
defaults), runs one forward of a 128-token prompt under torch.profiler and prints: the forward's time between
CUDA events, the GPU's busy time (kernels summed), the host time of the forward, the kernels by GPU time and the
host ops by their own host time (where hf_tp's FP8 op and Triton's launches show).

  python benchmarks/prefill_profile.py --model CKPT [--prompt-len 128] [--two-term N [--scaled-mm]] [--json F]
      [--cprofile N] [--no-launch-cache] [--no-lanes] [--compile]

``--compile``: the forward compiled as TPConfig.compile_prefill does (the prompt's dimensions dynamic; no cache,
no CUDA graphs), to see what an
eager prefill's host time hides: the forward's GPU time once the host no longer paces it.

``--cprofile N`` also prints the Python functions of N forwards by their own time (cProfile): the host time that
torch.profiler does not see (a Triton launcher's Python, hf_tp's wrappers).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--two-term", type=int, default=0, help="fp8_triton.PREFILL_TWO_TERM_MAX_M")
    ap.add_argument("--scaled-mm", action="store_true", help="fp8_triton.TWO_TERM_SCALED_MM")
    ap.add_argument("--json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-launch-cache", action="store_true", help="hf_tp.kernels.launch_cache off")
    ap.add_argument("--no-lanes", action="store_true", help="hf_tp.kernels.fp8.PREFILL_LANES off")
    ap.add_argument("--cprofile", type=int, default=0, help="forwards to run under cProfile (0: none)")
    ap.add_argument("--compile", action="store_true", help="the forward compiled (dynamic shapes, no cache)")
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from hf_tp.assembly import load_parallel_model
    from hf_tp.bench.run_system import tp_config
    from hf_tp.kernels import fp8_triton
    from hf_tp.parallel.comm import TPGroup

    from hf_tp.kernels import fp8 as fp8_kernels
    from hf_tp.kernels import launch_cache

    launch_cache.ENABLED = not args.no_launch_cache
    fp8_kernels.PREFILL_LANES = not args.no_lanes
    fp8_triton.PREFILL_TWO_TERM_MAX_M = args.two_term
    fp8_triton.TWO_TERM_SCALED_MM = args.scaled_mm
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = load_parallel_model(args.model, TPGroup(tp_rank=0, tp_size=1, device=device), dtype=torch.bfloat16,
                                progress=False, tp_config=tp_config(argparse.Namespace(mode="compile", tp_size=1),
                                                                    device)).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, args.prompt_len), device=device)

    if args.compile:  # the Transformers forward under the mixin's per-call input checks (they sync: .item())
        from hf_tp.generation.spmd import TensorParallelMixin

        # as TPConfig.compile_prefill compiles it: the prompt's length and batch dynamic, the weights' shapes not
        # (every shape dynamic failed to trace the FP8 layers: one H100, 2026-12-06, twenty-seventh session)
        run = torch.compile(super(TensorParallelMixin, model).forward, dynamic=None)
        torch._dynamo.maybe_mark_dynamic(ids, 0)
        torch._dynamo.maybe_mark_dynamic(ids, 1)
    else:
        run = model
    extra = dict(use_cache=False) if args.compile else {}

    def forward():
        with torch.no_grad():
            run(input_ids=ids, attention_mask=torch.ones_like(ids), **extra)

    t0 = time.perf_counter()
    for _ in range(3):
        forward()
    sync()
    warmup_s = time.perf_counter() - t0
    sync()
    events, host = [], []
    for _ in range(5):
        pair = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if device.type == "cuda" else None
        t0 = time.perf_counter()
        if pair:
            pair[0].record()
        forward()
        host.append((time.perf_counter() - t0) * 1e3)
        if pair:
            pair[1].record()
            pair[1].synchronize()
            events.append(pair[0].elapsed_time(pair[1]))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        forward()
        sync()
    averages = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in averages if e.device_type == torch.autograd.DeviceType.CUDA)
    kernels = sum(e.count for e in averages if e.device_type == torch.autograd.DeviceType.CUDA)
    result = dict(model=args.model, two_term=args.two_term, scaled_mm=args.scaled_mm,
                  launch_cache=launch_cache.ENABLED, lanes=fp8_kernels.PREFILL_LANES, compiled=args.compile, warmup_s=round(warmup_s, 1),
                  forward_ms_events=sorted(events)[2] if events else None, forward_ms_host=sorted(host)[2],
                  gpu_busy_ms=gpu_us / 1e3, kernels=kernels)
    print(json.dumps(result), flush=True)
    print(averages.table(sort_by="self_device_time_total", row_limit=18, max_name_column_width=70))
    print(averages.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70))
    if args.cprofile:
        import cProfile
        import pstats

        sync()
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.enable()
        for _ in range(args.cprofile):
            forward()
        profiler.disable()
        sync()
        print(f"cProfile: {args.cprofile} forwards in {(time.perf_counter() - t0) * 1e3:.1f} ms", flush=True)
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
    if args.json:
        result["top_host_ops"] = [dict(name=e.key, count=e.count, self_cpu_us=e.self_cpu_time_total)
                                  for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:40]]
        json.dump(result, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
