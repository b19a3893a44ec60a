"""Host time per call of each FP8 prefill path against bf16 ``F.linear`` (issue 19's "prefill not slower than
bf16": an eager prefill forward is host-bound, so what a call costs the CPU decides it).

For each (M, N, K) and path, 200 calls are issued back to back without a sync: the host time per call is the
loop's wall time over 200 (the GPU time per call, from CUDA events around the same loop, says whether the loop was
host-bound). Paths: bf16 (``F.linear`` on a bf16 copy), and ``fp8_triton.launch``'s prefill, two_term,
two_term_mm, dequant; "fp8_linear" is hf_tp's public entry (its checks and dispatch on top of the default path).
"_uncached" rows: the same with hf_tp/kernels/launch_cache.py off (Triton's own dispatch on every call).

  python benchmarks/fp8_launch_cost.py [--shapes 128x2048x2048,128x8192x2048,1024x2048x2048] [--calls 200]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def _nothing(a, b, c, d, e, M, N, K, G, gk, ko, s1, s2, s3, s4, X: tl.constexpr, Y: tl.constexpr):
    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="128x3072x2048,128x16384x2048,128x2048x8192,1024x3072x2048")
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    from hf_tp.kernels import fp8_triton, launch_cache
    from hf_tp.kernels.fp8 import fp8_linear

    dev = torch.device("cuda", 0)
    for shape in args.shapes.split(","):
        M, N, K = (int(v) for v in shape.split("x"))
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        w = (torch.randn(N, K, device=dev) * 0.05).to(torch.float8_e4m3fn)
        s = torch.rand(N, 1, device=dev) * 0.01 + 0.001
        wb = (w.float() * s).to(torch.bfloat16)
        calls = {
            "bf16": lambda: F.linear(x, wb),
            "fp8_linear": lambda: fp8_linear(x, w, s, K, 0),
            "prefill": lambda: fp8_triton.launch(x, w, s, K, 0, None, path="prefill"),
            "two_term": lambda: fp8_triton.launch(x, w, s, K, 0, None, path="two_term"),
            "two_term_mm": lambda: fp8_triton.launch(x, w, s, K, 0, None, path="two_term_mm"),
            "dequant": lambda: fp8_triton.launch(x, w, s, K, 0, None, path="dequant"),
        }
        calls["fp8_linear_uncached"] = calls["fp8_linear"]
        calls["prefill_uncached"] = calls["prefill"]
        row = dict(M=M, N=N, K=K)
        for name, call in calls.items():
            if name.startswith("prefill") and M > fp8_triton.PREFILL_MAX_M:
                continue
            launch_cache.ENABLED = not name.endswith("_uncached")
            for _ in range(5):
                call()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            start.record()
            for _ in range(args.calls):
                call()
            host = (time.perf_counter() - t0) / args.calls * 1e6
            end.record()
            end.synchronize()
            row[name] = dict(host_us=round(host, 2), wall_us=round(start.elapsed_time(end) / args.calls * 1e3, 2))
        print(json.dumps(row), flush=True)
    # Triton's launcher alone: an empty kernel with as many arguments as _prefill
    t = torch.empty(16, device=dev)
    for _ in range(5):
        _nothing[(1,)](t, t, t, t, t, 128, 2048, 2048, 1, 2048, 0, 2048, 2048, 1, 2048, X=True, Y=128)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.calls):
        _nothing[(1,)](t, t, t, t, t, 128, 2048, 2048, 1, 2048, 0, 2048, 2048, 1, 2048, X=True, Y=128)
    print(json.dumps(dict(empty_triton_launch_host_us=round((time.perf_counter() - t0) / args.calls * 1e6, 2))))
    from hf_tp.kernels import launch_cache

    launch_cache.ENABLED = True
    for _ in range(5):
        launch_cache.launch(_nothing, (1,), t, t, t, t, t, 128, 2048, 2048, 1, 2048, 0, 2048, 2048, 1, 2048, X=True,
                            Y=128)
    t0 = time.perf_counter()
    for _ in range(args.calls):
        launch_cache.launch(_nothing, (1,), t, t, t, t, t, 128, 2048, 2048, 1, 2048, 0, 2048, 2048, 1, 2048, X=True,
                            Y=128)
    print(json.dumps(dict(empty_cached_launch_host_us=round((time.perf_counter() - t0) / args.calls * 1e6, 2))))
    t0 = time.perf_counter()
    for _ in range(args.calls):
        torch.empty((128, 2048), device=dev, dtype=torch.bfloat16)
    print(json.dumps(dict(torch_empty_host_us=round((time.perf_counter() - t0) / args.calls * 1e6, 2))))


if __name__ == "__main__":
    main()
