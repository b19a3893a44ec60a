"""Issue 19: FP8 prefill "not slower than bf16". Times one Llama-3-8B layer's four GEMMs at prefill sizes.

For each GEMM (tp-1 widths, or --tp 2) and each M, GPU time (CUDA-graph replay over weight copies beyond L2,
benchmarks/fp8_gemm.py's gtime) of:
  bf16      cuBLAS on the bf16 weight (what FP8 must not be slower than);
  dequant   the FP8 path shipped before the prefill kernel: dequantize the weight (one Triton pass), then cuBLAS;
  rule      hf_tp.kernels.fp8_triton's prefill kernel with its own tiles (prefill_config);
  best      the same kernel at the best tile of a sweep (each tile checked against the fp32 reference first),
            x @ W^T and W @ x^T (W_LEFT); best_left / best_right: the best of each form.
Block scales (128 x 128) throughout; per-channel scales (one group per row) at the best block tile, with the scale
applied to the sums (SCALE_LAST, the default there) and in the tile.
  w8a8_block / w8a8_channel   (--forms w8a8) the activations quantized to FP8 per row and weight group, then the
            FP8 x FP8 kernel (fp8_triton.launch_prefill_fp8, both launches timed), best tile; the error against
            the unquantized product is reported (the tile must be within 5 %).
  split     (--forms split) x as two FP8 terms (fp8_triton.launch path "two_term", per-channel scales: bf16's
            accuracy, twice one term's MMAs), best tile, held to the weight-only tolerance (5e-3); split_promote /
            split_fp8acc: the best with each K step's product summed in fp32 / left in the tensor cores'
            accumulator (each tile's error is in the JSON); split_rule: its shipped tile (with --forms rule);
            split_mm / split_mm_fast: both terms' rows stacked in one cuBLAS FP8 GEMM (torch._scaled_mm, row-wise
            scales; each K step summed in fp32 / fast accumulation), the halves summed after.

  python benchmarks/fp8_prefill.py --out $OUT/fp8_prefill.json [--ms 128,512,2048] [--tp 1] [--quick]

The per-layer sums of each column print last (LAYER lines); the JSON holds every row and every tile timed.
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


def tiles(quick: bool, w_left=(False, True)):
    """The sweep's tiles: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), x @ W^T and (W_LEFT) W @ x^T,
    whose weight rows are the warp-group MMA's M (at least 64)."""
    for left in w_left:
        bms, bns = ((32, 64, 128, 256), (64, 128, 256)) if left else ((64, 128), (32, 64, 128, 256))
        for bm, bn, bk, warps, stages in itertools.product(bms, bns, (64, 128), (4, 8), (3, 4)):
            if (bm * bn >= 128 * 256 and warps == 4) or (bm * bn <= 64 * 32 and warps == 8):
                continue
            if bm * bn * 3 + bn * bk * stages + bm * bk * 2 * stages > 200 * 1024:  # rough shared-memory bound
                continue
            if quick and (stages == 4 or bk == 64):
                continue
            yield dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages, GROUP_N=8,
                       W_LEFT=left)


def fp8_tiles():
    """The W8A8 kernel's tiles (K steps of 128: one block group, the FP8 MMA's natural depth)."""
    for bm, bn, warps, stages in itertools.product((64, 128), (64, 128, 256), (4, 8), (3, 4, 5)):
        if (bm * bn >= 128 * 256 and warps == 4) or (bm * bn <= 64 * 64 and warps == 8):
            continue
        if stages * (bm + bn) * 128 + bm * bn * 4 > 220 * 1024:
            continue
        yield dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=128, num_warps=warps, num_stages=stages, GROUP_N=8)


def split_tiles(quick: bool):
    """Tiles of the two-term kernel (x as two FP8 terms, per-channel weights): BLOCK_M rows of x are 2 x BLOCK_M
    rows of the MMA; each K step's product summed in fp32 (PROMOTE) or left in the tensor cores' accumulator.
    ``quick``: 3 stages only."""
    for bm, bn, warps, stages, promote in itertools.product((32, 64, 128), (64, 128, 256), (4, 8),
                                                            (3,) if quick else (3, 4, 5), (True, False)):
        if (2 * bm * bn >= 128 * 256 and warps == 4) or (2 * bm * bn <= 64 * 64 and warps == 8):
            continue
        if stages * (2 * bm + bn) * 128 + 2 * bm * bn * 4 > 220 * 1024:
            continue
        yield dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=128, num_warps=warps, num_stages=stages, GROUP_N=8,
                   PROMOTE=promote)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ms", default="128,256,512,1024,2048,4096")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a third of the tiles (3 stages, K steps of 128)")
    ap.add_argument("--forms", default="w16,w8a8", help="w16: the weight-only kernel's sweep; w8a8: FP8 activations'"
                    " sweep; split: x as two FP8 terms (per-channel), its sweep; rule: the shipped tiles of all")
    args = ap.parse_args()
    from hf_tp.kernels import fp8_triton as ft

    ms = [int(m) for m in args.ms.split(",")]
    forms = args.forms.split(",")
    rows, layer, t0 = [], {}, time.time()
    for name, N, K, _ in fg.shapes(args.tp):
        W = fg.Weights(N, K, fg.copies_for(N, K))
        channel = W.channel  # one scale per row (the per-channel layout; timing only, not a fit of the weight)
        for M in ms:
            x = fg.xs(M, K)
            ref = torch.nn.functional.linear(x.float(), W.fp8[0].float() * W.block[0].repeat_interleave(128, 1)[:, :K])
            ref_c = torch.nn.functional.linear(x.float(), W.fp8[0].float() * channel[0])

            def run(cfg, path, scales=W.block, gk=128):
                return [lambda w=w, s=s: ft.launch(x, w, s, gk, 0, None, config=cfg, path=path)
                        for w, s in zip(W.fp8, scales)]

            def err(out, r):
                return ((out.float() - r).norm() / r.norm()).item()

            res = {"bf16": fg.gtime([fg.cublas_fn(x, w, False) for w in W.bf16]),
                   "dequant": fg.gtime([lambda w=w, s=s: ft.launch(x, w, s, 128, 0, None, path="dequant")
                                        for w, s in zip(W.fp8, W.block)])}
            timed = []

            def sweep(form, path, grid, scales, gk, r, tol):
                """The best tile of ``grid`` into res[form] (and per W_LEFT for the weight-only kernel)."""
                for cfg in grid:
                    try:
                        e = err(run(cfg, path, scales, gk)[0](), r)
                        if not e < tol:
                            timed.append(dict(cfg, form=form, error=e))
                            continue
                        us = fg.gtime(run(cfg, path, scales, gk))
                    except Exception as exc:  # noqa: BLE001 - a tile that does not build (shared memory)
                        timed.append(dict(cfg, form=form, skipped=f"{type(exc).__name__}: {str(exc)[:80]}"))
                        continue
                    timed.append(dict(cfg, form=form, us=round(us, 2), error=e))
                    keys = [form] + ([form + ("_left" if cfg["W_LEFT"] else "_right")] if "W_LEFT" in cfg else [])
                    keys += [form + ("_promote" if cfg["PROMOTE"] else "_fp8acc")] if "PROMOTE" in cfg else []
                    for key in keys:
                        if key not in res or us < res[key]:
                            res[key], res[key + "_config"], res[key + "_err"] = us, cfg, e

            if "rule" in forms:  # the shipped tiles only
                res["rule"] = fg.gtime(run(None, "prefill"))
                res["rule_err"] = err(run(None, "prefill")[0](), ref)
                res["w8a8_rule_block"] = fg.gtime(run(None, "prefill_fp8"))
                res["w8a8_rule_channel"] = fg.gtime(run(None, "prefill_fp8", channel, K))
                res["split_rule"] = fg.gtime(run(None, "two_term", channel, K))
                res["split_rule_err"] = err(run(None, "two_term", channel, K)[0](), ref_c)
            if "w16" in forms:
                res["rule_config"] = ft.prefill_config(M, N, K, -(-K // 128))
                res["rule"] = fg.gtime(run(None, "prefill"))
                res["rule_err"] = err(run(None, "prefill")[0](), ref)
                sweep("best", "prefill", tiles(args.quick), W.block, 128, ref, 5e-3)
                if "best" in res:
                    sweep("channel_last", "prefill", [dict(res["best_config"], SCALE_LAST=True)], channel, K, ref_c, 5e-3)
                    sweep("channel_tile", "prefill", [dict(res["best_config"], SCALE_LAST=False)], channel, K, ref_c,
                          5e-3)
            if "w8a8" in forms:
                sweep("w8a8_block", "prefill_fp8", fp8_tiles(), W.block, 128, ref, 0.05)
                sweep("w8a8_channel", "prefill_fp8", fp8_tiles(), channel, K, ref_c, 0.05)
            if "split" in forms:
                sweep("split", "two_term", split_tiles(args.quick), channel, K, ref_c, 5e-3)
                for key, fast in (("split_mm", False), ("split_mm_fast", True)):  # the same by cuBLAS
                    try:
                        fns = [lambda w=w, s=s: ft.launch_two_term_scaled_mm(x, w, s, None, fast)
                               for w, s in zip(W.fp8, channel)]
                        res[key + "_err"] = err(fns[0](), ref_c)
                        res[key] = fg.gtime(fns)
                    except Exception as exc:  # noqa: BLE001 - torch._scaled_mm's row-wise form missing here
                        res[key + "_skipped"] = f"{type(exc).__name__}: {str(exc)[:120]}"
            row = dict(gemm=name, N=N, K=K, M=M, **{k: (round(v, 2) if isinstance(v, float) and "err" not in k
                                                        else v) for k, v in res.items()}, tiles=timed)
            rows.append(row)
            for k in ("bf16", "dequant", "rule", "best", "best_left", "best_right", "channel_last", "channel_tile",
                      "w8a8_block", "w8a8_channel", "w8a8_rule_block",
                      "w8a8_rule_channel", "split", "split_promote", "split_fp8acc", "split_rule", "split_mm", "split_mm_fast"):
                if isinstance(res.get(k), float):
                    layer[f"{M} {k}"] = layer.get(f"{M} {k}", 0.0) + res[k]
            print(json.dumps({k: v for k, v in row.items() if k != "tiles"}), f"{time.time() - t0:.0f}s", flush=True)
            json.dump(dict(tp=args.tp, rows=rows, layers={k: round(v, 2) for k, v in layer.items()}),
                      open(args.out, "w"), indent=1)
        del W
        torch.cuda.empty_cache()
    for k, v in layer.items():
        print("LAYER", k, round(v, 2))


if __name__ == "__main__":
    main()
