"""Issue 19's decode speed: can FP8 x FP8 tensor-core products beat the kernels that widen the FP8 weight?

At decode sizes hf_tp's FP8 kernels (gemv_triton: the GEMV at one row, tl.dot above) widen every weight to bf16,
fp16 or fp32 in registers before multiplying: instructions per weight, where bf16 weights need none. x as two FP8
terms (fp8_triton path "two_term": x ~ s1 q1 + s2 q2, bf16's accuracy) lets the weight go to the FP8 tensor
cores as it is read. This times, per Llama-3-8B layer's four GEMMs (per-channel scales, GPU time in a CUDA graph
over weight copies beyond L2, benchmarks/fp8_gemm.py's ``gtime``), at tp-1 and tp-2 widths and a few rows:
  bf16      cuBLAS on bf16 weights
  fp8       hf_tp's FP8 decode path as shipped (fp8_triton.launch, its measured table)
  split     quantize x to two FP8 terms + the FP8 x FP8 kernel, best tile of a small sweep (both launches timed);
            split_promote / split_fp8acc: the best with each K step's product summed in fp32 / not
Row-parallel GEMMs (o, down) at tp 2 are timed with bf16 output here (the decode path's fp32 output is not an
option of the split kernel yet).

  python benchmarks/fp8_decode_split.py --out fp8_decode_split.json [--ms 1,8] [--tps 1,2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import fp8_gemm as fg  # noqa: E402


def split_tiles():
    """Tiles for a few rows: 2 x BLOCK_M MMA rows (both terms; at least 64, below which Triton builds FP8 tiles as
    fp16 MMAs on widened operands), narrow weight tiles so every SM reads; each K step's product summed in fp32
    (PROMOTE) or not."""
    for bm, bn, stages, promote in itertools.product((32,), (32, 64, 128), (4, 6), (True, False)):
        yield dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=128, num_warps=4, num_stages=stages, GROUP_N=8, PROMOTE=promote)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", default="1,8")
    ap.add_argument("--tps", default="1,2")
    args = ap.parse_args()
    from hf_tp.kernels import fp8_triton as ft

    rows, layer, t0 = [], {}, time.time()
    from hf_tp.kernels import gemv_triton

    gemv_triton.use_device_table(torch.device("cuda"))  # the shipped path is what this GPU runs
    for tp in [int(t) for t in args.tps.split(",")]:
        for name, N, K, _ in fg.shapes(tp):
            W = fg.Weights(N, K, fg.copies_for(N, K))
            for M in [int(m) for m in args.ms.split(",")]:
                x = fg.xs(M, K)
                ref = torch.nn.functional.linear(x.float(), W.fp8[0].float() * W.channel[0])

                # the shipped path's fp16 form reads an fp16 copy of x that the decode step makes inside the kernel
                # before it (fused by Inductor): made once here, so that its time is the GEMM's alone
                x16 = x.to(torch.float16) if ft.takes_fp16(M, N, K, 1, K, 0) else None

                def run(path, cfg=None):
                    return [lambda w=w, s=s: ft.launch(x, w, s, K, 0, None, config=cfg, path=path,
                                                       x16=x16 if path is None else None)
                            for w, s in zip(W.fp8, W.channel)]

                def err(fn):
                    return ((fn().float() - ref).norm() / ref.norm()).item()

                res = {"bf16": fg.gtime([fg.cublas_fn(x, w, False) for w in W.bf16]), "fp8": fg.gtime(run(None)),
                       "fp8_err": err(run(None)[0])}
                tiles = []
                for cfg in split_tiles():
                    try:
                        e = err(run("two_term", cfg)[0])
                        us = fg.gtime(run("two_term", cfg)) if e < 5e-3 else None
                    except Exception as exc:  # noqa: BLE001 - a tile that does not build
                        tiles.append(dict(cfg, skipped=f"{type(exc).__name__}: {str(exc)[:80]}"))
                        continue
                    tiles.append(dict(cfg, us=us, error=e))
                    for key in ("split", "split_promote" if cfg["PROMOTE"] else "split_fp8acc"):
                        if us is not None and us < res.get(key, float("inf")):
                            res[key], res[key + "_config"], res[key + "_err"] = us, cfg, e
                row = dict(tp=tp, gemm=name, N=N, K=K, M=M, **res, tiles=tiles)
                rows.append(row)
                for k in ("bf16", "fp8", "split", "split_promote", "split_fp8acc"):
                    if k in res:
                        layer[f"tp{tp} M{M} {k}"] = layer.get(f"tp{tp} M{M} {k}", 0.0) + res[k]
                print(json.dumps({k: v for k, v in row.items() if k != "tiles"}), f"{time.time() - t0:.0f}s", flush=True)
                json.dump(dict(rows=rows, layers={k: round(v, 2) for k, v in layer.items()}), open(args.out, "w"),
                          indent=1)
            del W
            torch.cuda.empty_cache()
    for k, v in layer.items():
        print("LAYER", k, round(v, 2))


if __name__ == "__main__":
    main()
