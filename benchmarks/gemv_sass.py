"""The decode GEMV kernel (hf_tp/kernels/gemv_triton.py) built for sm_90 on a host without a GPU, and what its
main loop does: registers, stack, instructions per loop iteration, and the order of loads and math in it.

  python benchmarks/gemv_sass.py [--dtype bf16|fp8] [--scale 0|1|2|3] [--f16] [--configs 8x1024x4x1,16x2048x8x0]
  python benchmarks/gemv_sass.py --kernel dot --norm 0,2 [--rstd-last] [--dot 64x128x4x3] [--ir DIR]

The second form builds the tl.dot kernel (_gemv_dot_kernel) at one row (BLOCK_M 16) as gate/up with its GLU
epilogue, with the RMSNorm inside it (NORM 2: the residual add too) or not; ``--ir DIR`` writes each build's
TTGIR (layouts, which loads are pipelined) and SASS there.

A config is BLOCK_N x (bytes of a row per step) x warps x num_stages. The loop pattern reads like "L10c224": 10
loads, then 224 arithmetic instructions; "L1c45L1c47..." means each load waits for the math before it (one
DRAM latency per load). Uses Triton's bundled ptxas and cuobjdump (Triton 3.9 on this project's CPU hosts); the
GPU image's Triton (3.6) may schedule differently.
"""

from __future__ import annotations

import argparse
import itertools
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from hf_tp.kernels import gemv_triton as gt

DIV16 = {"N", "K", "k_split", "stride_wn", "stride_os"}


def build(dtype: str, scale: int, block_n: int, row_bytes: int, warps: int, stages: int, f16: bool = False):
    elem = 2 if dtype == "bf16" else 1
    vec = 16 // elem
    wtype = "*bf16" if dtype == "bf16" else "*fp8e4nv"
    constexprs = dict(SCALE=scale, GROUP_SHIFT=7 if scale == 2 else -1, SPLIT=False, FOLD=False, HAS_BIAS=False,
                      EVEN_N=True, EVEN_K=True, BLOCK_N=block_n, NV=row_bytes // elem // vec, VEC=vec, STAGES=stages,
                      PDL=False, PREFETCH=0, LINE=64, GLU=False, GLU_OUT=False, NORM=0, NORM_BLOCK=16,
                      KEEP_X=False, F16=f16)
    # Flags added to the kernel after this script: off (each one's default path).
    for i in gt._gemv_kernel.constexprs:
        constexprs.setdefault(gt._gemv_kernel.arg_names[i], False)
    pointers = dict(x_ptr="*bf16", x16_ptr="*fp16", w_ptr=wtype, s_ptr="*fp32" if scale else "*bf16", b_ptr="*bf16", o_ptr="*bf16",
                    f_ptr="*bf16", c_ptr="*i32", r_ptr="*bf16", nw_ptr="*bf16", h_ptr="*bf16", xn_ptr="*bf16")
    names = list(gt._gemv_kernel.arg_names)
    signature = {n: "constexpr" if n in constexprs else pointers[n] if n.endswith("_ptr") else "fp32" if n == "eps"
                 else "i32" for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n.endswith("_ptr") or n in DIV16}
    return triton.compile(ASTSource(gt._gemv_kernel, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=warps, num_stages=max(1, stages), enable_fp_fusion=True))


def _cuobjdump(compiled, flag: str) -> str:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return subprocess.run([str(tool), flag, f.name], capture_output=True, text=True).stdout


def sass_of(compiled) -> str:
    return _cuobjdump(compiled, "-sass")


def analyse(compiled) -> dict:
    usage, sass = _cuobjdump(compiled, "--dump-resource-usage"), sass_of(compiled)
    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    lines = sass.splitlines()
    loop = None  # the first backward branch's range: the main loop (the fp16 form's fp32 fallback loop is after it)
    for line in lines:
        branch, at = re.search(r"BRA 0x([0-9a-f]+)", line), re.search(r"/\*([0-9a-f]{4})\*/", line)
        if branch and at and 0 < int(branch.group(1), 16) < int(at.group(1), 16) and loop is None:
            loop = (int(branch.group(1), 16), int(at.group(1), 16))
    ops, seq = Counter(), []
    for line in lines:
        m = re.search(r"/\*([0-9a-f]{4})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)", line)
        if m and loop and loop[0] <= int(m.group(1), 16) <= loop[1]:
            op = m.group(3)
            ops[op] += 1
            if op.startswith("LDG"):
                seq.append("L")
            elif op.startswith(("FFMA", "FMUL", "FADD", "HADD2", "HFMA2", "F2FP")):
                seq.append("c")
    pattern = "".join(f"{k}{len(list(g))}" for k, g in itertools.groupby(seq))
    return dict(registers=int(regs), stack=int(stack), loop_instructions=sum(ops.values()), pattern=pattern,
                top=dict(ops.most_common(6)))


def build_dot(norm: int, rstd_last: bool, block_n: int, block_k: int, warps: int, stages: int):
    """The tl.dot kernel at one row of x, bf16 weights, as gate/up (GLU_OUT), NORM 0 / 1 / 2."""
    kernel = gt._gemv_dot_kernel
    constexprs = dict(SCALE=0, SPLIT=False, FOLD=False, HAS_BIAS=False, EVEN_K=True, MMA=0, BLOCK_M=16,
                      BLOCK_N=block_n, BLOCK_K=block_k, GLU_OUT=True, NORM=norm, NORM_ROWS=1, NORM_BLOCK=512,
                      RSTD_LAST=rstd_last)
    for i in kernel.constexprs:
        constexprs.setdefault(kernel.arg_names[i], 0 if kernel.arg_names[i] in ("PREFETCH",) else False)
    constexprs["LINE"] = 64
    names = list(kernel.arg_names)
    signature = {n: "constexpr" if n in constexprs else "*i32" if n == "c_ptr" else "*fp32" if n == "s_ptr"
                 else "*bf16" if n.endswith("_ptr") else "fp32" if n == "eps" else "i32" for n in names}
    div16 = DIV16 | {"stride_xm", "stride_om"}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n.endswith("_ptr") or n in div16}
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=warps, num_stages=stages))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", default="gemv", choices=["gemv", "dot"])
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp8"])
    parser.add_argument("--scale", type=int, default=None, help="0 none, 1 per channel, 2 block, 3 unaligned")
    parser.add_argument("--f16", action="store_true", help="FP8 per channel: the fp16 form (a config's X16)")
    parser.add_argument("--configs", default="8x1024x4x1,8x1024x4x0,8x2048x8x1,16x1024x8x1,4x2048x4x1")
    parser.add_argument("--norm", default="0,2", help="dot: NORM values to build (0 none, 1 norm, 2 add + norm)")
    parser.add_argument("--rstd-last", action="store_true", help="dot: the statistic summed in the loop")
    parser.add_argument("--dot", default="64x128x4x3", help="dot: BLOCK_N x BLOCK_K x warps x num_stages")
    parser.add_argument("--ir", help="dot: write each build's TTGIR and SASS into this folder")
    args = parser.parse_args()
    if args.kernel == "dot":
        bn, bk, warps, stages = (int(v) for v in args.dot.split("x"))
        for norm in (int(v) for v in args.norm.split(",")):
            rstd_last = args.rstd_last and norm > 0
            compiled = build_dot(norm, rstd_last, bn, bk, warps, stages)
            print(f"dot norm {norm} rstd_last {rstd_last}", args.dot, analyse(compiled), flush=True)
            if args.ir:
                stem = Path(args.ir) / f"dot_norm{norm}{'_last' if rstd_last else ''}_{args.dot}"
                stem.parent.mkdir(parents=True, exist_ok=True)
                Path(f"{stem}.ttgir").write_text(compiled.asm["ttgir"])
                Path(f"{stem}.sass").write_text(sass_of(compiled))
        return
    scale = args.scale if args.scale is not None else (0 if args.dtype == "bf16" else 2)
    for cfg in args.configs.split(","):
        bn, row_bytes, warps, stages = (int(v) for v in cfg.split("x"))
        print(args.dtype, f"scale {scale}", "fp16 form" if args.f16 else "", cfg,
              analyse(build(args.dtype, scale, bn, row_bytes, warps, stages, args.f16)), flush=True)


if __name__ == "__main__":
    main()
