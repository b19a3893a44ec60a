"""Issue 19: can FP8 decode GEMMs read their weights faster in fp16 tensor-core form than the GEMV?

For the Llama-3-8B decode GEMMs at tp-1 and tp-2 widths (M = 1 and 8), GPU time (CUDA-graph replay over weight
copies beyond L2, benchmarks/fp8_gemm.py's gtime) of:
  shipped  hf_tp's FP8 kernels as the table picks them (bf16 activations);
  f16      the tl.dot kernel with FP8 widened to fp16 and the bf16 activations converted in the kernel ("F16");
  x16      the tl.dot kernel given fp16 activations (what the kernel does when the conversion is done by the
           step before it, e.g. fused into the RMSNorm by Inductor).
Each config checked against the fp32 reference first; the best config per variant and shape is printed.

  python benchmarks/fp8_f16_probe.py --out $OUT/fp8_f16.json
  python benchmarks/fp8_f16_probe.py --prefill 128,512,2048 --out $OUT/fp8_prefill.json

--prefill M,...: instead, tp-1 widths at prefill sizes: bf16 cuBLAS, the shipped FP8 prefill (dequantize + cuBLAS)
and the tl.dot kernel in its fp16 form with prefill tiles (BLOCK_M 64/128), block scales: whether the fp16 form
makes FP8 prefill as fast as bf16 (issue 19: time to first token "not slower").
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

from hf_tp.kernels import gemv_triton as gt  # noqa: E402


def configs(N: int, sms: int, block_k: int = 128):
    for bn, warps, stages in itertools.product((32, 64, 128), (4, 8), (3, 5)):
        if warps == 8 and bn == 32:
            continue
        programs = -(-N // bn)
        for split in (1, 2, 4, 8):
            if split > 1 and programs * split > 6 * sms:
                break
            yield dict(path="dot", BLOCK_N=bn, BLOCK_K=block_k, num_warps=warps, num_stages=stages, SPLIT=split)


def prefill(ms, out_path):
    from hf_tp.kernels import fp8_triton as ft

    rows, t0, layer = [], time.time(), {}
    for name, N, K, _ in fg.shapes(1):
        W = fg.Weights(N, K, max(2, fg.copies_for(N, K) // 4))
        for M in ms:
            x = fg.xs(M, K)
            ref = torch.nn.functional.linear(x.float(), W.fp8[0].float() * W.block[0].repeat_interleave(128, 1))
            res = {"bf16": fg.gtime([fg.cublas_fn(x, w, False) for w in W.bf16]),
                   "dequant": fg.gtime([lambda w=w, s=s: ft.launch(x, w, s, 128, 0, None, path="dequant")
                                        for w, s in zip(W.fp8, W.block)])}
            best = None
            for bm, bn, bk, warps, stages in itertools.product((64, 128), (64, 128), (64, 128), (4, 8), (3, 4)):
                if bm * bn > 64 * 128 and warps == 4:
                    continue
                cfg = dict(path="dot", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
                           SPLIT=1, X16=True)
                try:
                    out = gt.launch(x, W.fp8[0], W.block[0], 128, 0, None, config=cfg, path="dot")
                    if not ((out.float() - ref).norm() / ref.norm()).item() < 5e-3:
                        continue
                    us = fg.gtime([lambda w=w, s=s: gt.launch(x, w, s, 128, 0, None, config=cfg, path="dot")
                                   for w, s in zip(W.fp8, W.block)])
                except Exception as exc:  # noqa: BLE001 - a config that does not build (shared memory): skipped
                    print("skip", cfg, type(exc).__name__, str(exc)[:80], flush=True)
                    continue
                if best is None or us < best[0]:
                    best = (us, cfg)
            if best:
                res["x16"], res["x16_config"] = best
            row = dict(gemm=name, N=N, K=K, M=M, **{k: (round(v, 2) if isinstance(v, float) else v)
                                                     for k, v in res.items()})
            rows.append(row)
            for k in ("bf16", "dequant", "x16"):
                if k in res:
                    layer[(M, k)] = layer.get((M, k), 0.0) + res[k]
            print(json.dumps(row), f"{time.time() - t0:.0f}s", flush=True)
            json.dump(dict(rows=rows, layers={str(k): round(v, 2) for k, v in layer.items()}), open(out_path, "w"),
                      indent=1)
        del W
        torch.cuda.empty_cache()
    for k, v in sorted(layer.items()):
        print("LAYER", k, round(v, 2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tps", default="1,2")
    ap.add_argument("--ms", default="1,8")
    ap.add_argument("--prefill", default="", help="M,...: prefill sizes at tp-1 widths instead (see above)")
    args = ap.parse_args()
    if args.prefill:
        return prefill([int(m) for m in args.prefill.split(",")], args.out)
    sms = gt.sm_count(torch.device("cuda"))
    rows, t0 = [], time.time()
    layer = {}
    for tp in (int(t) for t in args.tps.split(",")):
        for name, N, K, _ in fg.shapes(tp):
            W = fg.Weights(N, K, fg.copies_for(N, K))
            for M in (int(m) for m in args.ms.split(",")):
                x = fg.xs(M, K)
                x16 = x.to(torch.float16)
                for scales in ("block", "channel") if M == 1 else ("block",):
                    ss = W.block if scales == "block" else W.channel
                    gk = 128 if scales == "block" else K
                    ref = torch.nn.functional.linear(x.float(), W.fp8[0].float() * ss[0].repeat_interleave(gk, 1)[:, :K])

                    def run(xx, cfg, w, s):
                        return lambda: gt.launch(xx, w, s, gk, 0, None, config=cfg, path=None if cfg is None else "dot")

                    res = {}
                    for variant in ("shipped", "f16", "x16"):
                        best = None
                        grid = [None] if variant == "shipped" else list(configs(N, sms))
                        if variant != "shipped" and scales == "channel":
                            grid += list(configs(N, sms, 256))
                        for cfg in grid:
                            if variant == "f16":
                                cfg = dict(cfg, F16=True)
                            xx = x16 if variant == "x16" else x
                            try:
                                out = run(xx, cfg, W.fp8[0], ss[0])()
                                err = ((out.float() - ref).norm() / ref.norm()).item()
                                if not err < 5e-3:
                                    continue
                                us = fg.gtime([run(xx, cfg, w, s) for w, s in zip(W.fp8, ss)])
                            except Exception as exc:  # noqa: BLE001 - a config that does not build: skipped
                                print("skip", variant, cfg, type(exc).__name__, str(exc)[:80], flush=True)
                                continue
                            if best is None or us < best[0]:
                                best = (us, cfg)
                        if best:
                            res[variant] = dict(us=round(best[0], 2), config=best[1],
                                                TBs=round(W.bytes(scales) / best[0] / 1e6, 2))
                    row = dict(tp=tp, gemm=name, N=N, K=K, M=M, scales=scales, **res)
                    rows.append(row)
                    for v, r in res.items():
                        layer.setdefault((tp, M, scales, v), 0.0)
                        layer[(tp, M, scales, v)] += r["us"]
                    print(json.dumps(row), f"{time.time() - t0:.0f}s", flush=True)
                    json.dump(dict(rows=rows, layers={str(k): round(v, 2) for k, v in layer.items()}),
                              open(args.out, "w"), indent=1)
            del W
            torch.cuda.empty_cache()
    for k, v in sorted(layer.items()):
        print("LAYER", k, round(v, 2))


if __name__ == "__main__":
    main()
