"""GPU time of a layer's residual add + RMSNorm and the GEMM that reads it, unfused (Inductor's add + RMSNorm
kernel, persistent as in the decode loop, then hf_tp's decode GEMM) against TPConfig.gemm_norms's one kernel
(hf_tp/kernels/gemv_triton.py with ``norm_weight``/``residual``; ``statistic_first_us``: its form that computes
the statistic before the loop, NORM_RSTD_LAST off), at the Llama-3-8B widths of a rank of tp 1/2/4/8
(q/k/v, and gate/up with its silu(gate) * up epilogue) and at qwen3-moe-mini's router (the normalized x written
for the experts). Each pair is captured 20 times in one CUDA graph and timed with CUDA events over replays, so
the figures are GPU time with the launch gaps a captured step has. The end-to-end rows are
benchmarks/next_cycle.sh's (CALL=10, benchmarks/RESULTS.md); this says which shapes gain and which lose, per GEMM.

    python benchmarks/norm_gemm_cost.py [--tp 1,2,4,8] [--rows 1] [--replays 50] [--json OUT]
    python benchmarks/norm_gemm_cost.py --smoke     # CPU, TRITON_INTERPRET=1: the code paths, tiny widths, no timing
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if "--smoke" in sys.argv:  # before any Triton kernel is defined: Triton reads it then
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from hf_tp.kernels import gemv_triton, persistent_norms  # noqa: E402
from hf_tp.kernels.decode_gemm import glu_reference, norm_reference  # noqa: E402

EPS = 1e-5
PAIRS_PER_GRAPH = 20


def add_norm(a: torch.Tensor, b: torch.Tensor, norm_weight: torch.Tensor):
    h = a + b
    return h, norm_reference(h, norm_weight, EPS)


def shapes(tps: list[int], smoke: bool) -> list[dict]:
    """(name, N, K, glu_out, keep_x): the GEMMs that read a norm's output."""
    if smoke:
        return [dict(name="qkv", n=48, k=64, glu_out=False, keep_x=False),
                dict(name="gate_up", n=64, k=64, glu_out=True, keep_x=False),
                dict(name="router", n=8, k=64, glu_out=False, keep_x=True)]
    rows = []
    for tp in tps:
        rows.append(dict(name=f"qkv tp{tp}", n=(4096 + 2 * 1024) // tp, k=4096, glu_out=False, keep_x=False))
        rows.append(dict(name=f"gate_up tp{tp}", n=2 * 14336 // tp, k=4096, glu_out=True, keep_x=False))
    rows.append(dict(name="moe router", n=64, k=2048, glu_out=False, keep_x=True))
    return rows


def gpu_us(fn, replays: int) -> float:
    """µs per call of ``fn``, PAIRS_PER_GRAPH calls captured in one CUDA graph, replayed ``replays`` times."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(PAIRS_PER_GRAPH):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000.0 / (replays * PAIRS_PER_GRAPH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", default="1,2,4,8")
    parser.add_argument("--rows", type=int, default=1, help="tokens (rows of x): 1 runs the GEMV, more tl.dot")
    parser.add_argument("--replays", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="CPU with Triton's interpreter: run the paths, no timing")
    parser.add_argument("--json", help="append one JSON row per shape here")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float16 if args.smoke else torch.bfloat16  # the interpreter rounds to bf16 by truncation
    norm = add_norm if args.smoke else persistent_norms.compiled_with_persistent_norms(add_norm)
    g = torch.Generator(device=device).manual_seed(0)
    for shape in shapes([int(t) for t in args.tp.split(",")], args.smoke):
        n, k, glu_out, keep_x = shape["n"], shape["k"], shape["glu_out"], shape["keep_x"]
        a = torch.randn(args.rows, k, device=device, generator=g).to(dtype)
        b = torch.randn(args.rows, k, device=device, generator=g).to(dtype)
        norm_weight = (1 + 0.1 * torch.randn(k, device=device, generator=g)).to(dtype)
        weight = (torch.randn(n, k, device=device, generator=g) * 0.02).to(dtype)
        h_out, x_out = torch.empty_like(a), torch.empty_like(a) if keep_x else None

        def unfused():
            h, normed = norm(a, b, norm_weight)
            return gemv_triton.launch(normed, weight, glu_out=glu_out)

        def gemm_only():
            return gemv_triton.launch(a, weight, glu_out=glu_out)

        def fused():
            return gemv_triton.launch(a, weight, glu_out=glu_out, norm_weight=norm_weight, eps=EPS, residual=b,
                                      h_out=h_out, x_out=x_out)

        def fused_statistic_first():  # the form that computes the statistic before the loop (_rows_rstd)
            saved, gemv_triton.NORM_RSTD_LAST = gemv_triton.NORM_RSTD_LAST, False
            try:
                return fused()
            finally:
                gemv_triton.NORM_RSTD_LAST = saved

        got, want = fused(), unfused()
        ref = torch.nn.functional.linear(norm_reference(a + b, norm_weight, EPS).float(), weight.float())
        ref = glu_reference(ref) if glu_out else ref
        rel = lambda t: float((t.float() - ref).norm() / ref.norm())
        row = dict(shape=shape["name"], n=n, k=k, rows=args.rows, err_fused=rel(got), err_unfused=rel(want),
                   h_same=bool(torch.equal(h_out, a + b)), err_statistic_first=rel(fused_statistic_first()))
        if not args.smoke:
            row.update(unfused_us=gpu_us(unfused, args.replays), fused_us=gpu_us(fused, args.replays),
                       statistic_first_us=gpu_us(fused_statistic_first, args.replays),
                       gemm_only_us=gpu_us(gemm_only, args.replays),
                       norm_only_us=gpu_us(lambda: norm(a, b, norm_weight), args.replays))
            row["saved_us"] = row["unfused_us"] - row["fused_us"]
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
