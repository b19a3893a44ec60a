"""Host time of one eager FP8 linear call at prefill size, without a GPU (issue 19's prefill).

An eager prefill forward waits for the host (benchmarks/RESULTS.md, eighteenth session: FP8 per channel 36.4 ms
against bf16's 21.6 for a 128-token prompt at the 8B shape, far more than their GEMMs differ). This measures what
hf_tp's own Python adds per ``hf_tp.kernels.fp8.fp8_linear`` call on the Triton path: the Triton kernels are
replaced by stand-ins that launch nothing and the kernel is declared available, so the call runs every line of
hf_tp's dispatch and launchers on CPU tensors; Triton's launch itself (not measurable here) comes on top.
``F.linear`` on one row is the reference for a dense layer's host cost. Optionally a cProfile of the call.

  python benchmarks/fp8_host_cost.py [--rows 128] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch


class _NoLaunch:
    """Stands in for a @triton.jit kernel: kernel[grid](...) does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def per_call_us(fn, calls: int = 3000) -> float:
    for _ in range(100):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    from hf_tp.kernels import fp8
    from hf_tp.kernels import fp8_triton as ft

    fp8.fp8_kernel_available = lambda device: True
    for name in ("_prefill", "_prefill_fp8", "_quantize_groups", "_dequant"):
        setattr(ft, name, _NoLaunch())
    N, K = 6144, 4096  # Llama-3-8B's fused q/k/v
    x = torch.randn(args.rows, K, dtype=torch.bfloat16)
    weight = torch.empty(N, K, dtype=torch.float8_e4m3fn)
    scale = torch.rand(N, 1)
    one_row, dense = torch.randn(1, 64, dtype=torch.bfloat16), torch.randn(64, 64, dtype=torch.bfloat16)
    print(f"F.linear, one row: {per_call_us(lambda: torch.nn.functional.linear(one_row, dense)):.1f} us")
    for label, limit in (("FP8 per channel, shipped path", 0), ("FP8 per channel, two terms", 1 << 20)):
        ft.PREFILL_TWO_TERM_MAX_M = limit
        print(f"{label} ({ft.launch.__name__} with the kernels stubbed), {args.rows} rows: "
              f"{per_call_us(lambda: fp8.fp8_linear(x, weight, scale, K, 0)):.1f} us")
    ft.PREFILL_TWO_TERM_MAX_M = 0
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(3000):
            fp8.fp8_linear(x, weight, scale, K, 0)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
