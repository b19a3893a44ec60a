"""The FP8 prefill kernels (hf_tp/kernels/fp8_triton.py) built for sm_90 on a host without a GPU, beside the times a
GPU measured for the same tiles: registers, spills, which MMA runs, and whether ptxas serialized the warp-group
MMAs (its C7515 note) or the K loop waits for them.

  python benchmarks/prefill_sass.py SWEEP.json [--rows gate_up@2048,qkv@128]

SWEEP.json is benchmarks/fp8_prefill.py's output (its "tiles" per row; the weight-once kernel's sweep, block
scales). Columns: µs and TFLOPs as measured; regs; spill bytes; "serialized": ptxas -v said C7515 (the MMAs wait
one for another); "GMMA": warp-group MMA instructions (HGMMA bf16/fp16, QGMMA FP8); "wait0": how many
``WARPGROUP.DEPBAR.LE gsb0, 0x0`` lie inside a loop (0: the MMAs stay in flight across K steps; one per MMA: each
waits for the last). Uses the Triton installed here and its bundled ptxas; build with the GPU image's Triton (3.6) to
predict what the GPU ran (pip install triton==3.6.0 into a separate venv).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from hf_tp.kernels import fp8_triton as ft

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
# int arguments a real launch marks 16-divisible (Triton specializes them), so that the build matches
DIV16 = {"N", "K", "group_k", "stride_xm", "stride_wn", "stride_sn", "stride_om", "stride_qm", "stride_qsg",
         "stride_stg", "stride_qt", "stride_qst"}
W16 = dict(x_ptr="*bf16", w_ptr="*fp8e4nv", s_ptr="*fp32", b_ptr="*bf16", o_ptr="*bf16")


def build_facts(kernel, pointers: dict, constexprs: dict, warps: int, stages: int) -> dict:
    names = list(kernel.arg_names)
    signature = {n: "constexpr" if n in constexprs else pointers[n] if n.endswith("_ptr") else "i32" for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n.endswith("_ptr") or n in DIV16}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=warps, num_stages=stages))
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = Path(tmp, "k.ptx"), Path(tmp, "k.cubin")
        ptx.write_text(compiled.asm["ptx"])
        notes = subprocess.run([str(BIN / "ptxas"), "-arch=sm_90a", "-v", str(ptx), "-o", str(Path(tmp, "v.cubin"))],
                               capture_output=True, text=True).stderr
        cubin.write_bytes(compiled.asm["cubin"])
        sass = subprocess.run([str(BIN / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True).stdout
    return {"regs": int(re.search(r"Used (\d+) registers", notes).group(1)),
            "spill": int(re.search(r"(\d+) bytes spill stores", notes).group(1)),
            "serialized": "C7515" in notes, "gmma": sass.count("HGMMA") + sass.count("QGMMA"),
            "wait0": loop_waits(sass)}


def loop_waits(sass: str) -> int:
    """``WARPGROUP.DEPBAR.LE gsb0, 0x0`` inside loops (between a backward branch and its target): 0 when the MMAs
    stay in flight across K steps."""
    code = [(int(a, 16), text) for a, text in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = [(int(target, 16), addr) for addr, text in code
             for target in re.findall(r"BRA (?:`\(\.L_x_\d+\) )?0x([0-9a-f]+)", text) if int(target, 16) < addr]
    return sum(1 for addr, text in code if "WARPGROUP.DEPBAR.LE gsb0, 0x0" in text
               and any(lo <= addr <= hi for lo, hi in loops))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep")
    ap.add_argument("--rows", default="gate_up@2048,gate_up@128", help="GEMM@M rows of the sweep to build")
    args = ap.parse_args()
    data = json.loads(Path(args.sweep).read_text())
    want = set(args.rows.split(","))
    print(f"Triton {triton.__version__}")
    for row in data["rows"]:
        if f'{row["gemm"]}@{row["M"]}' not in want:
            continue
        flop = 2 * row["M"] * row["N"] * row["K"]
        print(f'== {row["gemm"]} M={row["M"]}: bf16 {row["bf16"]} us ({flop / row["bf16"] / 1e6:.0f} TFLOPs), '
              f'dequantize + cuBLAS {row["dequant"]} us')
        for tile in sorted((t for t in row["tiles"] if "us" in t and "W_LEFT" in t), key=lambda t: t["us"]):
            constexprs = dict(SCALE_LAST=False, HAS_BIAS=False, EVEN_K=True, BLOCK_M=tile["BLOCK_M"],
                              BLOCK_N=tile["BLOCK_N"], BLOCK_K=tile["BLOCK_K"], GROUP_N=tile["GROUP_N"],
                              W_LEFT=tile["W_LEFT"])
            f = build_facts(ft._prefill, W16, constexprs, tile["num_warps"], tile["num_stages"])
            print(f'{tile["BLOCK_M"]:4d}x{tile["BLOCK_N"]:<4d} k{tile["BLOCK_K"]:<4d} w{tile["num_warps"]}s{tile["num_stages"]} '
                  f'{"W@x^T" if tile["W_LEFT"] else "x@W^T"} {tile["us"]:8.2f} us {flop / tile["us"] / 1e6:5.0f} TFLOPs | '
                  f'regs {f["regs"]:3d} spill {f["spill"]:4d} serialized {int(f["serialized"])} GMMA {f["gmma"]:3d} '
                  f'wait0 {f["wait0"]:3d}', flush=True)


if __name__ == "__main__":
    main()
