"""The FP8 per-channel decode GEMV (one row of x) with and without its fp16 form (gemv_triton._gemv_f16_sums, a
GEMV config's "X16"), at the Llama-3-8B shape's widths: for each GEMM the config a call takes today (the table
and this GPU's entries) and that config with "X16", at 8 and 4 warps, as GPU time per call (CUDA-graph replay
over weight copies beyond L2, fp8_gemm.gtime), the weights' TB/s, and the error against the fp32 product.
Needs no checkpoint: a short device call can run it.

  python benchmarks/fp8_gemv_f16.py [--tps 1,2] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fp8_gemm as fg  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tps", default="1,2")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    from hf_tp.kernels import gemv_triton as gt

    sms = gt.sm_count(torch.device("cuda"))  # also puts this GPU's own table entries in
    rows = []
    for tp in (int(t) for t in args.tps.split(",")):
        for name, N, K, _ in fg.shapes(tp):
            W = fg.Weights(N, K, fg.copies_for(N, K))
            x = fg.xs(1, K)
            ref = fg.reference(x, W.fp8[0], W.channel[0], "fp8")
            path, shipped = gt.choose(1, N, K, 1, sms, scales="channel")
            gemv = dict(shipped) if path == "gemv" else gt.rule_config("gemv", N, K, 1, 1, sms)
            variants = {"shipped": (path, dict(shipped))}
            for warps in (8, 4):
                base = dict(gemv, path="gemv", num_warps=warps, X16=False)
                variants[f"gemv w{warps}"] = ("gemv", base)
                variants[f"gemv w{warps} fp16"] = ("gemv", dict(base, X16=True))
            row = dict(tp=tp, gemm=name, N=N, K=K, bytes=W.bytes("channel"), shipped=shipped, us={}, TBs={}, err={})
            for label, (p, cfg) in variants.items():
                fns = [fg.kernel_fn(gt, x, w, s, "fp8", False, cfg, p) for w, s in zip(W.fp8, W.channel)]
                out = fns[0]()
                row["err"][label] = round(((out.float() - ref).norm() / ref.norm()).item(), 6)
                us = fg.gtime(fns)
                row["us"][label] = round(us, 2)
                row["TBs"][label] = round(row["bytes"] / us / 1e6, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
            del W
            torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                                  rows=rows), indent=1))


if __name__ == "__main__":
    main()
