"""fp8_linear (hf_tp/kernels/fp8.py, Triton in fp8_triton.py) against the float32 reference, on every scale
layout of the canonical form: 128-column block groups starting on or inside a block (k_offset != 0), and one
group per row (per-channel).

- CPU: the reference/fallback path (what CPU and pre-8.9 GPUs run), the custom op under torch.compile, the
  input checks, and the Triton kernels themselves in Triton's interpreter (TRITON_INTERPRET=1) on tiny shapes.
- GPU (marker ``gpu``): the compiled kernels at real widths, M in {1, 3, 16, 40} and the prefill path (200), then
  inside torch.compile and a CUDA graph, as hf_tp's decode loop runs them.

Tolerance: bf16 output of an fp32-accumulated product: relative L2 error against float32 under 5e-3 (bf16's
rounding alone gives about 1.5e-3; a wrong scale group or a dropped K-step gives > 1e-1).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import capture_graph, run_script
from hf_tp.kernels.fp8 import fp8_kernel_available, fp8_linear, fp8_linear_reference

ROOT = Path(__file__).resolve().parents[1]
TOL = 5e-3


def make(M, N, K, group_k, k_offset, dtype=torch.bfloat16, bias=True, device="cpu", seed=0):
    """Random canonical FP8 weight (every fp8 value range used), scales, x and bias."""
    g = torch.Generator().manual_seed(seed)
    G = (K - 1 + k_offset) // group_k + 1
    w = (torch.randn(N, K, generator=g) * 2).to(torch.float8_e4m3fn)
    s = torch.rand(N, G, generator=g) * 0.02 + 0.001
    x = torch.randn(M, K, generator=g).to(dtype)
    b = torch.randn(N, generator=g).to(dtype) if bias else None
    return [t.to(device) if t is not None else None for t in (x, w, s, b)]


def rel_err(out, x, w, s, group_k, k_offset, b):
    ref = fp8_linear_reference(x.float(), w, s, group_k, k_offset, None if b is None else b.float())
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    return ((out.float() - ref).norm() / ref.norm()).item()


# ------------------------------------------------------------------------------------------------ CPU

def test_cpu_path_is_the_reference():
    assert not fp8_kernel_available("cpu")
    for group_k, k_offset, K in ((128, 0, 300), (128, 77, 300), (300, 0, 300)):
        x, w, s, b = make(3, 40, K, group_k, k_offset)
        torch.testing.assert_close(fp8_linear(x, w, s, group_k, k_offset, b),
                                   fp8_linear_reference(x, w, s, group_k, k_offset, b), rtol=0, atol=0)
        assert rel_err(fp8_linear(x, w, s, group_k, k_offset, b), x, w, s, group_k, k_offset, b) < 1e-2


def test_cpu_custom_op_compiles():
    x, w, s, b = make(2, 24, 256, 128, 64)
    fn = torch.compile(lambda t: fp8_linear(t, w, s, 128, 64, b), fullgraph=True)
    x3 = x.reshape(1, 2, 256)
    torch.testing.assert_close(fn(x3), fp8_linear_reference(x3, w, s, 128, 64, b), rtol=0, atol=0)


def test_bad_input_raises():
    x, w, s, b = make(2, 24, 256, 128, 0)
    with pytest.raises(ValueError, match="features"):
        fp8_linear(x[:, :100], w, s, 128, 0)
    with pytest.raises(ValueError, match="groups per row"):
        fp8_linear(x, w, s[:, :1], 128, 0)  # two groups needed
    with pytest.raises(ValueError, match="groups per row"):
        fp8_linear(x, w, s, 128, 64)  # the offset pushes the last columns into a third group
    with pytest.raises(ValueError, match="bias"):
        fp8_linear(x, w, s, 128, 0, b[:3])


def test_device_tables_name_gpus_and_keep_callers_entries():
    """gemv_table.DEVICE_TABLES: a GPU's name picks its entries (an H100 SXM's, none for an H200, which TABLE was
    measured on); they go into the table over TABLE's own entries only, not over one a caller set; each entry is
    for one of TABLE's buckets and names a kernel."""
    from hf_tp.kernels import gemv_table
    from hf_tp.kernels import gemv_triton as gt

    assert gt.device_table_key("NVIDIA H100 80GB HBM3") == "H100 80GB HBM3"
    assert gt.device_table_key("NVIDIA H100 PCIe") == ""  # other memory, other speeds: TABLE's entries
    assert gt.device_table_key("NVIDIA H200") == "" and gt.device_table_key("cpu") == ""
    assert gt.use_device_table("cpu") == ""
    entries = gemv_table.DEVICE_TABLES["H100 80GB HBM3"]
    shipped, changed = sorted(entries)[:2]
    table = dict(gemv_table.TABLE)
    table[changed] = {"path": "gemv", "BLOCK_N": 8, "BLOCK_K": 512, "num_warps": 4, "num_stages": 1, "SPLIT": 1}
    caller = dict(table[changed])
    gt.put_device_entries(table, entries)
    assert table[shipped] == entries[shipped] != gemv_table.TABLE.get(shipped[:4])
    assert table[changed] == caller
    # a caller's entry for a shape (a key of four) is not hidden by a GPU entry for one layout of that shape
    layout_keys = [key for key in entries if len(key) == 5]
    if layout_keys:
        table = dict(gemv_table.TABLE)
        table[layout_keys[0][:4]] = caller
        gt.put_device_entries(table, entries)
        assert layout_keys[0] not in table and table[layout_keys[0][:4]] == caller
    for name, device_entries in gemv_table.DEVICE_TABLES.items():
        for (bucket, elem_bytes, N, K, *layout), config in device_entries.items():
            assert bucket in ("gemv", "dot") and elem_bytes in (1, 2) and N > 0 and K > 0, (name, bucket)
            assert layout in ([], ["channel"], ["block"]) and (not layout or elem_bytes == 1), (name, layout)
            assert config["path"] in ("gemv", "dot") and (bucket == "gemv" or config["path"] == "dot"), (name, config)


def test_fp8_entries_of_one_scale_layout_leave_the_other_to_table(monkeypatch):
    """An FP8 entry keyed with its scale layout ("channel" or "block") is the config for weights of that layout
    only; a weight of the other layout (and any shape without such an entry) takes TABLE's entry for the shape.
    Checked with the SXM H100's entries put in, through choose, as the kernels' launchers call it."""
    from hf_tp.kernels import gemv_table
    from hf_tp.kernels import gemv_triton as gt

    entries = gemv_table.DEVICE_TABLES["H100 80GB HBM3"]
    table = dict(gemv_table.TABLE)
    gt.put_device_entries(table, entries)
    monkeypatch.setattr(gt, "TABLE", table)
    by_layout = {}
    for (bucket, elem_bytes, N, K, *layout), config in entries.items():
        by_layout.setdefault((N, K), {})[layout[0] if layout else ""] = config
    assert any(len(configs) == 2 for configs in by_layout.values())  # a shape with an entry for each layout
    for (N, K), configs in by_layout.items():
        for layout in ("channel", "block"):
            path, config = gt.choose(1, N, K, 1, scales=layout)
            expected = configs.get(layout) or configs.get("") or gemv_table.TABLE.get(("gemv", 1, N, K))
            if expected is None:  # no TABLE entry for a block-scaled call: the rule's choice
                expected = gt.rule_config(path, N, K, 1, 1)
            assert dict(config, path=path) == dict(expected, path=path), (N, K, layout, config)
    assert gt.scale_layout(torch.ones(4, 1)) == "channel" and gt.scale_layout(torch.ones(4, 2)) == "block"
    assert gt.scale_layout(None) == ""


_INTERPRET_SCRIPT = r"""
import json, sys, torch
from hf_tp.kernels import fp8_triton as ft
from hf_tp.kernels.fp8 import fp8_linear_reference
sys.path.insert(0, sys.argv[1])
from test_fp8_kernel import make, rel_err
cases = json.loads(sys.argv[2])
errs = []
for M, N, K, group_k, k_offset, path, dtype, config in cases:
    x, w, s, b = make(M, N, K, group_k, k_offset, dtype=getattr(torch, dtype))
    if config and "X_SCALE" in config:  # activations beyond fp16's range
        config = dict(config)
        x = x * config.pop("X_SCALE")
    out = ft.launch(x, w, s, group_k, k_offset, b, config=config, path=path)
    errs.append(rel_err(out, x, w, s, group_k, k_offset, b))
print(json.dumps(errs))
"""

# (M, N, K, group_k, k_offset, path, dtype, config): each scale mode of each kernel, N and K tails included.
_INTERPRET_CASES = [
    (1, 16, 64, 64, 0, "gemv", "bfloat16", None),                       # per-channel: scale in the epilogue
    (1, 16, 64, 16, 0, "gemv", "bfloat16", {"BLOCK_K": 32}),            # two whole groups per step
    (1, 16, 128, 32, 16, "gemv", "bfloat16", {"BLOCK_K": 64}),          # offset: half-group steps
    (1, 20, 48, 16, 5, "gemv", "bfloat16", {"BLOCK_K": 32}),            # offset inside a group, tails
    (1, 20, 200, 48, 32, "gemv", "bfloat16", {"BLOCK_K": 64, "SPLIT": 2}),  # a group that is not a power of 2
    (1, 16, 512, 128, 0, "gemv", "bfloat16", {"BLOCK_K": 128, "num_stages": 0, "SPLIT": 2}),  # prefetch
    (1, 20, 48, 16, 5, "gemv", "bfloat16", {"BLOCK_K": 32, "num_stages": 0}),  # prefetch, per-element scales
    (1, 20, 300, 128, 64, "skinny", "float16", {"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT": 2}),  # M = 1 by tl.dot
    (3, 16, 64, 64, 0, "skinny", "float16", {"BLOCK_N": 16, "BLOCK_K": 32}),
    (3, 16, 64, 16, 0, "skinny", "float16", {"BLOCK_N": 16, "BLOCK_K": 32}),
    (17, 20, 48, 16, 5, "skinny", "float16", {"BLOCK_N": 16, "BLOCK_K": 32}),
    (5, 20, 48, 16, 5, "dequant", "bfloat16", None),
    # FP8 weights with bf16 activations multiplied in fp16 ("X16", the fp16 copy made by the launcher): block and
    # per-channel scales, M = 1, a split
    (1, 20, 512, 128, 0, "skinny", "bfloat16", {"X16": True, "BLOCK_N": 16, "BLOCK_K": 128, "SPLIT": 2}),
    (3, 40, 256, 256, 0, "skinny", "bfloat16", {"X16": True, "BLOCK_N": 32, "BLOCK_K": 128}),
    # |x| up to about 4e5, beyond fp16's 65504: the tile comes out inf and is computed again in fp32
    (2, 20, 256, 128, 0, "skinny", "bfloat16", {"X16": True, "BLOCK_N": 16, "BLOCK_K": 128, "X_SCALE": 1e5}),
    # the GEMV in fp16 (per channel): row and K tails, a split, the registers' loop, and |x| beyond fp16's range
    (1, 22, 576, 576, 0, "gemv", "bfloat16", {"X16": True, "BLOCK_N": 4, "BLOCK_K": 256, "SPLIT": 2}),
    (1, 16, 512, 512, 0, "gemv", "bfloat16", {"X16": True, "BLOCK_N": 8, "BLOCK_K": 128, "num_stages": 0}),
    (1, 20, 256, 256, 0, "gemv", "bfloat16", {"X16": True, "BLOCK_N": 4, "BLOCK_K": 128, "X_SCALE": 1e5}),
    # the shipped configs (gemv_triton.config_for), several row blocks of 16 in the tl.dot kernel
    (1, 20, 4096, 128, 0, "gemv", "bfloat16", None),
    (1, 20, 1392, 128, 37, "gemv", "bfloat16", None),
    (1, 20, 576, 576, 0, "gemv", "bfloat16", None),
    (40, 20, 256, 128, 64, "skinny", "float16", None),
    (40, 20, 200, 128, 37, "skinny", "float16", None),
    # the prefill kernel: M and N tiles in groups (a short last group), block scales cut by an offset, K tails;
    # per-channel scales applied to the sums and, as a choice, in the tile
    (70, 40, 200, 128, 37, "prefill", "float16", {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 64, "GROUP_N": 2}),
    (65, 20, 256, 64, 0, "prefill", "float16", {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 64, "GROUP_N": 4}),
    (65, 40, 96, 96, 0, "prefill", "float16", {"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_N": 2}),
    (65, 40, 96, 96, 0, "prefill", "float16", {"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 32, "SCALE_LAST": False}),
    (80, 20, 300, 128, 0, "prefill", "float16", None),
    (70, 40, 200, 128, 37, "prefill", "float16", {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 64, "W_LEFT": True}),
    (65, 40, 96, 96, 0, "prefill", "float16", {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "W_LEFT": True}),
]


def _interpret(script: str, cases: list, *extra: str, interpret: bool = True) -> list:
    """Run ``script`` (given this folder and the cases as JSON) under Triton's CPU interpreter in a fresh
    process (TRITON_INTERPRET is read when a kernel is defined), forked from the ranks' server (run_script), or
    compiled (``interpret=False``, on the GPU) in a new interpreter, which initializes CUDA itself; returns the
    JSON its last line prints."""
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("Triton is not installed")
    args = [str(ROOT / "tests"), json.dumps(cases), *extra]
    if interpret:
        out = run_script(script, *args, env=dict(os.environ, TRITON_INTERPRET="1"))
    else:
        path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=path))
        assert proc.returncode == 0, proc.stderr[-4000:]
        out = proc.stdout
    return json.loads(out.strip().splitlines()[-1])


def test_triton_kernels_in_interpreter():
    """The Triton kernels themselves, run by Triton's CPU interpreter.

    The tl.dot kernel runs here with fp16 activations only: the interpreter of triton 3.9 computes bf16 tl.dot
    wrongly on CPU (a plain 16x16 bf16 tl.dot differed from torch by 3e10), so its bf16 form is checked on the
    GPU only (test_kernel_matches_reference)."""
    errs = _interpret(_INTERPRET_SCRIPT, _INTERPRET_CASES)
    assert all(e < TOL for e in errs), list(zip(_INTERPRET_CASES, errs))


_F16_GEMV_SCRIPT = r"""
import json, sys, torch
from hf_tp.kernels import gemv_triton as gt
sys.path.insert(0, sys.argv[1])
from test_fp8_kernel import make
out = []
for N, K, config in json.loads(sys.argv[2]):
    x, w, s, _ = make(1, N, K, K, 0)
    got = gt.launch(x, w, s, K, 0, None, out_dtype=torch.float32, config=dict(config, path="gemv", X16=True))
    # the kernel's sums: per split of K, each column of a step summed in fp16 over the steps, then in fp32
    step, split = config["BLOCK_K"], config.get("SPLIT", 1)
    k_split = -(-K // split // step) * step
    x16, w16 = x[0].to(torch.float16), w.to(torch.float16)
    want = torch.zeros(N)
    for lo in range(0, K, k_split):
        acc = torch.zeros(N, step, dtype=torch.float16)
        for k0 in range(lo, min(lo + k_split, K), step):
            cols = slice(k0, min(k0 + step, K))
            width = cols.stop - cols.start
            acc[:, :width] = acc[:, :width] + w16[:, cols] * x16[cols]
        want += acc.float().sum(1)
    want = want * s[:, 0]
    fp32 = (w.float() * s) @ x[0].float()
    out.append([((got[0] - want).norm() / want.norm()).item(), ((got[0] - fp32).norm() / fp32.norm()).item(),
                ((want - fp32).norm() / fp32.norm()).item()])
print(json.dumps(out))
"""


def test_gemv_fp16_form_sums_in_fp16():
    """The GEMV's fp16 form ("X16" in a GEMV config, FP8 per channel) under Triton's interpreter, with fp32
    output so that the sums are seen unrounded: they are the fp16 sums the kernel's docstring states (each
    column of a step summed over the steps in fp16, then the columns in fp32), not the fp32 form's, and within
    the kernels' tolerance of the exact product."""
    cases = [(20, 512, {"BLOCK_N": 4, "BLOCK_K": 128}), (12, 1024, {"BLOCK_N": 4, "BLOCK_K": 128, "SPLIT": 2}),
             (8, 384, {"BLOCK_N": 8, "BLOCK_K": 128, "num_stages": 0}),
             (22, 576, {"BLOCK_N": 4, "BLOCK_K": 256, "SPLIT": 2})]  # row and K tails in a split
    for (N, K, config), (to_fp16_sums, to_fp32, fp16_sums_to_fp32) in zip(cases, _interpret(_F16_GEMV_SCRIPT, cases)):
        assert to_fp16_sums < 1e-6, (N, K, config, to_fp16_sums)
        # the fp16 sums differ from fp32 ones (so the check above tells the forms apart), within the tolerance
        assert 1e-5 < fp16_sums_to_fp32 < TOL and to_fp32 < TOL, (N, K, config, to_fp32, fp16_sums_to_fp32)


_W8A8_SCRIPT = r"""
import json, sys, torch
from hf_tp.kernels import fp8_triton as ft
from hf_tp.kernels.fp8 import group_index, dequantize
sys.path.insert(0, sys.argv[1])
from test_fp8_kernel import make
results = []
for M, N, K, group_k, k_offset, dtype, config in json.loads(sys.argv[2]):
    x, w, s, b = make(M, N, K, group_k, k_offset, dtype=getattr(torch, dtype), device=sys.argv[3])
    G = s.shape[1]
    gk, off = (group_k, k_offset) if G > 1 else (K, 0)
    groups = group_index(K, gk, off, device=x.device)
    q, qs = ft.quantize_groups(x, G, group_k, k_offset)
    xf = x.float()
    amax = torch.zeros(M, G, device=x.device).scatter_reduce(1, groups.expand(M, -1), xf.abs(), "amax")
    want = (xf / qs[:, groups]).clamp(-448, 448).to(torch.float8_e4m3fn)
    quant_err = int((q.float() != want.float()).sum())  # elements rounded otherwise than torch rounds them
    scale_err = ((qs - amax / 448).abs() / (amax / 448)).max().item()
    out = ft.launch(x, w, s, group_k, k_offset, b, config=config, path="prefill_fp8")
    ref = (q.float() * qs[:, groups]) @ dequantize(w, s, group_k, k_offset, torch.float32).t() + b.float()
    gemm_err = ((out.float() - ref).norm() / ref.norm()).item()
    results.append([quant_err, scale_err, gemm_err, bool(torch.isfinite(out).all())])
print(json.dumps(results))
"""

# (M, N, K, group_k, k_offset, dtype, config): FP8 activations (W8A8) at prefill sizes: block groups (two per
# row, K steps of 64 inside them, an offset of 64, K tails), per-channel (one group), N tiles in groups
_W8A8_CASES = [
    (70, 40, 256, 128, 0, "float16", {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 64, "GROUP_N": 2}),
    (65, 40, 96, 96, 0, "float16", {"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 32}),
    (20, 24, 200, 128, 64, "float16", {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 128}),
    (70, 40, 456, 128, 64, "float16", {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 64}),  # K tail over several groups
]


def _check_w8a8(results, exact_rounding: bool):
    for case, (quant_err, scale_err, gemm_err, finite) in zip(_W8A8_CASES, results):
        assert (quant_err == 0 or not exact_rounding) and scale_err < 1e-6 and gemm_err < 1e-3 and finite, (
            case, quant_err, scale_err, gemm_err)


def test_fp8_activation_kernels_in_interpreter():
    """The W8A8 prefill kernels (``fp8_triton.quantize_groups``, ``_prefill_fp8``) in Triton's interpreter: the
    scales are each group's amax / 448 and the GEMM the exact product of the FP8 activations and the dequantized
    weight. How x / scale rounds to FP8 is checked on the GPU only: the interpreter (triton 3.9) loses the carry
    when a value rounds up to a power of two (31.94 became 16, not 32)."""
    _check_w8a8(_interpret(_W8A8_SCRIPT, _W8A8_CASES, "cpu"), exact_rounding=False)


_SPLIT_SCRIPT = r"""
import json, sys, torch
from hf_tp.kernels import fp8_triton as ft
from hf_tp.kernels.fp8 import dequantize
sys.path.insert(0, sys.argv[1])
from test_fp8_kernel import make
results = []
for M, N, K, dtype, config in json.loads(sys.argv[2]):
    x, w, s, b = make(M, N, K, K, 0, dtype=getattr(torch, dtype), device=sys.argv[3])  # one group per row
    q, qs = ft.quantize_groups(x, 1, K, 0, terms=2)
    xf = x.float()
    first = q[0].float() * qs[0]
    # what term 1 left, with one rounding (as the GPU's fused multiply-add computes it; the interpreter rounds
    # the product first, about 1e-6 off)
    rest = (xf.double() - q[0].double() * qs[0].double()).float()
    want = [xf.abs().amax(1) / 448, rest.abs().amax(1) / 448]
    scale_err = [((qs[t, :, 0] - want[t]).abs() / want[t]).max().item() for t in (0, 1)]
    pair = first + q[1].float() * qs[1]
    pair_err = ((pair - xf).norm() / xf.norm()).item()  # the two terms against x itself
    out = ft.launch(x, w, s, K, 0, b, config=config, path="two_term")
    ref = pair @ dequantize(w, s, K, 0, torch.float32).t() + b.float()
    # against the output's own rounding: fp16 keeps 11 bits, bf16 8 (about 1.5e-3 relative L2 from rounding alone)
    gemm_err = ((out.float() - ref).norm() / ref.norm()).item() / (1e-3 if x.dtype == torch.float16 else 5e-3)
    # the dispatch: with its limits raised, fp8_triton.launch picks this path by itself, at decode and prefill sizes
    ft.DECODE_TWO_TERM_MAX_M, ft.PREFILL_TWO_TERM_MAX_M = ft.DOT_MAX_M, 1 << 20
    chosen = torch.equal(ft.launch(x, w, s, K, 0, b), ft.launch(x, w, s, K, 0, b, path="two_term"))
    ft.DECODE_TWO_TERM_MAX_M = ft.PREFILL_TWO_TERM_MAX_M = 0
    results.append([scale_err, pair_err, gemm_err, bool(torch.isfinite(out).all()) and chosen])
print(json.dumps(results))
"""

# (M, N, K, dtype, config): x as two FP8 terms, per-channel weights: M and N tails, K tails, tile groups
_SPLIT_CASES = [
    (70, 40, 256, "float16", {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 64, "GROUP_N": 2}),
    (65, 40, 200, "bfloat16", {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 64}),
    (33, 24, 96, "float16", None),
    (1, 40, 256, "float16", {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 64}),  # decode sizes (fp8_decode_split.py)
    (3, 40, 200, "bfloat16", {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64}),
    (70, 40, 256, "float16", {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 64, "PROMOTE": False}),  # FP8 accumulation
]


def _check_split(results, pair_bound: float):
    for case, (scale_err, pair_err, gemm_err, finite) in zip(_SPLIT_CASES, results):
        # scales: term 1's amax / 448 to fp32's rounding; term 2's within the interpreter's unfused residual.
        # gemm_err: the GEMM's error over its bound (1e-3 with fp16 output, TOL with bf16); finite: and the
        # dispatch chose the path once its limits were raised
        assert scale_err[0] < 1e-6 and scale_err[1] < 1e-5 and pair_err < pair_bound and gemm_err < 1 and finite, (
            case, scale_err, pair_err, gemm_err)


def test_two_term_activation_kernels_in_interpreter():
    """x as two FP8 terms (``quantize_groups(terms=2)``, ``launch(path="two_term")``) in Triton's interpreter:
    each term's scale is the amax / 448 of what it holds, the pair is close to x, and the GEMM is the exact
    product of the pair and the dequantized weight. The pair's bound is looser here (5e-3; measured 1.3-2.1e-3,
    one term alone 2.6e-2): the interpreter's FP8 rounding loses carries (test_fp8_activation_kernels_in_interpreter),
    which leaves the second term more to hold; on the GPU it must be within bf16's rounding
    (test_fp8_activation_kernels_on_gpu)."""
    _check_split(_interpret(_SPLIT_SCRIPT, _SPLIT_CASES, "cpu"), pair_bound=5e-3)


_FOLD_SCRIPT = r"""
import json, sys, torch
from hf_tp.kernels import gemv_triton as gt
sys.path.insert(0, sys.argv[1])
from test_fp8_kernel import make
results = []
# (M, N, K, group_k, dtype, scaled, bias, config): the GEMV and tl.dot kernels, FP8 block / per-channel and dense
for M, N, K, group_k, dtype, scaled, bias, config in json.loads(sys.argv[2]):
    x, w, s, b = make(M, N, K, group_k, 0, dtype=getattr(torch, dtype), bias=bias)
    if not scaled:  # dense weights in x's dtype
        w, s, group_k = (w.float() * 0.01).to(x.dtype), None, 0
    two = gt.launch(x, w, s, group_k, 0, b, config=dict(config, FOLD=False))
    runs = [gt.launch(x, w, s, group_k, 0, b, config=dict(config, FOLD=True)) for _ in range(2)]
    counters = gt._COUNTERS[x.device][-1]
    results.append([bool(torch.equal(two, r)) for r in runs] + [int(counters.abs().sum())])
# an fp16 copy given by the caller is what the fp16 form reads: zeros give the bias alone
x, w, s, b = make(3, 20, 256, 128, 0)
zero = gt.launch(x, w, s, 128, 0, b, config=dict(path="dot", BLOCK_N=16, BLOCK_K=128, X16=True),
                 x16=torch.zeros_like(x, dtype=torch.float16))
results.append(bool(torch.equal(zero, b.expand(3, -1))))
print(json.dumps(results))
"""

_FOLD_CASES = [
    (1, 20, 512, 128, "bfloat16", True, True, {"path": "gemv", "BLOCK_N": 4, "BLOCK_K": 128, "SPLIT": 4}),
    (1, 20, 512, 512, "bfloat16", True, True, {"path": "gemv", "BLOCK_N": 4, "BLOCK_K": 128, "SPLIT": 2}),
    (1, 24, 256, 256, "bfloat16", False, False, {"path": "gemv", "BLOCK_N": 8, "BLOCK_K": 64, "SPLIT": 2}),
    (3, 40, 256, 128, "float16", True, True, {"path": "dot", "BLOCK_N": 16, "BLOCK_K": 64, "SPLIT": 2}),
    (20, 20, 256, 256, "float16", True, False, {"path": "dot", "BLOCK_N": 16, "BLOCK_K": 64, "SPLIT": 4}),
    (2, 20, 256, 128, "bfloat16", True, True,
     {"path": "dot", "BLOCK_N": 16, "BLOCK_K": 128, "SPLIT": 2, "X16": True}),
]


def test_folded_split_sum_in_interpreter():
    """The split-K sum folded into the GEMM's last program (gemv_triton FOLD) gives the reduce kernel's bits, for
    the GEMV and the tl.dot kernels (several row blocks, fp16 form included), twice in a row; the counters are
    back to zero after each call."""
    results = _interpret(_FOLD_SCRIPT, _FOLD_CASES)
    assert results[:-1] == [[True, True, 0]] * len(_FOLD_CASES), list(zip(_FOLD_CASES, results))
    assert results[-1], "the fp16 form did not read the caller's fp16 copy"


_GLU_OUT_SCRIPT = r"""
import json, sys, torch
from hf_tp.kernels import gemv_triton as gt
from hf_tp.kernels.decode_gemm import glu_reference
from hf_tp.kernels.fp8 import fp8_linear_glu_out_reference
sys.path.insert(0, sys.argv[1])
from test_fp8_kernel import make
results = []
# (M, I, K, group_k, k_offset, dtype, bias, config): an FP8 [gate | up] GEMM (2I rows) with silu(gate) * up and its
# fp16 copy in the epilogue, against the same kernel unfused then glu_reference, and the fp32 reference
for M, I, K, group_k, k_offset, dtype, bias, config in json.loads(sys.argv[2]):
    x, w, s, b = make(M, 2 * I, K, group_k, k_offset, dtype=getattr(torch, dtype), bias=bias, seed=M + I + K)
    out16 = torch.empty(M, I, dtype=torch.float16)
    act = gt.launch(x, w, s, group_k, k_offset, b, config=config, glu_out=True, out16=out16)
    unfused = glu_reference(gt.launch(x, w, s, group_k, k_offset, b, config=dict(config, SPLIT=1)))
    ref, _ = fp8_linear_glu_out_reference(x.double(), w, s, group_k, k_offset, None if b is None else b.double())
    err = ((act.double() - ref).norm() / ref.norm()).item()
    results.append(dict(same_bits=bool(torch.equal(act, unfused)), copy=bool(torch.equal(out16, act.half())),
                        shape=list(act.shape), dtype=str(act.dtype), err=err))
errors = []
x, w, s, b = make(1, 8, 64, 64, 0)
for kwargs in (dict(out16=torch.empty(1, 4, dtype=torch.float16)),  # out16 without glu_out
               dict(glu_out=True, out16=torch.empty(1, 4, dtype=torch.bfloat16))):  # not fp16
    try:
        gt.launch(x, w, s, 64, 0, b, **kwargs)
        errors.append(None)
    except ValueError as exc:
        errors.append(str(exc))
results.append(errors)
print(json.dumps(results))
"""

# The GEMV (per channel, block, a slice starting inside a block) and tl.dot (17 rows; bf16 x in the fp16 form).
# fp16 activations for the bit comparison: the interpreter rounds to bf16 by truncation, torch to nearest.
_GLU_OUT_CASES = [
    (1, 20, 512, 512, 0, "float16", True, {"path": "gemv", "BLOCK_N": 4, "BLOCK_K": 128}),
    (1, 22, 256, 128, 0, "float16", False, {"path": "gemv", "BLOCK_N": 8, "BLOCK_K": 64, "SPLIT": 2}),
    (1, 20, 200, 128, 40, "float16", True, {"path": "gemv", "BLOCK_N": 4, "BLOCK_K": 64}),
    (17, 20, 256, 128, 0, "float16", False, {"path": "dot", "BLOCK_N": 16, "BLOCK_K": 128}),
    (3, 20, 200, 128, 40, "float16", True, {"path": "dot", "BLOCK_N": 32, "BLOCK_K": 64}),
    (1, 24, 256, 256, 0, "bfloat16", True, {"path": "dot", "BLOCK_N": 16, "BLOCK_K": 64, "X16": True}),
    (1, 20, 512, 512, 0, "bfloat16", True, {"path": "gemv", "BLOCK_N": 4, "BLOCK_K": 128}),
]


def test_fp8_glu_epilogue_in_interpreter():
    """``glu_out`` with FP8 weights (prologue_pass.FP8_GLU_EPILOGUE): silu(gate) * up made in the [gate | up]
    GEMM's epilogue is the unfused kernel's GEMM then ``glu_reference``, bit for bit (fp16 activations), for the
    GEMV and the tl.dot kernel, per-channel and block scales, a slice starting inside a block; with bf16
    activations (the fp16 form included) near the fp32 reference; its fp16 copy (``out16``) is the activation
    rounded to fp16. tests/test_gpu_fp8.py checks the bf16 bits on a GPU."""
    results = _interpret(_GLU_OUT_SCRIPT, _GLU_OUT_CASES)
    errors = results.pop()
    assert all(e is not None and "out16 is glu_out's fp16 copy" in e for e in errors), errors
    for case, row in zip(_GLU_OUT_CASES, results):
        assert row["shape"] == [case[0], case[1]] and row["dtype"] == f"torch.{case[5]}", (case, row)
        assert row["copy"], (case, row)
        if case[5] == "float16":
            assert row["same_bits"] and row["err"] < 5e-3, (case, row)
        else:  # the interpreter's truncating bf16 rounding, three times: a few units in the last place
            assert row["err"] < 3e-2, (case, row)


def test_prefill_kernels_compile_for_hopper():
    """The prefill kernels at their shipped tiles, built for sm_90 on this CPU host (test_decode_gemm's
    ``_hopper_build``): no spills, and the products on the warp-group MMA (HGMMA for the widened weight, QGMMA
    for FP8 x FP8), x as two FP8 terms included. The interpreter cannot see layouts or registers."""
    pytest.importorskip("triton")
    from test_decode_gemm import _hopper_build

    from hf_tp.kernels import fp8_triton as ft

    w16 = {"x_ptr": "*bf16", "w_ptr": "*fp8e4nv", "s_ptr": "*fp32", "b_ptr": "*bf16", "o_ptr": "*bf16"}
    w8a8 = {"q_ptr": "*fp8e4nv", "qs_ptr": "*fp32", "w_ptr": "*fp8e4nv", "st_ptr": "*fp32", "b_ptr": "*bf16",
            "o_ptr": "*bf16"}
    cases = []  # (name, kernel, pointers, constexprs, warps, stages, mma)
    for M, N, K in ((128, 6144, 4096), (128, 28672, 4096)):
        for scale_last in (True, False):
            cfg = ft.prefill_config(M, N, K, 1 if scale_last else K // 128)
            cases.append((f"prefill {M}x{N} scale_last={scale_last}", ft._prefill, w16,
                          dict(SCALE_LAST=scale_last, HAS_BIAS=True, EVEN_K=True, BLOCK_M=cfg["BLOCK_M"],
                               BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], GROUP_N=8, W_LEFT=False),
                          cfg["num_warps"], cfg["num_stages"], "HGMMA"))
    for M, N, G, terms, promote in ((128, 6144, 1, 1, False), (2048, 28672, 1, 1, False), (128, 6144, 32, 1, False),
                                    (512, 28672, 32, 1, False), (2048, 28672, 32, 1, False), (128, 6144, 1, 2, True),
                                    (512, 28672, 1, 2, True), (2048, 4096, 1, 2, True), (512, 28672, 1, 2, False),
                                    (1, 6144, 1, 2, True), (16, 28672, 1, 2, True)):  # the last two: decode sizes
        cfg = ft.prefill_fp8_config(M, N, G, terms)
        cases.append((f"W8A8 {M}x{N} G={G} terms={terms} promote={promote}", ft._prefill_fp8, w8a8,
                      dict(ONE_GROUP=G == 1, HAS_BIAS=False, EVEN_K=True, BLOCK_M=cfg["BLOCK_M"],
                           BLOCK_N=cfg["BLOCK_N"], BLOCK_K=128, GROUP_N=8, TWO_TERM=terms == 2, PROMOTE=promote),
                      cfg["num_warps"], cfg["num_stages"], "QGMMA"))
    quantize = {"x_ptr": "*bf16", "q_ptr": "*fp8e4nv", "qs_ptr": "*fp32"}
    for two in (False, True):
        cases.append((f"quantize two_term={two}", ft._quantize_groups, quantize, dict(BLOCK_K=1024, TWO_TERM=two), 4,
                      1, None))
    for name, kernel, pointers, constexprs, warps, stages, mma in cases:
        try:
            built = _hopper_build(kernel, pointers, constexprs, warps, stages)
        except (TypeError, AttributeError) as exc:  # another Triton's compile API: nothing to check here
            pytest.skip(f"this Triton's ASTSource/compile API differs: {exc}")
        if built is None:
            pytest.skip("no cuobjdump here")
        regs, stack, sass = built
        if name.startswith("prefill 128x28672 scale_last=False"):
            # Triton 3.9's ptxas keeps one value in local memory (8 bytes; stored before the K loop, loaded once per
            # step from L1; Triton 3.6, the GPU image's, spills nothing): allowed here, nothing more
            assert stack <= 8 and sass.count("STL") <= 1 and sass.count("LDL") <= 1, (name, regs, stack)
        elif "terms=2 promote=True" in name and constexprs["BLOCK_M"] * constexprs["BLOCK_N"] == 64 * 128:
            # two terms' 128 x 128 MMA tile with PROMOTE in 4 warps: 255 registers and 16 bytes on the stack
            # (Triton 3.6 and 3.9), yet the fastest tile of the eighteenth session's sweep at 512 and 2048 rows
            # (gate/up at 512: 272.6 us, the next 323.7; benchmarks/RESULTS.md): allowed that much, nothing more
            assert stack <= 16 and regs <= 255, (name, regs, stack)
        else:
            assert stack == 0, (name, regs, stack)
        assert mma is None or mma in sass, name


def test_traced_row_limit_matches_the_kernels():
    """fp8.fp8_linear decides the fp16 copy with its own copy of fp8_triton.DOT_MAX_M (no Triton import while
    tracing): they must agree."""
    pytest.importorskip("triton")
    from hf_tp.kernels import fp8 as fp8_module
    from hf_tp.kernels import fp8_triton

    assert fp8_module._DOT_MAX_M == fp8_triton.DOT_MAX_M


# ------------------------------------------------------------------------------------------------ GPU

needs_fp8_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and fp8_kernel_available("cuda")),
                                   reason="needs a CUDA GPU with compute capability >= 8.9 and Triton")

# (N, K, group_k, k_offset): block FP8 on and off the block grid (a tp slice starting inside a block), the 8B
# shape's o_proj width, and per-channel (one group spanning K), with N and K tails.
GPU_SHAPES = [(1024, 4096, 128, 0), (3072, 2048, 128, 64), (1000, 1392, 128, 37), (768, 4096, 4096, 0),
              (576, 576, 576, 0)]


@pytest.mark.gpu
@needs_fp8_gpu
@pytest.mark.parametrize("M", [1, 3, 16, 40, 200])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference(M, shape):
    N, K, group_k, k_offset = shape
    x, w, s, b = make(M, N, K, group_k, k_offset, device="cuda", seed=M + N)
    assert rel_err(fp8_linear(x, w, s, group_k, k_offset, b), x, w, s, group_k, k_offset, b) < TOL


@pytest.mark.gpu
@needs_fp8_gpu
@pytest.mark.parametrize("M", [65, 200, 600])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_prefill_kernel_matches_reference(M, shape):
    """The prefill kernel itself (whichever path fp8_linear picks at these sizes), bf16, with its own tiles, a
    narrow tile with K steps of 64, and per-channel scales applied in the tile instead of to the sums."""
    from hf_tp.kernels import fp8_triton

    N, K, group_k, k_offset = shape
    x, w, s, b = make(M, N, K, group_k, k_offset, device="cuda", seed=M + N)
    for config in (None, {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 64, "num_warps": 4}, {"SCALE_LAST": False},
                   {"W_LEFT": True}, {"W_LEFT": False}):
        out = fp8_triton.launch(x, w, s, group_k, k_offset, b, config=config, path="prefill")
        assert rel_err(out, x, w, s, group_k, k_offset, b) < TOL, config


@pytest.mark.gpu
@needs_fp8_gpu
def test_fp8_activation_kernels_on_gpu():
    """test_fp8_activation_kernels_in_interpreter's and test_two_term_activation_kernels_in_interpreter's cases
    compiled: there the FP8 activations round as torch rounds x / scale, and the shipped tiles at real widths
    stay close to the unquantized reference (block groups on and off the grid, per-channel); with two terms
    (Triton's kernel and cuBLAS's), as close as the weight-only kernels (TOL)."""
    _check_w8a8(_interpret(_W8A8_SCRIPT, _W8A8_CASES, "cuda", interpret=False), exact_rounding=True)
    # two terms: the pair within bf16's rounding of x (about 1.7e-3 relative L2 on Gaussian rows)
    _check_split(_interpret(_SPLIT_SCRIPT, _SPLIT_CASES, "cuda", interpret=False), pair_bound=1.5e-3)
    from hf_tp.kernels import fp8_triton

    for N, K, group_k, k_offset in GPU_SHAPES:
        x, w, s, b = make(300, N, K, group_k, k_offset, device="cuda", seed=N)
        if fp8_triton.fp8_step(s.shape[1], K, group_k, k_offset):
            out = fp8_triton.launch(x, w, s, group_k, k_offset, b, path="prefill_fp8")
            assert rel_err(out, x, w, s, group_k, k_offset, b) < 0.05, (N, K, group_k, k_offset)
        if s.shape[1] == 1:  # two terms: the weight-only path's tolerance
            for M in (65, 300, 1000):
                x, w, s, b = make(M, N, K, group_k, k_offset, device="cuda", seed=N + M)
                for path in ("two_term", "two_term_mm"):  # the Triton kernel, and cuBLAS on the stacked terms
                    out = fp8_triton.launch(x, w, s, group_k, k_offset, b, path=path)
                    assert rel_err(out, x, w, s, group_k, k_offset, b) < TOL, (path, M, N, K)


@pytest.mark.gpu
@needs_fp8_gpu
@pytest.mark.parametrize("M", [1, 16, 200])
def test_kernel_fp16_and_no_bias(M):
    """fp16 activations (output in fp16), and no bias, on the block layout that starts inside a block."""
    for dtype, bias in ((torch.float16, True), (torch.bfloat16, False)):
        x, w, s, b = make(M, 1000, 1392, 128, 37, dtype=dtype, bias=bias, device="cuda", seed=M)
        assert rel_err(fp8_linear(x, w, s, 128, 37, b), x, w, s, 128, 37, b) < TOL, (dtype, bias)


@pytest.mark.gpu
@needs_fp8_gpu
def test_compiled_and_graph_captured():
    """Inside torch.compile (Inductor, fullgraph) and a captured CUDA graph, replayed on new inputs."""
    x, w, s, b = make(4, 6144, 4096, 128, 0, device="cuda")
    w2, s2 = make(4, 4096, 6144, 128, 0, device="cuda", seed=1)[1:3]

    def step(t):
        return fp8_linear(torch.nn.functional.silu(fp8_linear(t, w, s, 128, 0, b)), w2, s2, 128, 0)

    def ref(t):
        h = fp8_linear_reference(t.float(), w, s, 128, 0, b.float()).to(t.dtype)
        return fp8_linear_reference(torch.nn.functional.silu(h).float(), w2, s2, 128, 0)

    for M in (1, 4):
        fn = torch.compile(step, fullgraph=True, dynamic=False)
        static = x[:M].clone()
        graph, out = capture_graph(fn, static)
        for seed in (5, 6):
            static.copy_(make(M, 1, 4096, 128, 0, device="cuda", seed=seed)[0])
            graph.replay()
            expect = ref(static)
            assert ((out.float() - expect).norm() / expect.norm()).item() < 1e-2


def _check_captured_equals_eager(x, w, s, group_k, b):
    """fp8_linear(x * 2) compiled and captured, where the caller makes the fp16 copy (fused by Inductor), gives the
    same bits on new inputs as eagerly, where the launcher makes it."""
    M, K = x.shape

    def step(t):  # t * 2 is exact in bf16, so Inductor's fp32 intermediate rounds to fp16 as bf16 does
        return fp8_linear(t * 2, w, s, group_k, 0, b)

    fn = torch.compile(step, fullgraph=True, dynamic=False)
    static = x.clone()
    graph, out = capture_graph(fn, static)
    for seed in (5, 6):
        static.copy_(make(M, 1, K, group_k, 0, device="cuda", seed=seed)[0])
        graph.replay()
        assert torch.equal(out, step(static)), (group_k, seed)


@pytest.mark.gpu
@needs_fp8_gpu
@pytest.mark.parametrize("M", [1, 8])
def test_fp16_form_at_its_measured_shapes(M):
    """A shape whose measured config multiplies bf16 activations in fp16 ("X16" in gemv_table.py), block and
    per-channel scales: against the reference; with |x| beyond fp16's range (the tile computed again in fp32);
    compiled and captured, where the caller makes the fp16 copy (fused by Inductor), the same bits as eagerly,
    where the launcher makes it."""
    from hf_tp.kernels import fp8_triton

    N, K = 14336, 4096
    for group_k in (128, K):
        x, w, s, b = make(M, N, K, group_k, 0, device="cuda", seed=M)
        assert fp8_triton.takes_fp16(M, N, K, s.shape[1], group_k, 0), "the table no longer names this shape"
        assert rel_err(fp8_linear(x, w, s, group_k, 0, b), x, w, s, group_k, 0, b) < TOL
        big = x * 1e5  # beyond 65504: inf in fp16
        assert rel_err(fp8_linear(big, w, s, group_k, 0, b), big, w, s, group_k, 0, b) < TOL
        _check_captured_equals_eager(x, w, s, group_k, b)
        # a dynamic-shape trace of a model (torch.compile(model, dynamic=True)): its parameters and int attributes
        # stay constants, so the copy is decided while tracing from the weight's shape, with a symbolic row count
        dyn = torch.compile(_Fp8Layer(w, s, group_k, b), fullgraph=True, dynamic=True)
        for rows in (M, M + 2):
            t = make(rows, 1, K, group_k, 0, device="cuda", seed=rows)[0]
            assert rel_err(dyn(t), t * 2, w, s, group_k, 0, b) < TOL, (group_k, rows)


@pytest.mark.gpu
@needs_fp8_gpu
def test_every_device_table_entry_on_gpu():
    """Each entry of gemv_table.DEVICE_TABLES (every GPU model's, whichever GPU runs this) at its own shape, with
    the scale layout its key names (per channel and block scales where it names none), bf16 activations: against the float32 reference, the same bits on a second
    call."""
    from hf_tp.kernels import gemv_table
    from hf_tp.kernels import gemv_triton as gt

    for name, entries in gemv_table.DEVICE_TABLES.items():
        for (bucket, elem_bytes, N, K, *layout), config in entries.items():
            if elem_bytes != 1:
                continue  # bf16 entries: tests/test_decode_gemm.py's widths run through the table
            M = 1 if bucket == "gemv" else 8
            for group_k in {"channel": (K,), "block": (128,)}.get(layout[0] if layout else "", (K, 128)):
                x, w, s, b = make(M, N, K, group_k, 0, device="cuda", seed=N + K)
                out = gt.launch(x, w, s, group_k, 0, b, config=config, path=config["path"])
                assert rel_err(out, x, w, s, group_k, 0, b) < TOL, (name, N, K, group_k, config)
                again = gt.launch(x, w, s, group_k, 0, b, config=config, path=config["path"])
                assert torch.equal(out, again), (name, N, K, group_k, config)


@pytest.mark.gpu
@needs_fp8_gpu
@pytest.mark.parametrize("config", [dict(BLOCK_N=4, BLOCK_K=1024, num_warps=8, num_stages=1, SPLIT=1),
                                    dict(BLOCK_N=8, BLOCK_K=1024, num_warps=8, num_stages=0, SPLIT=2),
                                    dict(BLOCK_N=4, BLOCK_K=2048, num_warps=4, num_stages=3, SPLIT=1)],
                         ids=["plain", "registers-split", "pipelined"])
def test_gemv_fp16_form_on_gpu(monkeypatch, config):
    """The GEMV's fp16 form (a GEMV entry with "X16", FP8 per channel) where the table names it: against the
    reference, not the fp32 form's sums (so it ran), within the tolerance with |x| beyond fp16's range (the tile
    computed again in fp32); compiled and captured, where the caller makes the fp16 copy, the same bits as
    eagerly."""
    from hf_tp.kernels import fp8_triton
    from hf_tp.kernels import gemv_triton as gt

    N, K = 4096, 4096
    gt.use_device_table("cuda")  # this GPU's entries first: the one set here stays (put_device_entries)
    entry = dict(config, path="gemv", X16=True)
    monkeypatch.setitem(gt.TABLE, ("gemv", 1, N, K, "channel"), entry)
    x, w, s, b = make(1, N, K, K, 0, device="cuda", seed=3)
    assert fp8_triton.takes_fp16(1, N, K, 1, K, 0)
    out = fp8_linear(x, w, s, K, 0, b)
    assert rel_err(out, x, w, s, K, 0, b) < TOL
    sums16 = gt.launch(x, w, s, K, 0, None, out_dtype=torch.float32, config=entry, path="gemv")
    sums32 = gt.launch(x, w, s, K, 0, None, out_dtype=torch.float32, config=dict(entry, X16=False), path="gemv")
    assert not torch.equal(sums16, sums32)
    assert ((sums16 - sums32).norm() / sums32.norm()).item() < 1e-3
    big = x * 1e5  # beyond 65504: inf in fp16
    assert rel_err(fp8_linear(big, w, s, K, 0, b), big, w, s, K, 0, b) < TOL
    _check_captured_equals_eager(x, w, s, K, b)


class _Fp8Layer(torch.nn.Module):
    """fp8_linear(x * 2) as a model's layer holds it: the weight and scales as parameters, group_k an attribute."""

    def __init__(self, weight, scale, group_k, bias):
        super().__init__()
        self.weight, self.scale = (torch.nn.Parameter(t, requires_grad=False) for t in (weight, scale))
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        self.group_k = group_k

    def forward(self, x):
        return fp8_linear(x * 2, self.weight, self.scale, self.group_k, 0, self.bias)


@pytest.mark.gpu
@needs_fp8_gpu
def test_folded_split_sum_on_gpu():
    """The split-K sum folded into the GEMM's last program (gemv_triton FOLD, counters reserved first) gives the
    reduce kernel's bits on the GPU: the GEMV and the tl.dot kernel (fp16 form, batch 8), inside a captured CUDA
    graph replayed 20 times; the counters are back to zero after."""
    from hf_tp.kernels import gemv_triton as gt

    counters = gt.reserve_counters("cuda")
    cases = [  # (M, N, K, group_k, config)
        (1, 4096, 7168, 128, dict(path="dot", BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=5, SPLIT=4, X16=True)),
        (1, 3072, 4096, 4096, dict(path="gemv", BLOCK_N=4, BLOCK_K=1024, num_warps=8, num_stages=1, SPLIT=4)),
        (8, 4096, 14336, 128, dict(path="dot", BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=3, SPLIT=8, X16=True)),
    ]
    for M, N, K, group_k, config in cases:
        x, w, s, b = make(M, N, K, group_k, 0, device="cuda", seed=M + N)
        expect = gt.launch(x, w, s, group_k, 0, b, config=dict(config, FOLD=False))
        static = x.clone()
        graph, out = capture_graph(
            lambda: gt.launch(static, w, s, group_k, 0, b, config=dict(config, FOLD=True)), warmup=2)
        for _ in range(20):
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(out, expect), config
        assert int(counters.abs().sum()) == 0


@pytest.mark.gpu
@needs_fp8_gpu
@pytest.mark.parametrize("tp", [1, 2])
def test_fp8_glu_epilogue_on_gpu(tp):
    """``glu_out`` with FP8 weights at the Llama-3-8B gate/up widths of tp 1 and the rank of tp 2 (I = 14336 / tp,
    K = 4096), per channel and block scales, batch 1 and 8, through the measured configs (TABLE's GEMV at tp 1, the
    fp16 form there on an SXM H100, whose DEVICE_TABLES entry replaces it; the fp16 form at the rank of tp 2): the activation is the unfused kernel's [gate | up] then ``glu_reference``, bit for
    bit, and ``out16`` its fp16 copy."""
    from hf_tp.kernels import gemv_triton as gt
    from hf_tp.kernels.decode_gemm import glu_reference

    inter = 14336 // tp
    for group_k in (4096, 128):
        for M in (1, 8):
            x, w, s, b = make(M, 2 * inter, 4096, group_k, 0, bias=False, device="cuda", seed=tp * 100 + M)
            path, cfg = gt.choose(M, 2 * inter, 4096, 1, gt.sm_count(x.device), scales=gt.scale_layout(s))
            out16 = torch.empty(M, inter, device="cuda", dtype=torch.float16)
            act = gt.launch(x, w, s, group_k, 0, None, glu_out=True, out16=out16)
            unfused = glu_reference(gt.launch(x, w, s, group_k, 0, None, config=dict(cfg, SPLIT=1), path=path))
            assert torch.equal(act, unfused), (tp, group_k, M, float((act.float() - unfused.float()).abs().max()))
            assert torch.equal(out16, act.half()), (tp, group_k, M)


@pytest.mark.gpu
@needs_fp8_gpu
def test_fp8_gemms_with_pdl_and_folded_sums_give_the_same_bits(monkeypatch):
    """FP8 layers get PDL at the rank of tp 2 (hf_tp.kernels.pdl.resolve_pdl): a chain of FP8 GEMMs as a decode
    layer runs them (the per-channel GEMV, the fp16 form with block scales and a split of K, the GEMV with a split)
    gives the same bits with PDL as without, and with the split-K sums folded into the GEMM (FOLD) as with the
    reduce kernel, eagerly and replayed from a CUDA graph on new inputs, at batch 1 and 8."""
    from hf_tp.kernels import gemv_triton as gt
    from hf_tp.kernels import pdl as pdl_module

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs a Hopper or later GPU")
    gt.reserve_counters("cuda")
    _, w1, s1, b1 = make(1, 7168, 4096, 4096, 0, device="cuda", seed=1)  # per channel: gate/up-like
    _, w2, s2, _ = make(1, 4096, 7168, 128, 0, device="cuda", seed=2)  # block scales: down-like
    _, w3, s3, _ = make(1, 3072, 4096, 4096, 0, device="cuda", seed=3)
    dot_split = dict(path="dot", BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=3, SPLIT=4, X16=True)
    gemv_split = dict(path="gemv", BLOCK_N=4, BLOCK_K=1024, num_warps=8, num_stages=1, SPLIT=4)

    def step(x, fold):
        h = gt.launch(x, w1, s1, 4096, 0, b1)
        h = gt.launch(torch.nn.functional.silu(h), w2, s2, 128, 0, None, config=dict(dot_split, FOLD=fold))
        last = gemv_split if x.shape[0] == 1 else dict(dot_split, X16=False)
        return gt.launch(h, w3, s3, 4096, 0, None, config=dict(last, FOLD=fold))

    for M in (1, 8):
        inputs = [make(M, 1, 4096, 4096, 0, device="cuda", seed=10 + i)[0] for i in range(3)]
        results = {}
        for pdl in (False, True):
            monkeypatch.setattr(pdl_module, "_ACTIVE", pdl)
            assert bool(pdl_module.launch_args(inputs[0].device)) is pdl, "this GPU and Triton should launch with PDL"
            for fold in (False, True):
                eager = [step(x, fold).clone() for x in inputs]
                static = inputs[0].clone()
                graph, out = capture_graph(lambda: step(static, fold), warmup=2)
                replayed = []
                for x in inputs:
                    static.copy_(x)
                    graph.replay()
                    replayed.append(out.clone())
                results[pdl, fold] = eager + replayed
        want = results[False, False]
        for key, got in results.items():
            for a, b in zip(want, got):
                assert torch.equal(a, b), (M, key, float((a.float() - b.float()).abs().max()))


@pytest.mark.gpu
@needs_fp8_gpu
@pytest.mark.parametrize("path", ["prefill", "dequant", "two_term", "prefill_fp8"])
def test_launch_cache_matches_tritons_dispatch(path):
    """hf_tp/kernels/launch_cache.py: a repeat launch goes to the compiled kernel's own launcher, and its output
    is bit-identical to Triton's usual dispatch, for each prefill path, at several row counts in turn, with x at
    an address that is not 16-byte aligned (another compiled form) and with and without a bias."""
    from hf_tp.kernels import fp8_triton, launch_cache

    N, K = 1392, 1024
    for M in (65, 128, 200):
        for aligned in (True, False):
            for bias in (True, False):
                x, w, s, b = make(M, N, K, K, 0, bias=bias, device="cuda", seed=M)
                if not aligned:
                    flat = torch.empty(M * K + 1, device="cuda", dtype=x.dtype)
                    x = flat[1:].view(M, K).copy_(x)
                    assert x.data_ptr() % 16 != 0
                launch_cache.ENABLED = False
                try:
                    want = fp8_triton.launch(x, w, s, K, 0, b, path=path)
                finally:
                    launch_cache.ENABLED = True
                for _ in range(2):  # the first call records the compiled kernel, the second launches it directly
                    got = fp8_triton.launch(x, w, s, K, 0, b, path=path)
                    torch.testing.assert_close(got, want, rtol=0, atol=0)
                assert rel_err(got, x, w, s, K, 0, b) < (0.05 if path == "prefill_fp8" else TOL)
    direct = [entry for entry in launch_cache._COMPILED.values() if entry is not launch_cache._SLOW]
    assert direct, "no compiled kernel could be launched directly: the cache saves nothing on this Triton"


@pytest.mark.gpu
@needs_fp8_gpu
def test_prefill_lane_repeats_the_full_paths_launch():
    """hf_tp/kernels/fp8.py: an eager prefill-size call keeps its bound launch on the weight (one per prompt
    shape), and a repeat call through it is bit-identical to the full path (checks, path choice, Triton's
    dispatch), at two prompt lengths in turn, 2-D and 3-D x, x not 16-byte aligned, with and without a bias and
    block scales cut by a tp slice; a call the lane does not fit (another shape, a strided x, the launch cache off)
    still takes the full path."""
    from hf_tp.kernels import fp8 as kernels
    from hf_tp.kernels import launch_cache

    N, K = 1392, 1024
    for group_k, k_offset in ((K, 0), (128, 64)):
        for bias in (True, False):
            _, w, s, b = make(8, N, K, group_k, k_offset, bias=bias, device="cuda", seed=group_k)
            for M, shape, aligned in ((128, (128, K), True), (100, (2, 50, K), True), (128, (128, K), False)):
                x = make(M, N, K, group_k, k_offset, device="cuda", seed=M)[0].view(shape)
                if not aligned:
                    flat = torch.empty(x.numel() + 1, device="cuda", dtype=x.dtype)
                    x = flat[1:].view(shape).copy_(x)
                launch_cache.ENABLED = False
                try:
                    want = kernels.fp8_linear(x, w, s, group_k, k_offset, b)
                finally:
                    launch_cache.ENABLED = True
                if shape == (128, K) and aligned:  # the weight's first calls: the cache off binds nothing
                    assert getattr(w, kernels._PREFILL_LANES, None) is None
                for _ in range(3):  # the first call binds the lane, the next two run through it
                    got = kernels.fp8_linear(x, w, s, group_k, k_offset, b)
                    torch.testing.assert_close(got, want, rtol=0, atol=0)
                    # allocated in x's leading shape, not viewed into it (the lane makes no view on either side)
                    assert got.shape == shape[:-1] + (N,) and got.is_contiguous() and got._base is None
                lanes = getattr(w, kernels._PREFILL_LANES)
                assert kernels._lane_key(x, w, s, group_k, k_offset, b, False) in lanes
                strided = torch.empty(shape[:-1] + (2 * K,), device="cuda", dtype=x.dtype)[..., :K].copy_(x)
                torch.testing.assert_close(kernels.fp8_linear(strided, w, s, group_k, k_offset, b), want, rtol=0, atol=0)
                assert kernels._lane_key(strided, w, s, group_k, k_offset, b, False) not in lanes
            assert len(lanes) == 3  # one per (shape, alignment)
            launch_cache.ENABLED = False
            try:  # a bound lane with the cache off takes Triton's dispatch, as launch_cache.launch does
                torch.testing.assert_close(kernels.fp8_linear(x, w, s, group_k, k_offset, b), want, rtol=0, atol=0)
            finally:
                launch_cache.ENABLED = True


def test_fp16_copy_decision_stays_a_constant_of_the_trace():
    """hf_tp.kernels.fp8 marks ``_fp16_copy_wanted`` as torch.compiler.assume_constant_result would, without
    importing torch._dynamo at `import hf_tp`: the decorator must still only set what hf_tp sets (else a
    dynamic-shape trace of an FP8 model would trace into the decision)."""
    import subprocess
    import sys

    from hf_tp.kernels import fp8

    def probe():
        return None

    marks = set(vars(torch.compiler.assume_constant_result(probe)))
    assert marks and all(getattr(fp8._fp16_copy_wanted, name, None) == getattr(probe, name) for name in marks), marks
    # and `import hf_tp` alone (a notebook, the CLI, a spawned driver) does not pay for torch._dynamo
    code = "import sys, hf_tp; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", out
