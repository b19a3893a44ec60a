"""GPU time of one Llama-3-8B layer's four decode GEMMs with FP8 weights (hf_tp's Triton kernel, fp8_linear)
against bf16 F.linear (cuBLAS), at tp-1 and tp-2 widths, as CUDA-graph replays.

Every measurement rotates over several copies of the weights (more bytes than the 50 MB L2 several times over),
as a model's 32 layers do: one matrix replayed alone would be read from L2 and look faster than it is.

  python benchmarks/fp8_gemm.py --out results.json [--sweep] [--prefill]

--sweep   also times each decode GEMM over a grid of kernel configs (BLOCK_N, BLOCK_K, warps, stages) and
          records the best per shape: how fp8_triton.gemv_config / skinny_config were chosen.
--prefill also times M = 128 .. 4096 (tp-1 widths): bf16 vs the tl.dot kernel vs dequantize + cuBLAS, which
          sets fp8_triton.DOT_MAX_M.
TB/s = weight bytes (FP8 + fp32 scales, or bf16) / GPU time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import torch
import torch.nn.functional as F

from hf_tp.kernels import fp8_triton as ft
from hf_tp.kernels.fp8 import fp8_linear

H, I, Q, KV = 4096, 14336, 4096, 1024
ROTATE_BYTES = 400e6  # per measured matrix: 8x the H200's L2


def shapes(tp: int) -> list[tuple[str, int, int]]:
    return [("qkv", (Q + 2 * KV) // tp, H), ("o", H, Q // tp), ("gate_up", 2 * I // tp, H), ("down", H, I // tp)]


def gtime(fns, reps: int = 5, n: int = 10) -> float:
    """Microseconds per call: fns run in turn, reps times, inside one CUDA graph; the median of n replays."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in fns:
            f()
            f()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            for f in fns:
                f()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(n):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        graph.replay()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1) * 1e3 / (reps * len(fns)))
    del graph
    return sorted(times)[len(times) // 2]


class Weights:
    """C copies of one (N, K) matrix in bf16 and in block FP8 (128 x 128 scales expanded per row), and per-channel."""

    def __init__(self, N: int, K: int, copies: int):
        self.N, self.K = N, K
        self.bf16, self.fp8, self.block, self.channel = [], [], [], []
        for _ in range(copies):
            w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
            self.bf16.append(w)
            amax = w.float().abs().reshape(N, -1, 128).amax(-1).clamp(min=1e-8)  # K % 128 == 0 for these shapes
            scale = amax / 448
            q = (w.float().reshape(N, -1, 128) / scale[..., None]).reshape(N, K).to(torch.float8_e4m3fn)
            self.fp8.append(q)
            self.block.append(scale.contiguous())
            self.channel.append(scale.amax(1, keepdim=True).contiguous())

    def bytes(self, kind: str) -> int:
        return self.N * self.K * 2 if kind == "bf16" else self.N * self.K + self.N * (
            self.K // 128 if kind == "block" else 1) * 4


def copies_for(N: int, K: int) -> int:
    return max(3, math.ceil(ROTATE_BYTES / (N * K)))


def xs(M: int, K: int):
    return torch.randn(M, K, device="cuda", dtype=torch.bfloat16)


def time_bf16(W: Weights, x) -> float:
    return gtime([lambda w=w: F.linear(x, w) for w in W.bf16])


def time_fp8(W: Weights, x, kind: str = "block") -> float:
    scales = W.block if kind == "block" else W.channel
    group = 128 if kind == "block" else W.K
    return gtime([lambda w=w, s=s: fp8_linear(x, w, s, group, 0) for w, s in zip(W.fp8, scales)])


def time_cfg(W: Weights, x, path: str, config: dict | None) -> float:
    return gtime([lambda w=w, s=s: ft.launch(x, w, s, 128, 0, None, config=config, path=path)
                  for w, s in zip(W.fp8, W.block)], reps=3, n=5)


def check(W: Weights, x) -> float:
    ref = F.linear(x.float(), W.fp8[0].float() * W.block[0].repeat_interleave(128, 1))
    out = fp8_linear(x, W.fp8[0], W.block[0], 128, 0).float()
    return ((out - ref).norm() / ref.norm()).item()


GEMV_GRID = [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=3)
             for bn, bk, nw in itertools.product((4, 8, 16), (512, 1024, 2048), (4, 8))]
SKINNY_GRID = [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=4, num_stages=ns)
               for bn, bk, ns in itertools.product((32, 64, 128), (64, 128), (3, 5))]
PREFILL_CONFIGS = {"skinny_bm64": (64, dict(BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=4)),
                   "skinny_bm128": (128, dict(BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=4)),
                   "skinny_bm128_k128": (128, dict(BLOCK_N=128, BLOCK_K=128, num_warps=8, num_stages=3))}


def sweep(weights, log, rows: list, save) -> None:
    for (tp, name, N, K), W in weights.items():
        for M, path, grid in ((1, "gemv", GEMV_GRID), (8, "skinny", SKINNY_GRID), (16, "skinny", SKINNY_GRID)):
            x = xs(M, K)
            best = None
            for cfg in grid:
                try:
                    us = time_cfg(W, x, path, cfg)
                except Exception as e:  # a config that does not compile (resources): skip it, say so
                    log(f"  skip {cfg}: {type(e).__name__}: {str(e)[:80]}")
                    continue
                if best is None or us < best[0]:
                    best = (us, cfg)
            row = dict(tp=tp, gemm=name, N=N, K=K, M=M, best_us=round(best[0], 2), best_config=best[1],
                       TBs=round(W.bytes("block") / best[0] / 1e6, 2))
            rows.append(row)
            log(json.dumps(row))
            save()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--prefill", action="store_true")
    args = parser.parse_args()
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  triton=__import__("triton").__version__, rotate_bytes=ROTATE_BYTES, decode=[], layers=[])
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    def save():
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    weights = {}
    for tp in (1, 2):
        for name, N, K in shapes(tp):
            weights[(tp, name, N, K)] = Weights(N, K, copies_for(N, K))
    log("weights ready")
    for (tp, name, N, K), W in weights.items():
        for M in (1, 8, 16):
            x = xs(M, K)
            err = check(W, x)
            b = time_bf16(W, x)
            f = time_fp8(W, x)
            row = dict(tp=tp, gemm=name, N=N, K=K, M=M, bf16_us=round(b, 2), fp8_block_us=round(f, 2),
                       bf16_TBs=round(W.bytes("bf16") / b / 1e6, 2), fp8_TBs=round(W.bytes("block") / f / 1e6, 2),
                       speedup=round(b / f, 2), rel_err=float(f"{err:.2e}"))
            if M == 1:
                c = time_fp8(W, x, "channel")
                row.update(fp8_channel_us=round(c, 2), fp8_channel_TBs=round(W.bytes("channel") / c / 1e6, 2))
            result["decode"].append(row)
            log(json.dumps(row))
    for tp in (1, 2):
        for M in (1, 8, 16):
            rows = [r for r in result["decode"] if r["tp"] == tp and r["M"] == M]
            b, f = sum(r["bf16_us"] for r in rows), sum(r["fp8_block_us"] for r in rows)
            byts = sum(weights[(tp, r["gemm"], r["N"], r["K"])].bytes("block") for r in rows)
            layer = dict(tp=tp, M=M, bf16_us=round(b, 1), fp8_block_us=round(f, 1), speedup=round(b / f, 2),
                         bf16_TBs=round(2 * sum(r["N"] * r["K"] for r in rows) / b / 1e6, 2),
                         fp8_TBs=round(byts / f / 1e6, 2))
            if M == 1:
                c = sum(r["fp8_channel_us"] for r in rows)
                layer.update(fp8_channel_us=round(c, 1), channel_speedup=round(b / c, 2))
            result["layers"].append(layer)
            log("LAYER " + json.dumps(layer))
    save()
    if args.prefill:
        # tp-1 widths, one layer's four GEMMs summed. skinny_bmX: the tl.dot kernel with X rows per program
        # (M rounded up to X); dequant: fp8_triton's dequantize kernel + cuBLAS; scaled_mm_rowwise: for
        # reference only, per-channel scales and per-token FP8 activations (other numerics than weight-only).
        result["prefill"] = []
        for M in (128, 512, 2048, 4096):
            tot = dict(M=M, bf16_us=0.0, dequant_us=0.0, scaled_mm_rowwise_us=0.0, **{k + "_us": 0.0 for k in PREFILL_CONFIGS})
            for name, N, K in shapes(1):
                W = weights[(1, name, N, K)]
                x = xs(M, K)
                pairs = list(zip(W.fp8[:2], W.block[:2]))
                tot["bf16_us"] += gtime([lambda w=w: F.linear(x, w) for w in W.bf16[:2]], reps=2, n=5)
                tot["dequant_us"] += gtime([lambda w=w, s=s: ft.launch(x, w, s, 128, 0, None, path="dequant")
                                            for w, s in pairs], reps=2, n=5)
                for key, (bm, cfg) in PREFILL_CONFIGS.items():
                    cfg = dict(cfg, BLOCK_M=bm)
                    tot[key + "_us"] += gtime([lambda w=w, s=s: ft.launch(x, w, s, 128, 0, None, config=cfg, path="skinny")
                                               for w, s in pairs], reps=2, n=5)
                sb = [c.reshape(1, -1) for c in W.channel[:2]]

                def smm(w, sbw):
                    sa = x.abs().amax(1, keepdim=True).float().clamp(min=1e-12) / 448
                    return torch._scaled_mm((x / sa).to(torch.float8_e4m3fn), w.t(), scale_a=sa, scale_b=sbw,
                                            out_dtype=torch.bfloat16)
                tot["scaled_mm_rowwise_us"] += gtime([lambda w=w, sbw=sbw: smm(w, sbw) for w, sbw in zip(W.fp8[:2], sb)],
                                                     reps=2, n=5)
            tot = {k: round(v, 1) for k, v in tot.items()}
            result["prefill"].append(tot)
            log("PREFILL " + json.dumps(tot))
            save()
    if args.sweep:
        result["sweep"] = []
        sweep(weights, log, result["sweep"], save)
    log("done")


if __name__ == "__main__":
    main()
