"""Issue 19's decode bars: is the FP8 GEMV (gemv_triton, one row) held back by the instructions it spends per weight?

Built for sm_90 (benchmarks/gemv_sass.py --dtype fp8 --scale 1), the per-channel GEMV's loop spends about 78
instructions on 16 weights per thread: 16 widen x from bf16 to fp32 (one per weight, since every thread holds 16
columns of one row). This times, per Llama-3-8B layer's four decode GEMMs at one row (per-channel scales, GPU time
in a CUDA graph over weight copies beyond L2, benchmarks/fp8_gemm.py's ``gtime``), at tp-1 and tp-2 widths:
  bf16        cuBLAS on bf16 weights
  fp8         hf_tp's FP8 decode path as shipped (bf16 x, its measured table)
  fp8_x32     the same kernel and config on an fp32 copy of x made outside the timing: the widening of x gone
  fp8_x32_*   the fp32 form at a few other configs (rows per program, bytes per step, warps)
If fp8_x32 is clearly faster, the decode step could hand the GEMVs an fp32 x (as it hands the tl.dot kernel an
fp16 one, "X16"). Each form's error against the fp32 product is in the JSON.

  python benchmarks/fp8_gemv_x32.py --out fp8_gemv_x32.json [--tps 1,2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import fp8_gemm as fg  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tps", default="1,2")
    args = ap.parse_args()
    from hf_tp.kernels import gemv_triton as gt

    rows, layer, t0 = [], {}, time.time()
    gt.use_device_table(torch.device("cuda"))  # "shipped" is what this GPU runs
    for tp in [int(t) for t in args.tps.split(",")]:
        for name, N, K, fp32_out in fg.shapes(tp):
            W = fg.Weights(N, K, fg.copies_for(N, K))
            x = fg.xs(1, K)
            x32 = x.float()
            out_dtype = torch.float32 if fp32_out else torch.bfloat16
            ref = torch.nn.functional.linear(x32, W.fp8[0].float() * W.channel[0])
            path, shipped = gt.choose(1, N, K, 1, scales="channel")

            def run(xin, cfg=None, path=None):
                return [lambda w=w, s=s: gt.launch(xin, w, s, K, 0, None, out_dtype=out_dtype, config=cfg, path=path)
                        for w, s in zip(W.fp8, W.channel)]

            def err(fn):
                return ((fn().float() - ref).norm() / ref.norm()).item()

            res = {"path": path, "config": shipped, "bf16": fg.gtime([fg.cublas_fn(x, w, fp32_out) for w in W.bf16]),
                   "fp8": fg.gtime(run(x)), "fp8_err": err(run(x)[0])}
            res["fp8_x32"], res["fp8_x32_err"] = fg.gtime(run(x32)), err(run(x32)[0])
            if path == "gemv":
                for bn, bk, warps in ((4, 2048, 8), (8, 1024, 8), (4, 1024, 4), (2, 2048, 8)):
                    cfg = dict(shipped, BLOCK_N=bn, BLOCK_K=min(bk, K), num_warps=warps)
                    key = f"fp8_x32_{bn}x{bk}x{warps}"
                    try:
                        res[key + "_err"] = err(run(x32, cfg, "gemv")[0])
                        res[key] = fg.gtime(run(x32, cfg, "gemv"))
                        res[key.replace("fp8_x32", "fp8_cfg")] = fg.gtime(run(x, cfg, "gemv"))
                    except Exception as exc:  # noqa: BLE001 - a config that does not build
                        res[key + "_skipped"] = f"{type(exc).__name__}: {str(exc)[:80]}"
            rows.append(dict(tp=tp, gemm=name, N=N, K=K, **res))
            for k in ("bf16", "fp8", "fp8_x32"):
                layer[f"tp{tp} {k}"] = layer.get(f"tp{tp} {k}", 0.0) + res[k]
            best32 = min(v for k, v in res.items() if k.startswith("fp8_x32") and isinstance(v, float)
                         and not k.endswith("_err"))
            layer[f"tp{tp} fp8_x32_best"] = layer.get(f"tp{tp} fp8_x32_best", 0.0) + best32
            print(json.dumps(rows[-1]), f"{time.time() - t0:.0f}s", flush=True)
            json.dump(dict(rows=rows, layers={k: round(v, 2) for k, v in layer.items()}), open(args.out, "w"), indent=1)
            del W
            torch.cuda.empty_cache()
    for k, v in layer.items():
        print("LAYER", k, round(v, 2))


if __name__ == "__main__":
    main()
