"""hf_tp's skinny-M decode GEMM (hf_tp/kernels/gemv_triton.py, TPConfig.decode_gemm="triton") against the
reference computation, and the decode loop with it on against Transformers.

- CPU: the kernels in Triton's interpreter (TRITON_INTERPRET=1, read when a kernel is defined, so in spawned
  processes), on tiny shapes: M 1..3 and 17, K not a multiple of BLOCK_K, N not a multiple of BLOCK_N, with and
  without a split of K, bias, fp32 output; the same call twice gives the same bits. Then the decode loop with
  the option on, tiny Llama at tp 1 and tp 2 (gloo): the greedy tokens are Transformers'.
- GPU (``gpu``): Llama-3-8B's decode widths at tp 1/2/4/8 in bf16, M 1..16, against F.linear in fp32; the same
  bits on a second call; the op inside torch.compile and a CUDA graph; the decode loop's tokens on a tiny Llama;
  and benchmarks/gpu_check.py's bf16 check (SmolLM2's geometry, two gloo ranks on one GPU) with the option on.

Tolerance on bf16: relative L2 error against fp32 under 5e-3 (the output's bf16 rounding alone gives about
1.5e-3; a wrong K-step or a dropped split gives > 1e-1); fp32 output: 1e-5 (summation order only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import capture_graph, load_reference, run_ranks, run_script, save_tiny_model, tiny_config
from hf_tp.config import TPConfig

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------ CPU: kernels

_INTERPRET_SCRIPT = r"""
import json, sys, torch
from hf_tp.kernels import gemv_triton as gt
cases = json.loads(sys.argv[1])
rows = []
for M, N, K, path, dtype, bias, fp32_out, config in cases:
    g = torch.Generator().manual_seed(M * 1000 + N + K)
    dt = getattr(torch, dtype)
    x = torch.randn(M, K, generator=g).to(dt)
    w = (torch.randn(N, K, generator=g) * 0.1).to(dt)
    b = torch.randn(N, generator=g).to(dt) if bias else None
    out_dtype = torch.float32 if fp32_out else None
    out = gt.launch(x, w, None, 0, 0, b, out_dtype=out_dtype, config=config, path=path)
    again = gt.launch(x, w, None, 0, 0, b, out_dtype=out_dtype, config=config, path=path)
    ref = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    err = ((out.double() - ref).norm() / ref.norm()).item()
    rows.append(dict(err=err, dtype=str(out.dtype), shape=list(out.shape), same_bits=torch.equal(out, again)))
print(json.dumps(rows))
"""

# (M, N, K, path, dtype, bias, fp32 out, config). The tl.dot kernel runs with fp16 and fp32 only here: the
# interpreter of triton 3.9 computes bf16 tl.dot wrongly on CPU (tests/test_fp8_kernel.py); bf16 is checked on
# the GPU.
_CASES = [
    (1, 20, 48, "gemv", "float32", True, False, {"BLOCK_N": 8, "BLOCK_K": 16}),          # N tail, K = 3 steps
    (1, 24, 100, "gemv", "float32", False, False, {"BLOCK_N": 8, "BLOCK_K": 32}),        # K tail
    (1, 20, 300, "gemv", "float32", True, False, {"BLOCK_N": 8, "BLOCK_K": 64, "SPLIT": 3}),  # split, K tail
    (1, 20, 300, "gemv", "bfloat16", True, False, {"BLOCK_N": 4, "BLOCK_K": 64, "SPLIT": 2}),
    (1, 20, 300, "gemv", "bfloat16", True, True, {"BLOCK_N": 16, "BLOCK_K": 128, "num_stages": 3}),
    (1, 40, 72, "gemv", "float16", False, True, None),                                    # the shipped rule
    (1, 20, 300, "gemv", "float32", True, False, {"BLOCK_N": 8, "BLOCK_K": 64, "num_stages": 0}),  # prefetch
    (1, 20, 320, "gemv", "bfloat16", False, False, {"BLOCK_N": 4, "BLOCK_K": 64, "num_stages": 0, "SPLIT": 2}),
    (1, 20, 300, "dot", "float16", True, False, {"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT": 2}),  # M = 1 by tl.dot
    (2, 20, 48, "dot", "float32", True, False, {"BLOCK_N": 16, "BLOCK_K": 16}),
    (3, 20, 300, "dot", "float16", True, False, {"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT": 2}),
    (3, 20, 300, "dot", "float16", False, True, {"BLOCK_N": 32, "BLOCK_K": 128, "SPLIT": 4}),
    (17, 20, 100, "dot", "float32", True, True, {"BLOCK_N": 16, "BLOCK_K": 32}),        # two row blocks of 16
    (2, 40, 72, None, "float32", True, False, None),                                      # the shipped rule
    (1, 6200, 40, None, "float16", False, False, None),   # the rule's tl.dot at M = 1 (16-bit, N >= 6144), N tail
    (2, 6200, 40, None, "float32", False, True, None),    # the rule's fp32 tl.dot (32-row tiles, 3 stages)
]


def _interpreter_env() -> dict:
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)


def test_kernels_in_interpreter():
    pytest.importorskip("triton")
    out = run_script(_INTERPRET_SCRIPT, json.dumps(_CASES), env=_interpreter_env())
    rows = json.loads(out.strip().splitlines()[-1])
    for case, row in zip(_CASES, rows):
        M, N, K, _, dtype, _, fp32_out, _ = case
        assert row["shape"] == [M, N], (case, row)
        assert row["dtype"] == ("torch.float32" if fp32_out else f"torch.{dtype}"), (case, row)
        tol = 1e-6 if dtype == "float32" or fp32_out else 5e-3
        assert row["err"] < tol, (case, row)
        assert row["same_bits"], (case, row)


# ------------------------------------------------------------------------------------------------ CPU: sm_90 build

# as launches specialize (the FP8 prefill kernels' strides too: tests/test_fp8_kernel.py builds them)
_DIV16 = {"N", "K", "k_split", "stride_wn", "stride_os", "stride_xm", "stride_om", "MN", "stride_qm", "stride_qt",
          "stride_qst", "stride_qsg", "stride_stg"}


def _hopper_build(kernel, pointers: dict, constexprs: dict, num_warps: int, num_stages: int,
                  floats: tuple[str, ...] = ("eps",)):
    """``kernel`` compiled for sm_90 by Triton's own ptxas, without a GPU; arguments typed as a real launch
    types them (pointers and 16-divisible ints marked so; ``floats`` fp32, other scalars i32). Returns
    (registers, stack bytes, SASS) when cuobjdump is there, else None."""
    import shutil
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(kernel.arg_names)
    # constexprs a launch leaves at their defaults are constants there too, not run-time ints
    constexprs = {**{p.name: p.default for p in kernel.params if p.is_constexpr and p.has_default}, **constexprs}
    signature = {n: "constexpr" if n in constexprs else pointers[n] if n.endswith("_ptr") else "fp32" if n in floats
                 else "i32" for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n.endswith("_ptr") or n in _DIV16}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                              # multiply-add fused, as in Triton's launches up to 3.9 (3.10 turns the default off)
                              options=dict(num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=True))
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        tool = shutil.which("cuobjdump")
        if tool is None:
            return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True).stdout
    import re

    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    return int(regs), int(stack), sass


def test_kernels_compile_for_hopper():
    """Every kernel variant the layers and the FP8 path launch, built for sm_90 on this CPU host: no spills,
    and the GEMV's weight loads are 16-byte vectors (LDG.E.128). Catches what the interpreter cannot (layouts,
    register use) before a GPU sees the code."""
    triton = pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"this Triton cannot build for NVIDIA GPUs here: {exc}")
    from hf_tp.kernels import gemv_triton as gt

    gemv_base = dict(GROUP_SHIFT=-1, SPLIT=False, FOLD=False, HAS_BIAS=False, EVEN_N=True, EVEN_K=True)
    dense = {"x_ptr": "*bf16", "x16_ptr": "*fp16", "w_ptr": "*bf16", "s_ptr": "*bf16", "b_ptr": "*bf16",
             "o_ptr": "*bf16", "f_ptr": "*bf16", "c_ptr": "*i32", "r_ptr": "*bf16", "nw_ptr": "*bf16", "h_ptr": "*bf16",
             "xn_ptr": "*bf16"}
    fp8 = dict(dense, w_ptr="*fp8e4nv", s_ptr="*fp32")
    cases = [  # (name, kernel, pointers, constexprs, warps, stages)
        ("gemv bf16", gt._gemv_kernel, dense, dict(gemv_base, SCALE=0, BLOCK_N=8, NV=64, VEC=8, STAGES=1), 4, 1),
        ("gemv bf16 prefetch, fp32 out, split", gt._gemv_kernel, dict(dense, o_ptr="*fp32"),
         dict(gemv_base, SCALE=0, SPLIT=True, BLOCK_N=8, NV=64, VEC=8, STAGES=0), 4, 1),
        ("gemv bf16 pipelined", gt._gemv_kernel, dense, dict(gemv_base, SCALE=0, BLOCK_N=8, NV=64, VEC=8, STAGES=3),
         4, 3),
        ("gemv fp8 block", gt._gemv_kernel, fp8,
         dict(gemv_base, SCALE=2, GROUP_SHIFT=7, BLOCK_N=8, NV=64, VEC=16, STAGES=1), 4, 1),
        ("gemv fp8 channel", gt._gemv_kernel, fp8, dict(gemv_base, SCALE=1, BLOCK_N=8, NV=64, VEC=16, STAGES=1), 4, 1),
        ("gemv fp8 unaligned, tails, bias", gt._gemv_kernel, fp8,
         dict(gemv_base, SCALE=3, HAS_BIAS=True, EVEN_N=False, EVEN_K=False, BLOCK_N=8, NV=64, VEC=16, STAGES=1), 4, 1),
        ("dot bf16 split", gt._gemv_dot_kernel, dict(dense, o_ptr="*fp32"),
         dict(SCALE=0, SPLIT=True, FOLD=False, HAS_BIAS=False, EVEN_K=True, MMA=0, BLOCK_M=16, BLOCK_N=32, BLOCK_K=128), 4, 4),
        ("dot fp8 block", gt._gemv_dot_kernel, fp8,
         dict(SCALE=2, SPLIT=False, FOLD=False, HAS_BIAS=True, EVEN_K=True, MMA=0, BLOCK_M=16, BLOCK_N=32, BLOCK_K=128), 4, 4),
        ("dot fp8 block in fp16, its fp32 fallback", gt._gemv_dot_kernel, fp8,
         dict(SCALE=2, SPLIT=False, FOLD=False, HAS_BIAS=True, EVEN_K=True, MMA=1, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128), 4, 4),
        ("dot fp8 channel in fp16, split", gt._gemv_dot_kernel, dict(fp8, o_ptr="*fp32"),
         dict(SCALE=1, SPLIT=True, FOLD=False, HAS_BIAS=False, EVEN_K=True, MMA=1, BLOCK_M=16, BLOCK_N=64, BLOCK_K=256), 8, 3),
        # the GEMV's fp16 form (a GEMV config's "X16", FP8 per channel): packed fp16 FMAs in its loop
        ("gemv fp8 channel in fp16", gt._gemv_kernel, fp8,
         dict(gemv_base, SCALE=1, BLOCK_N=4, NV=64, VEC=16, STAGES=1, F16=True), 8, 1),
        ("gemv fp8 channel in fp16, registers' loop, split, tails", gt._gemv_kernel, dict(fp8, o_ptr="*fp32"),
         dict(gemv_base, SCALE=1, SPLIT=True, EVEN_N=False, EVEN_K=False, BLOCK_N=8, NV=64, VEC=16, STAGES=0,
              F16=True), 8, 1),
        ("gemv fp8 channel in fp16 glu epilogue, fp16 copy", gt._gemv_kernel, dict(fp8, f_ptr="*fp16"),
         dict(gemv_base, SCALE=1, BLOCK_N=4, NV=64, VEC=16, STAGES=3, GLU_OUT=True, GLU_OUT_F16=True, F16=True), 8, 3),
        ("gemv fp8 channel, split folded", gt._gemv_kernel, dict(fp8, o_ptr="*fp32"),
         dict(gemv_base, SCALE=1, SPLIT=True, FOLD=True, BLOCK_N=4, NV=64, VEC=16, STAGES=1), 8, 1),
        ("dot fp8 block in fp16, split folded", gt._gemv_dot_kernel, dict(fp8, o_ptr="*fp32"),
         dict(SCALE=2, SPLIT=True, FOLD=True, HAS_BIAS=True, EVEN_K=True, MMA=1, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128), 4, 5),
        ("dot fp8 unaligned", gt._gemv_dot_kernel, fp8,
         dict(SCALE=3, SPLIT=False, FOLD=False, HAS_BIAS=False, EVEN_K=False, MMA=0, BLOCK_M=64, BLOCK_N=32, BLOCK_K=128), 4, 3),
        # the rule's configs (gemv_triton.rule_config): 4 rows, 1 KB steps, 8 warps; tl.dot 64-row tiles, 5 stages
        ("gemv bf16 rule", gt._gemv_kernel, dense, dict(gemv_base, SCALE=0, BLOCK_N=4, NV=64, VEC=8, STAGES=1), 8, 1),
        ("gemv fp8 rule", gt._gemv_kernel, fp8,
         dict(gemv_base, SCALE=2, GROUP_SHIFT=7, BLOCK_N=4, NV=64, VEC=16, STAGES=1), 8, 1),
        ("dot bf16 rule, wide", gt._gemv_dot_kernel, dense,
         dict(SCALE=0, SPLIT=False, FOLD=False, HAS_BIAS=False, EVEN_K=True, MMA=0, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128), 4, 5),
        # silu(gate) * up made in the loads (TPConfig.gemm_prologues): the down projection's configs
        ("gemv bf16 rule, glu", gt._gemv_kernel, dense,
         dict(gemv_base, SCALE=0, BLOCK_N=4, NV=64, VEC=8, STAGES=1, GLU=True), 8, 1),
        ("gemv bf16 glu, tails, no pipeline", gt._gemv_kernel, dense,
         dict(gemv_base, SCALE=0, EVEN_N=False, EVEN_K=False, BLOCK_N=4, NV=64, VEC=8, STAGES=0, GLU=True), 8, 1),
        ("dot bf16 glu", gt._gemv_dot_kernel, dense,
         dict(SCALE=0, SPLIT=False, FOLD=False, HAS_BIAS=False, EVEN_K=True, MMA=0, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128,
              GLU=True), 4, 5),
        # silu(gate) * up made in the epilogue (TPConfig.gemm_epilogues): the gate/up GEMM's configs at tp 8 / tp 2
        ("gemv bf16 glu epilogue", gt._gemv_kernel, dense,
         dict(gemv_base, SCALE=0, BLOCK_N=4, NV=64, VEC=8, STAGES=1, GLU_OUT=True), 8, 1),
        ("dot bf16 glu epilogue", gt._gemv_dot_kernel, dense,
         dict(SCALE=0, SPLIT=False, FOLD=False, HAS_BIAS=False, EVEN_K=True, MMA=0, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128,
              GLU_OUT=True), 4, 3),
        # FP8 gate/up with the epilogue and its fp16 copy (prologue_pass.FP8_GLU_EPILOGUE): tp 1's GEMV, the rank of
        # tp 2's fp16 form (their measured configs)
        ("gemv fp8 channel glu epilogue, fp16 copy", gt._gemv_kernel, dict(fp8, f_ptr="*fp16"),
         dict(gemv_base, SCALE=1, BLOCK_N=4, NV=64, VEC=16, STAGES=1, GLU_OUT=True, GLU_OUT_F16=True), 8, 1),
        ("dot fp8 channel in fp16 glu epilogue, fp16 copy", gt._gemv_dot_kernel, dict(fp8, f_ptr="*fp16"),
         dict(SCALE=1, SPLIT=False, FOLD=False, HAS_BIAS=False, EVEN_K=True, MMA=1, BLOCK_M=16, BLOCK_N=64,
              BLOCK_K=128, GLU_OUT=True, GLU_OUT_F16=True), 4, 5),
        # the residual add + RMSNorm made in the loads (TPConfig.gemm_norms): the q/k/v GEMV of a rank of tp 8, the
        # gate/up GEMV with its epilogue, tl.dot at one row and at a 16-row tile; an MoE router's GEMV writing the
        # normalized x for the experts (KEEP_X)
        ("gemv bf16 norm", gt._gemv_kernel, dense,
         dict(gemv_base, SCALE=0, BLOCK_N=4, NV=256, VEC=8, STAGES=0, NORM=2, NORM_BLOCK=4096), 8, 1),
        ("gemv bf16 norm, router keeping x", gt._gemv_kernel, dense,
         dict(gemv_base, SCALE=0, BLOCK_N=4, NV=256, VEC=8, STAGES=0, NORM=2, NORM_BLOCK=2048, KEEP_X=True), 8, 1),
        ("gemv bf16 norm glu epilogue, tails", gt._gemv_kernel, dense,
         dict(gemv_base, SCALE=0, EVEN_N=False, EVEN_K=False, BLOCK_N=4, NV=64, VEC=8, STAGES=1, GLU_OUT=True, NORM=1,
              NORM_BLOCK=4096), 8, 1),
        ("dot bf16 norm, one row", gt._gemv_dot_kernel, dense,
         dict(SCALE=0, SPLIT=False, FOLD=False, HAS_BIAS=False, EVEN_K=True, MMA=0, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128,
              GLU_OUT=True, NORM=2, NORM_ROWS=1, NORM_BLOCK=4096), 4, 3),
        ("dot bf16 norm, 16 rows, split, keeping x", gt._gemv_dot_kernel, dict(dense, o_ptr="*fp32"),
         dict(SCALE=0, SPLIT=True, FOLD=False, HAS_BIAS=False, EVEN_K=True, MMA=0, BLOCK_M=16, BLOCK_N=32, BLOCK_K=128,
              NORM=2, NORM_ROWS=16, NORM_BLOCK=256, KEEP_X=True), 4, 3),
        # the statistic summed in the loop (RSTD_LAST, the launcher's choice for unsplit GEMMs without KEEP_X):
        # both GEMV loop forms, tl.dot at the 5 stages of q/k/v at tp 1 and with FP8 in fp16
        ("gemv bf16 norm, rstd last", gt._gemv_kernel, dense,
         dict(gemv_base, SCALE=0, BLOCK_N=4, NV=64, VEC=8, STAGES=1, NORM=2, RSTD_LAST=True), 8, 1),
        ("gemv bf16 norm, rstd last, registers' loop", gt._gemv_kernel, dense,
         dict(gemv_base, SCALE=0, BLOCK_N=4, NV=256, VEC=8, STAGES=0, NORM=2, RSTD_LAST=True), 8, 1),
        ("dot bf16 norm, rstd last, one row", gt._gemv_dot_kernel, dense,
         dict(SCALE=0, SPLIT=False, FOLD=False, HAS_BIAS=False, EVEN_K=True, MMA=0, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128,
              NORM=2, RSTD_LAST=True), 4, 5),
        ("dot bf16 norm, rstd last, glu epilogue", gt._gemv_dot_kernel, dense,
         dict(SCALE=0, SPLIT=False, FOLD=False, HAS_BIAS=False, EVEN_K=True, MMA=0, BLOCK_M=16, BLOCK_N=64, BLOCK_K=256,
              GLU_OUT=True, NORM=2, RSTD_LAST=True), 4, 3),
        ("dot fp8 block in fp16, norm, rstd last", gt._gemv_dot_kernel, fp8,
         dict(SCALE=2, SPLIT=False, FOLD=False, HAS_BIAS=False, EVEN_K=True, MMA=1, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128,
              NORM=2, RSTD_LAST=True), 4, 3),
        # the norm with FP8 weights: block scales in the GEMV, the fp16 form of tl.dot (fp16 x made from h)
        ("gemv fp8 block norm", gt._gemv_kernel, fp8,
         dict(gemv_base, SCALE=2, GROUP_SHIFT=7, BLOCK_N=4, NV=64, VEC=16, STAGES=1, NORM=2, NORM_BLOCK=4096), 8, 1),
        ("dot fp8 block in fp16, norm", gt._gemv_dot_kernel, fp8,
         dict(SCALE=2, SPLIT=False, FOLD=False, HAS_BIAS=False, EVEN_K=True, MMA=1, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128,
              NORM=2, NORM_ROWS=1, NORM_BLOCK=4096), 4, 3),  # the launcher's stages with the norm: at most 3
        ("split reduce", gt._gemv_split_reduce, {"ws_ptr": "*fp32", "s_ptr": "*fp32", "b_ptr": "*bf16", "o_ptr": "*bf16"},
         dict(SCALE=1, HAS_BIAS=True, BLOCK=1024), 4, 1),
        # programmatic dependent launch (hf_tp.kernels.pdl): the wait and the trigger in each kernel
        ("PDL gemv bf16", gt._gemv_kernel, dense, dict(gemv_base, SCALE=0, BLOCK_N=8, NV=64, VEC=8, STAGES=1, PDL=True),
         4, 1),
        ("PDL dot fp8 block in fp16, split", gt._gemv_dot_kernel, dict(fp8, o_ptr="*fp32"),
         dict(SCALE=2, SPLIT=True, FOLD=False, HAS_BIAS=False, EVEN_K=True, MMA=1, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128,
              PDL=True), 4, 4),
        # with the weights' first lines asked of L2 before the wait (gemv_triton.PREFETCH_WEIGHTS)
        ("PDL prefetch gemv bf16", gt._gemv_kernel, dense,
         dict(gemv_base, SCALE=0, BLOCK_N=8, NV=64, VEC=8, STAGES=1, PDL=True, PREFETCH=64, LINE=64), 4, 1),
        ("PDL prefetch dot fp8 block in fp16, split", gt._gemv_dot_kernel, dict(fp8, o_ptr="*fp32"),
         dict(SCALE=2, SPLIT=True, FOLD=False, HAS_BIAS=False, EVEN_K=True, MMA=1, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128,
              PDL=True, PREFETCH=32, LINE=128), 4, 4),
        ("PDL split reduce", gt._gemv_split_reduce,
         {"ws_ptr": "*fp32", "s_ptr": "*fp32", "b_ptr": "*bf16", "o_ptr": "*bf16"},
         dict(SCALE=0, HAS_BIAS=False, BLOCK=1024, PDL=True), 4, 1),
    ]
    for name, kernel, pointers, constexprs, warps, stages in cases:
        # ASTSource does not fill a constexpr's default in
        defaults = {"PDL": False, "PREFETCH": 0, "LINE": 64, "GLU": False, "GLU_OUT": False, "NORM": 0,
                    "NORM_ROWS": 1, "NORM_BLOCK": 16, "KEEP_X": False, "RSTD_LAST": False, "F16": False}
        constexprs = {**{k: v for k, v in defaults.items() if k in kernel.arg_names}, **constexprs}
        try:
            built = _hopper_build(kernel, pointers, constexprs, warps, stages)
        except (TypeError, AttributeError) as exc:  # another Triton's compile API: nothing to check here
            pytest.skip(f"Triton {triton.__version__}'s ASTSource/compile API differs: {exc}")
        if built is None:
            continue
        regs, stack, sass = built
        if name in ("dot bf16 glu", "dot bf16 norm, rstd last, one row"):
            # ptxas keeps one 8-byte value in local memory across the K loop (stored before it, reloaded after
            # it, seen in the SASS): allowed here, nothing more
            assert stack <= 8 and sass.count("STL") <= 1 and sass.count("LDL") <= 1, (name, regs, stack)
        else:
            assert stack == 0, (name, regs, stack)
        if name.startswith("gemv") and "unaligned" not in name:
            assert "LDG.E.128" in sass or "LDGSTS.E.BYPASS.128" in sass, name
        if constexprs.get("F16"):  # products and sums as packed fp16 FMAs, not widened to fp32
            assert "HFMA2" in sass, name
        # griddepcontrol.wait and .launch_dependents in SASS: only where PDL asks for them
        assert ("ACQBULK" in sass and "PREEXIT" in sass) is name.startswith("PDL"), name
        # prefetch.global.L2 (CCTL.E.PF2), all of them before the wait (ACQBULK)
        if name.startswith("PDL prefetch"):
            assert "CCTL.E.PF2" in sass and sass.rindex("CCTL.E.PF2") < sass.index("ACQBULK"), name
        else:
            assert "CCTL.E.PF2" not in sass, name


# ------------------------------------------------------------------------------------------------ CPU: the loop

_LLAMA = dict(hidden_size=72, num_attention_heads=9, num_key_value_heads=3)  # 72, 24 and 80 wide: no block fits


def _generate_with_kernel(folder: str, batches: list, new_tokens: int) -> dict:
    """On each rank (spawned with TRITON_INTERPRET=1): load with decode_gemm="triton", count the kernel's calls,
    generate greedily with hf_tp's decode loop."""
    import hf_tp
    from hf_tp.kernels import gemv_triton

    calls = []
    launch = gemv_triton.launch

    def counted(x2, *args, **kwargs):
        calls.append(x2.shape[0])
        return launch(x2, *args, **kwargs)

    gemv_triton.launch = counted
    tp_size = int(os.environ.get("WORLD_SIZE", "1"))
    config = TPConfig(fast_decode=True, fuse=True, decode_gemm="triton")
    if tp_size == 1:  # from_pretrained gives plain Transformers at tp 1: hf_tp's own model, a TP group of one
        from hf_tp.assembly import load_parallel_model
        from hf_tp.parallel.comm import TPGroup

        model = load_parallel_model(folder, TPGroup(0, 1, torch.device("cpu")), dtype=torch.float32, progress=False,
                                    tp_config=config)
    else:
        model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=tp_size, device="cpu", dtype=torch.float32,
                                                           tp_config=config)
    marked = sum(bool(getattr(m, "decode_gemm", False)) for m in model.modules())
    fused = model.model.layers[0].self_attn.q_proj.shared_input
    out = [model.generate(**batch, do_sample=False, max_new_tokens=new_tokens, pad_token_id=0) for batch in batches]
    from hf_tp.parallel.decode_gemm import LM_HEAD

    return dict(mode=model.hf_tp_config.decode_gemm, marked=marked, fused_marked=bool(fused and fused.decode_gemm),
                lm_head=LM_HEAD,
                rows_per_call=sorted(set(calls)), tokens=out)


def _batches() -> list[dict]:
    gen = torch.Generator().manual_seed(3)
    one = torch.randint(1, 101, (1, 7), generator=gen)
    two = torch.randint(1, 101, (2, 10), generator=gen)
    mask = torch.ones_like(two)
    two[1, :4], mask[1, :4] = 0, 0  # left padding
    return [{"input_ids": one, "attention_mask": torch.ones_like(one)}, {"input_ids": two, "attention_mask": mask}]


@pytest.mark.parametrize("tp_size", [1, 2])
def test_decode_loop_with_kernel_matches_transformers(tmp_path, tp_size):
    pytest.importorskip("triton")
    folder = str(save_tiny_model(tmp_path / "m", tiny_config("llama", **_LLAMA), seed=5))
    new_tokens = 6  # steps of 1 and 2 rows through the kernel; 12 took 15-19 s more per test (interpreted)
    batches = _batches()
    reference = load_reference(folder)
    with torch.no_grad():
        want = [reference.generate(**b, do_sample=False, max_new_tokens=new_tokens, pad_token_id=0) for b in batches]
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"  # inherited by the spawned ranks
    try:
        results = run_ranks(_generate_with_kernel, tp_size, folder, batches, new_tokens, timeout=600)
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old
    for rank, got in enumerate(results):
        assert got["mode"] == "triton"
        # per layer o and down (q/k/v and gate/up are fused groups, marked on the group), the LM head if enabled
        assert got["marked"] == 2 * 2 + int(got["lm_head"]) and got["fused_marked"], got["marked"]
        # decode steps of 1 and 2 rows, and the 7-token prompt (<= 16 tokens) went through the kernel
        assert {1, 2, 7} <= set(got["rows_per_call"]), got["rows_per_call"]
        for g, w in zip(got["tokens"], want):
            assert torch.equal(g, w), (rank, g.tolist(), w.tolist())


def test_decode_gemm_option_resolves_once():
    pytest.importorskip("triton")
    from hf_tp.config import DECODE_GEMM_DEFAULT

    assert TPConfig().resolve("cpu", 2, environ={}).decode_gemm == "cublas"
    assert TPConfig().resolve("cuda", 1, environ={}).decode_gemm == DECODE_GEMM_DEFAULT
    assert TPConfig(decode_gemm="cublas").resolve("cuda", 1, environ={}).decode_gemm == "cublas"
    assert TPConfig().resolve("cuda", 2, environ={"HF_TP_DECODE_GEMM": "triton"}).decode_gemm == "triton"
    assert TPConfig().resolve("cuda", 2, environ={"HF_TP_DECODE_GEMM": "cublas"}).decode_gemm == "cublas"
    assert TPConfig(decode_gemm="triton").resolve("cpu", 1, environ={"TRITON_INTERPRET": "1"}).decode_gemm == "triton"
    with pytest.raises(ValueError, match="need Triton on CUDA"):
        TPConfig(decode_gemm="triton").resolve("cpu", 1, environ={})
    with pytest.raises(ValueError, match="decode_gemm"):
        TPConfig(decode_gemm="fast")


def test_weight_prefetch_only_up_to_its_size_limit(monkeypatch):
    """gemv_triton.prefetch_lines: no prefetch unless PREFETCH_WEIGHTS; with PREFETCH_MAX_WEIGHT_BYTES, only the
    weights at most that large (the rank of tp 8's q/k/v, 6.3 MB, and not its gate/up, 29.4 MB); a program's
    whole K range, capped by PREFETCH_MAX_LINES over its rows."""
    pytest.importorskip("triton")
    from hf_tp.kernels import gemv_triton as gt

    qkv = torch.empty(768, 4096, dtype=torch.bfloat16, device="meta")
    gate_up = torch.empty(3584, 4096, dtype=torch.bfloat16, device="meta")
    fp8 = torch.empty(768, 4096, dtype=torch.float8_e4m3fn, device="meta")
    monkeypatch.setattr(gt, "PREFETCH_WEIGHTS", False)
    assert gt.prefetch_lines(qkv, 4096, 4) == 0
    monkeypatch.setattr(gt, "PREFETCH_WEIGHTS", True)
    monkeypatch.setattr(gt, "PREFETCH_MAX_WEIGHT_BYTES", None)
    assert (gt.prefetch_lines(qkv, 4096, 4), gt.prefetch_lines(gate_up, 4096, 4)) == (64, 64)  # 4096 x 2 B / 128
    assert gt.prefetch_lines(fp8, 4096, 4) == 32
    assert gt.prefetch_lines(qkv, 1024, 4) == 16  # a split of K: its own range only
    assert gt.prefetch_lines(qkv, 4096, 64) == gt.PREFETCH_MAX_LINES // 64
    monkeypatch.setattr(gt, "PREFETCH_MAX_WEIGHT_BYTES", 13 * 2**20)
    assert (gt.prefetch_lines(qkv, 4096, 4), gt.prefetch_lines(gate_up, 4096, 4)) == (64, 0)


def test_cpu_model_keeps_cublas_path(tmp_path):
    """Without the interpreter a CPU model resolves to "cublas" and no layer is marked."""
    from hf_tp.assembly import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    folder = save_tiny_model(tmp_path / "m", tiny_config("llama", **_LLAMA), max_shard_size=None)
    env = os.environ.pop("TRITON_INTERPRET", None)
    try:
        model = load_parallel_model(str(folder), TPGroup(0, 1, torch.device("cpu")), dtype=torch.float32,
                                    progress=False)
    finally:
        if env is not None:
            os.environ["TRITON_INTERPRET"] = env
    assert model.hf_tp_config.decode_gemm == "cublas"
    assert not any(getattr(m, "decode_gemm", False) for m in model.modules())


# ------------------------------------------------------------------------------------------------ GPU

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")

H, I, Q, KV, VOCAB = 4096, 14336, 4096, 1024, 128256


def llama8b_shapes(tp: int) -> list[tuple[str, int, int, bool]]:
    """(name, N, K, fp32 out) of one rank's decode GEMMs at ``tp``: row-parallel layers keep the fp32 sum at
    tp > 1 (TPConfig.reduce_fp32), the LM head returns fp32 logits."""
    return [("qkv", (Q + 2 * KV) // tp, H, False), ("o", H, Q // tp, tp > 1), ("gate_up", 2 * I // tp, H, False),
            ("down", H, I // tp, tp > 1), ("lm_head", -(-VOCAB // tp), H, True)]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_llama8b_widths_bf16(tp):
    from hf_tp.kernels.decode_gemm import decode_linear

    g = torch.Generator(device="cuda").manual_seed(tp)
    for name, N, K, fp32_out in llama8b_shapes(tp):
        w = (torch.randn(N, K, device="cuda", generator=g) * 0.02).bfloat16()
        for M in (1, 2, 8, 16):
            x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
            ref = torch.nn.functional.linear(x.float(), w.float())
            out = decode_linear(x, w, None, fp32_out)
            assert out.dtype == (torch.float32 if fp32_out else torch.bfloat16)
            err = ((out.float() - ref).norm() / ref.norm()).item()
            assert err < (1e-5 if fp32_out else 5e-3), (tp, name, M, err)
            assert torch.equal(out, decode_linear(x, w, None, fp32_out)), (tp, name, M, "not deterministic")
        del w


@pytest.mark.gpu
@needs_gpu
def test_bias_fp16_and_odd_shapes():
    from hf_tp.kernels.decode_gemm import decode_linear

    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for N, K in ((1000, 1392), (576, 576), (100, 4100)):
            w = (torch.randn(N, K, device="cuda", generator=g) * 0.05).to(dtype)
            b = torch.randn(N, device="cuda", generator=g).to(dtype)
            for M in (1, 3, 16):
                x = torch.randn(M, K, device="cuda", generator=g).to(dtype)
                ref = torch.nn.functional.linear(x.double(), w.double(), b.double())
                for fp32_out in (False, True):
                    out = decode_linear(x, w, b, fp32_out)
                    err = ((out.double() - ref).norm() / ref.norm()).item()
                    tol = 1e-5 if dtype == torch.float32 or fp32_out else 5e-3
                    assert err < tol, (dtype, N, K, M, fp32_out, err)


@pytest.mark.gpu
@needs_gpu
def test_compiled_and_graph_captured():
    """Inside torch.compile (Inductor, fullgraph) and a captured CUDA graph, replayed on new inputs."""
    from hf_tp.kernels.decode_gemm import decode_linear

    g = torch.Generator(device="cuda").manual_seed(1)
    w1 = (torch.randn(3072, 4096, device="cuda", generator=g) * 0.02).bfloat16()
    w2 = (torch.randn(4096, 3072, device="cuda", generator=g) * 0.02).bfloat16()

    def step(t):
        return decode_linear(torch.nn.functional.silu(decode_linear(t, w1)), w2, None, True)

    def ref(t):
        h = torch.nn.functional.linear(t.float(), w1.float()).bfloat16()
        return torch.nn.functional.linear(torch.nn.functional.silu(h).float(), w2.float())

    for M in (1, 4):
        fn = torch.compile(step, fullgraph=True, dynamic=False)
        static = torch.randn(M, 4096, device="cuda", generator=g).bfloat16()
        graph, out = capture_graph(fn, static)
        for _ in range(2):
            static.copy_(torch.randn(M, 4096, device="cuda", generator=g).bfloat16())
            graph.replay()
            expect = ref(static)
            assert ((out - expect).norm() / expect.norm()).item() < 1e-2


@pytest.mark.gpu
@needs_gpu
def test_gpu_decode_loop_with_kernel_matches_transformers(tmp_path):
    """hf_tp's compiled, graph-captured decode loop at tp 1 with decode_gemm="triton" (fp32 tiny Llama, batch 1
    and a left-padded batch of 2): Transformers' greedy tokens."""
    from hf_tp.assembly import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    folder = save_tiny_model(tmp_path / "m", tiny_config("llama", **_LLAMA))
    device = torch.device("cuda", 0)
    ours = load_parallel_model(str(folder), TPGroup(0, 1, device), dtype=torch.float32, progress=False,
                               tp_config=TPConfig(decode_gemm="triton", fast_decode=True))
    assert ours.hf_tp_config.decode_gemm == "triton"
    assert ours.model.layers[0].mlp.down_proj.decode_gemm
    ref = load_reference(folder).to(device)
    for batch in _batches():
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            want = ref.generate(**batch, do_sample=False, max_new_tokens=40, pad_token_id=0)
        got = ours.generate(**batch, do_sample=False, max_new_tokens=40, pad_token_id=0)
        assert torch.equal(got, want), (got.tolist(), want.tolist())
    assert ours._hf_tp_static_decoder.use_graphs and ours._hf_tp_static_decoder.sessions


@pytest.mark.gpu
@needs_gpu
def test_bf16_two_gloo_ranks_on_one_gpu_with_kernel(tmp_path):
    """benchmarks/gpu_check.py's bf16 criterion (noise floor, near-tie analysis) at tp 2 with decode_gemm="triton"
    on every rank (the documented environment override, inherited by the ranks), on a random bf16 checkpoint of
    SmolLM2's geometry (9 query / 3 KV heads, uneven at tp 2; the real SmolLM2 needs a package the GPU image
    lacks)."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tp-size", "2",
                           "--one-gpu-gloo", "--random-arch", "llama_uneven", "--new-tokens", "64", "--json",
                           str(out)],
                          env={**os.environ, "HF_TP_DECODE_GEMM": "triton"}, capture_output=True, text=True,
                          timeout=900)
    assert out.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["passed"], result["fail_reasons"]


@pytest.mark.gpu
@needs_gpu
def test_kernels_run_where_compiled_or_captured_only():
    """On CUDA a layer called eagerly outside hf_tp's decode loop (Transformers' generate: beam search and the
    other fallbacks) takes cuBLAS, whose launch costs less host time; inside the loop (eager or not), a compiled
    function and a captured graph take the kernel."""
    from hf_tp.kernels import gemv_triton
    from hf_tp.kernels.decode_gemm import decode_loop_calls, launch_context_pays
    from hf_tp.parallel.layers import dense_linear

    x = torch.randn(1, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)
    assert launch_context_pays(torch.zeros(1, 8))  # off CUDA: Triton's interpreter in the CPU tests
    calls = []
    launch = gemv_triton.launch

    def counted(*args, **kwargs):
        calls.append("captured" if torch.cuda.is_current_stream_capturing() else "run")
        return launch(*args, **kwargs)

    gemv_triton.launch = counted
    try:
        eager = dense_linear(x, w, None, False, True)
        assert not launch_context_pays(x) and calls == []
        with decode_loop_calls():
            in_loop = dense_linear(x, w, None, False, True)
        assert calls == ["run"] and not launch_context_pays(x)
        compiled = torch.compile(lambda a: dense_linear(a, w, None, False, True), fullgraph=True)(x)
        assert calls == ["run", "run"], calls  # the traced branch holds the kernel
        calls.clear()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = dense_linear(x, w, None, False, True)
        graph.replay()
        torch.cuda.synchronize()
    finally:
        gemv_triton.launch = launch
    assert calls == ["captured"]
    for out in (in_loop, compiled, captured):
        err = ((out.float() - eager.float()).norm() / eager.float().norm()).item()
        assert err < 5e-3, err


@pytest.mark.gpu
@needs_gpu
def test_programmatic_dependent_launch_gives_the_same_bits(monkeypatch):
    """hf_tp.kernels.pdl (TPConfig.pdl): each GEMM kernel waits for the kernel before it (gdc_wait) before touching
    memory, so a chain of them, an Inductor kernel between (compiled with Inductor's own PDL when on), gives the bits
    it gives without PDL: eagerly and replayed from a CUDA graph on new inputs, at M = 1 (the GEMV, one shape with a
    split of K and its reduce) and M = 4 (tl.dot)."""
    from hf_tp.kernels import pdl as pdl_module
    from hf_tp.kernels.decode_gemm import decode_linear

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs a Hopper or later GPU")
    g = torch.Generator(device="cuda").manual_seed(5)
    w1 = (torch.randn(3072, 4096, device="cuda", generator=g) * 0.02).bfloat16()
    w2 = (torch.randn(4096, 3072, device="cuda", generator=g) * 0.02).bfloat16()
    w3 = (torch.randn(256, 14336, device="cuda", generator=g) * 0.02).bfloat16()  # few rows, long K: split

    def step(t):
        h = decode_linear(torch.nn.functional.silu(decode_linear(t, w1)), w2)
        return decode_linear(h.repeat(1, 4)[:, :14336].contiguous(), w3, None, True)

    for M in (1, 4):
        inputs = [torch.randn(M, 4096, device="cuda", generator=g).bfloat16() for _ in range(3)]
        results = {}
        for pdl in (False, True):
            monkeypatch.setattr(pdl_module, "_ACTIVE", pdl)
            assert bool(pdl_module.launch_args(inputs[0].device)) is pdl, "this GPU and Triton should launch with PDL"
            eager = [step(x).clone() for x in inputs]
            torch._dynamo.reset()
            static = inputs[0].clone()
            with pdl_module.inductor_launching(pdl):  # as the decode loop does around each generate call
                graph, out = capture_graph(torch.compile(step, fullgraph=True, dynamic=False), static)
            replayed = []
            for x in inputs:
                static.copy_(x)
                graph.replay()
                replayed.append(out.clone())
            results[pdl] = (eager, replayed)
        for name, without, with_pdl in zip(("eager", "replayed"), results[False], results[True]):
            for a, b in zip(without, with_pdl):
                assert torch.equal(a, b), (M, name, float((a - b).abs().max()))
