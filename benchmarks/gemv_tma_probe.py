"""A probe: the decode GEMV (one row of x) with its weight tiles brought in by the Hopper tensor memory accelerator
(TMA, a host-made tensor descriptor), pipelined over ``num_stages`` shared-memory buffers, against the shipped
kernel (hf_tp/kernels/gemv_triton.py). Question: does the FP8 GEMV, whose loop waits on each step's loads before
its math (about 2.3-2.7 TB/s on an H100, where the bf16 one reads 2.85-2.95), read faster when the copies run
ahead of the math with no thread issuing them?

  python benchmarks/gemv_tma_probe.py --check            # CPU (Triton's interpreter): values against torch
  python benchmarks/gemv_tma_probe.py --build            # CPU: build for sm_90, registers and the loop's ops
  python benchmarks/gemv_tma_probe.py --out FILE.json [--gemms gate_up,down] [--kinds fp8] [--quick]
                                                         # GPU: µs per GEMM, tp-1 widths of Llama-3-8B, M = 1

Per-channel FP8 (one scale per output row, applied to the sum) and bf16 weights; fp32 accumulation of
w * x in a (BLOCK_N, BLOCK_K) tile, summed over K after the loop (the shipped GEMV's order differs, so the
values agree to rounding, not bits). GPU time by CUDA-graph replay over weight copies beyond L2
(benchmarks/fp8_gemm.py's ``gtime`` and ``copies_for``). Not shipped: a probe.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import sys

import torch
import triton
import triton.language as tl

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


@triton.jit
def gemv_tma_kernel(w_desc, x_ptr, s_ptr, o_ptr, ws_ptr, N, K, k_split, HAS_SCALE: tl.constexpr,
                    SPLIT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    n0 = pid_n * BLOCK_N
    k_lo = pid_s * k_split
    k_hi = tl.minimum(k_lo + k_split, K)
    # x through pointers of W's tile shape (every row the same address), as the shipped GEMV loads it: x then
    # gets W's register layout (16 columns a thread) instead of a 1-D one converted through shared memory
    x_tile = x_ptr + tl.zeros((BLOCK_N, 1), dtype=tl.int32) + tl.arange(0, BLOCK_K)[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):
        w = w_desc.load([n0, k0])
        x = tl.load(x_tile + k0)
        acc += w.to(tl.float32) * x.to(tl.float32)
    rn = n0 + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    out = tl.sum(acc, axis=1)
    if SPLIT:  # fp32 partial sums, added by torch (a probe: the shipped kernel has its reduce kernel)
        tl.store(ws_ptr + pid_s * N + rn, out, mask=n_ok)
    else:
        if HAS_SCALE:
            out = out * tl.load(s_ptr + rn, mask=n_ok, other=0.0)
        tl.store(o_ptr + rn, out.to(o_ptr.dtype.element_ty), mask=n_ok)


def launch(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None, cfg: dict, desc=None):
    """x (1, K) bf16; w (N, K) FP8 or bf16; scale (N, 1) fp32 for FP8. Returns (1, N) bf16."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    N, K = w.shape
    bn, bk, split = cfg["BLOCK_N"], cfg["BLOCK_K"], cfg.get("SPLIT", 1)
    desc = desc or TensorDescriptor.from_tensor(w, [bn, bk])
    k_split = triton.cdiv(triton.cdiv(K, split), bk) * bk
    out = torch.empty(1, N, device=x.device, dtype=x.dtype)
    ws = torch.empty(split, N, device=x.device, dtype=torch.float32) if split > 1 else out
    s = scale if scale is not None else out
    gemv_tma_kernel[(triton.cdiv(N, bn), split)](desc, x, s, out, ws, N, K, k_split, HAS_SCALE=scale is not None,
                                                 SPLIT=split > 1, BLOCK_N=bn, BLOCK_K=bk, STAGES=cfg["num_stages"],
                                                 num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if split > 1:
        summed = ws.sum(0)
        out = (summed * scale.view(-1) if scale is not None else summed).to(x.dtype)[None]
    return out


def reference(x, w, scale):
    wf = w.float() * (scale if scale is not None else 1.0)
    return x.float() @ wf.t()


def quantize(w: torch.Tensor):
    scale = w.float().abs().amax(1, keepdim=True).clamp(min=1e-8) / 448
    return (w.float() / scale).to(torch.float8_e4m3fn), scale.contiguous()


def check() -> None:
    """Values against torch in Triton's interpreter (set before triton compiles anything)."""
    torch.manual_seed(0)
    for N, K, cfg in ((64, 512, dict(BLOCK_N=16, BLOCK_K=128, num_warps=4, num_stages=3)),
                      (96, 1024, dict(BLOCK_N=32, BLOCK_K=256, num_warps=4, num_stages=2, SPLIT=2))):
        w = torch.randn(N, K) * 0.02
        x = torch.randn(1, K).to(torch.bfloat16)
        q, s = quantize(w)
        for name, (ww, ss) in (("fp8", (q, s)), ("bf16", (w.to(torch.bfloat16), None))):
            got, want = launch(x, ww, ss, cfg), reference(x, ww, ss)
            err = ((got.float() - want).norm() / want.norm()).item()
            print(f"check {name} {N}x{K} {cfg}: relative error {err:.2e}", flush=True)
            assert err < 1e-2, err


def build(kind: str, cfg: dict):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    wt = "fp8e4nv" if kind == "fp8" else "bf16"
    bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    signature = {"w_desc": f"tensordesc<{wt}[{bn}, {bk}]>", "x_ptr": "*bf16", "s_ptr": "*fp32", "o_ptr": "*bf16",
                 "ws_ptr": "*fp32", "N": "i32", "K": "i32", "k_split": "i32", "HAS_SCALE": "constexpr",
                 "SPLIT": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "STAGES": "constexpr"}
    constexprs = {"HAS_SCALE": kind == "fp8", "SPLIT": cfg.get("SPLIT", 1) > 1, "BLOCK_N": bn, "BLOCK_K": bk,
                  "STAGES": cfg["num_stages"]}
    names = list(gemv_tma_kernel.arg_names)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ("x_ptr", "s_ptr", "o_ptr", "ws_ptr", "K",
                                                                     "k_split")}
    return triton.compile(ASTSource(gemv_tma_kernel, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grid(kind: str, N: int, K: int, sms: int, quick: bool) -> list[dict]:
    out = []
    bks = ((256,) if quick else (128, 256)) if kind == "fp8" else (64, 128)
    space = ((8, 16, 32), bks, (4,), (3, 5)) if quick else ((8, 16, 32), bks, (4, 8), (3, 4, 6))
    for bn, bk, warps, stages in itertools.product(*space):
        programs = triton.cdiv(N, bn)
        for split in (1, 2, 4, 8):
            if split > 1 and (programs * split > 6 * sms or K < split * bk * 2):
                break
            out.append(dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages, SPLIT=split))
    return out


def time_gpu(out_path: str, gemms: list[str], kinds: list[str], quick: bool) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.dirname(here))
    fg = _load(os.path.join(here, "fp8_gemm.py"), "fp8_gemm")
    from hf_tp.kernels import gemv_triton as gt
    from triton.tools.tensor_descriptor import TensorDescriptor

    def alloc(size, alignment, stream):  # scratch for kernels that make descriptors on the device (none here)
        return torch.empty(size, device="cuda", dtype=torch.int8)

    triton.set_allocator(alloc)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for name in gemms:
        N, K = SHAPES[name]
        copies = fg.copies_for(N, K)
        ws_bf16 = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        fp8 = [quantize(w) for w in ws_bf16]
        x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
        for kind in kinds:
            pairs = fp8 if kind == "fp8" else [(w, None) for w in ws_bf16]
            nbytes = N * K * (1 if kind == "fp8" else 2) + (N * 4 if kind == "fp8" else 0)
            shipped = fg.gtime([lambda w=w, s=s: gt.launch(x, w, s, K, 0, None) if s is not None
                                else gt.launch(x, w) for w, s in pairs])
            ref = reference(x, *pairs[0])
            best, failed = None, 0
            for cfg in grid(kind, N, K, sms, quick):
                try:
                    descs = [TensorDescriptor.from_tensor(w, [cfg["BLOCK_N"], cfg["BLOCK_K"]]) for w, _ in pairs]
                    one = launch(x, pairs[0][0], pairs[0][1], cfg, descs[0])
                    err = ((one.float() - ref).norm() / ref.norm()).item()
                    if err > 1e-2:
                        failed += 1
                        continue
                    us = fg.gtime([lambda w=w, s=s, d=d, c=cfg: launch(x, w, s, c, d)
                                   for (w, s), d in zip(pairs, descs)])
                except Exception as exc:  # noqa: BLE001 - a config that does not build: counted
                    failed += 1
                    print(f"  {name} {kind} {cfg}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                    continue
                if best is None or us < best[0]:
                    best = (us, cfg)
            row = dict(gemm=name, N=N, K=K, kind=kind, shipped_us=round(shipped, 2),
                       shipped_TBs=round(nbytes / shipped / 1e6, 2), failed=failed)
            if best:
                row.update(tma_us=round(best[0], 2), tma_TBs=round(nbytes / best[0] / 1e6, 2), tma_config=best[1])
            rows.append(row)
            print("ROW " + json.dumps(row), flush=True)
            with open(out_path, "w") as f:
                json.dump(dict(device=torch.cuda.get_device_name(), triton=triton.__version__, rows=rows), f, indent=1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--build", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--gemms", default="gate_up,down,qkv,o")
    parser.add_argument("--kinds", default="fp8,bf16")
    parser.add_argument("--quick", action="store_true", help="a smaller grid (FP8: 256-column steps, 4 warps)")
    args = parser.parse_args()
    if args.check:
        check()
    if args.build:
        sass = _load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "gemv_sass.py"), "gemv_sass")
        for kind, cfg in (("fp8", dict(BLOCK_N=16, BLOCK_K=256, num_warps=4, num_stages=4)),
                          ("fp8", dict(BLOCK_N=8, BLOCK_K=256, num_warps=4, num_stages=6)),
                          ("bf16", dict(BLOCK_N=16, BLOCK_K=128, num_warps=4, num_stages=4))):
            compiled = build(kind, cfg)
            info = sass.analyse(compiled)
            text = sass.sass_of(compiled)
            info["UTMALDG"] = text.count("UTMALDG")
            info["smem"] = compiled.metadata.shared
            print("build", kind, cfg, info, flush=True)
    if args.out:
        time_gpu(args.out, args.gemms.split(","), args.kinds.split(","), args.quick)


if __name__ == "__main__":
    main()
