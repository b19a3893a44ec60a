"""TPConfig.gemm_prologues: the MLP's silu(gate) * up made inside the down projection's GEMM
(hf_tp::decode_linear_glu, hf_tp/kernels/prologue_pass.py).

- The kernel (Triton's interpreter, CPU): decode_linear_glu against silu(gate) * up then the GEMM, in float64 and
  against the unfused kernel, on the GEMV and tl.dot paths, with splits of K, K tails, bias and fp32 output.
- The pass (Inductor on CPU): it rewrites exactly the pattern (split or slices, silu, product used only by the
  GEMM), leaves a GELU MLP and a product with another user alone, and the compiled function's values are the
  unfused ones; on a tiny Llama loaded by hf_tp with decode_gemm="triton", every layer's MLP is rewritten and the
  compiled decode-sized forward gives the eager forward's logits and greedy token.
- GPU (``gpu``): the kernel in bf16 at the Llama-3-8B down projection's widths for tp 1/2/4/8 against the unfused
  kernel and fp32; the decode loop with the option on (compiled, captured) gives Transformers' greedy tokens on a
  tiny Llama, with every layer's MLP rewritten. Its speed: benchmarks/next_cycle.sh.
"""

from __future__ import annotations


import pytest
import torch

from conftest import gpu_loop_and_transformers_tokens, run_interpreter_script, save_tiny_model, tiny_config

_KERNEL_SCRIPT = r"""
import json, torch
from hf_tp.kernels import gemv_triton as gt
from hf_tp.kernels.decode_gemm import glu_reference
# (M, N, K, path, dtype, bias, fp32 out, config). 16-bit cases in fp16: the CPU interpreter rounds fp32 -> bf16
# casts differently from torch (and computes bf16 tl.dot wrongly, tests/test_decode_gemm.py); bf16 runs on the GPU.
cases = [
    (1, 20, 48, "gemv", "float32", True, False, {"BLOCK_N": 8, "BLOCK_K": 16}),
    (1, 24, 100, "gemv", "float32", False, False, {"BLOCK_N": 8, "BLOCK_K": 32}),
    (1, 20, 300, "gemv", "float16", True, False, {"BLOCK_N": 4, "BLOCK_K": 64, "SPLIT": 2}),
    (1, 20, 320, "gemv", "float16", False, True, {"BLOCK_N": 4, "BLOCK_K": 64, "num_stages": 0, "SPLIT": 2}),
    (1, 20, 300, "dot", "float16", True, False, {"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT": 2}),
    (3, 20, 300, "dot", "float32", False, True, {"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT": 3}),
    (17, 20, 100, "dot", "float32", True, False, {"BLOCK_N": 16, "BLOCK_K": 32}),
    (2, 40, 72, None, "float32", True, False, None),
]
rows = []
for M, N, K, path, dtype, bias, fp32_out, config in cases:
    g = torch.Generator().manual_seed(M * 1000 + N + K)
    dt = getattr(torch, dtype)
    gate_up = (torch.randn(M, 2 * K, generator=g) * 2).to(dt)
    w = (torch.randn(N, K, generator=g) * 0.1).to(dt)
    b = torch.randn(N, generator=g).to(dt) if bias else None
    out_dtype = torch.float32 if fp32_out else None
    fused = gt.launch(gate_up, w, None, 0, 0, b, out_dtype=out_dtype, config=config, path=path, glu=True)
    act = glu_reference(gate_up)
    unfused = gt.launch(act, w, None, 0, 0, b, out_dtype=out_dtype, config=config, path=path)
    ref = torch.nn.functional.linear(act.double(), w.double(), None if b is None else b.double())
    rel = lambda a, r: ((a.double() - r.double()).norm() / r.double().norm()).item()
    rows.append(dict(case=[M, N, K, path, dtype], err=rel(fused, ref), vs_unfused=rel(fused, unfused),
                     dtype=str(fused.dtype), shape=list(fused.shape), expected=[M, N]))
try:
    gt.launch(torch.zeros(1, 10), torch.zeros(4, 6), glu=True)
    rows.append(dict(bad_shape_error=None))
except ValueError as exc:
    rows.append(dict(bad_shape_error=str(exc)))
print(json.dumps(rows))
"""

_PASS_SCRIPT = r"""
import json, sys, torch, torch.nn.functional as F
import torch._inductor.config as inductor_config
from hf_tp.kernels import prologue_pass
from hf_tp.kernels.decode_gemm import decode_linear

MODE = sys.argv[1]  # "prologues" or "epilogues"
REWRITE = "fuse_glu_into_decode_linear" if MODE == "prologues" else "fuse_glu_into_gate_up"
OPTIONS = prologue_pass.inductor_options(MODE == "prologues", MODE == "epilogues")
counts = []
real = getattr(prologue_pass, REWRITE)
def counting(graph):
    counts.append(real(graph))
    return counts[-1]
setattr(prologue_pass, REWRITE, counting)

I, H = 48, 32
g = torch.Generator().manual_seed(0)
wgu = torch.randn(2 * I, H, generator=g) * 0.2
wd = torch.randn(H, I, generator=g) * 0.2
def split_form(x, r):
    gate, up = decode_linear(x, wgu).split([I, I], -1)
    return decode_linear(F.silu(gate) * up, wd) + r
def slice_form(x, r):
    gu = decode_linear(x, wgu)
    return decode_linear(gu[..., I:] * F.silu(gu[..., :I]), wd) + r
def gelu_mlp(x, r):
    gate, up = decode_linear(x, wgu).split([I, I], -1)
    return decode_linear(F.gelu(gate) * up, wd) + r
def product_used_twice(x, r):
    gate, up = decode_linear(x, wgu).split([I, I], -1)
    h = F.silu(gate) * up
    return decode_linear(h, wd) + h[..., :H]
def chunk_form(x, r):  # aten.split.Tensor
    gate, up = decode_linear(x, wgu).chunk(2, -1)
    return decode_linear(F.silu(gate) * up, wd) + r
def swapped_halves(x, r):  # silu of the second half: not this kernel's activation
    up, gate = decode_linear(x, wgu).split([I, I], -1)
    return decode_linear(F.silu(gate) * up, wd) + r
def scaled_add(x, r):  # silu's form, but 1 + 3 exp(-x) (an add with alpha)
    gate, up = decode_linear(x, wgu).split([I, I], -1)
    g = gate.float()
    return decode_linear((g / torch.add(1, torch.exp(-g), alpha=3)).to(gate.dtype) * up, wd) + r
def three_parts(x, r):  # a three-way split whose first two parts are equal
    gate, up, rest = decode_linear(x, wgu).split([I // 2, I // 2, I], -1)
    return decode_linear(F.silu(gate) * up, wd[:, :I // 2]) + r + rest[..., :H]
def gate_up_used_twice(x, r):  # [gate | up] needed elsewhere: the gate/up GEMM must still write it
    gu = decode_linear(x, wgu)
    gate, up = gu.split([I, I], -1)
    return decode_linear(F.silu(gate) * up, wd) + gu[..., :H]
def k_split_gate_up(x, r):  # a gate/up GEMM whose config splits K (a GEMV of 2I = 96 rows, K = 2048)
    gate, up = decode_linear(x.repeat(1, 1, 64), wgu.repeat(1, 64) / 8).split([I, I], -1)
    return decode_linear(F.silu(gate) * up, wd) + r
FNS = (split_form, slice_form, chunk_form, gelu_mlp, product_used_twice, swapped_halves, scaled_add, three_parts,
       gate_up_used_twice, k_split_gate_up)
REWRITTEN = ("split_form", "slice_form", "chunk_form") + (
    ("gate_up_used_twice", "k_split_gate_up") if MODE == "prologues" else ("product_used_twice",))
out = {}
# 1 row (the GEMV kernel) in fp16, 3 rows (tl.dot) in fp32: each kernel path and each dtype's graph (fp16 has the
# casts around silu) is rewritten at least once, in 20 Inductor compiles per mode instead of 40 for every pair
for rows, dtype in ((1, torch.float16), (3, torch.float32)):
    x = torch.randn(1, rows, H, generator=g)
    for fn in FNS:
        args = (x.to(dtype), x.to(dtype))
        wgu_, wd_ = wgu, wd
        globals()["wgu"], globals()["wd"] = wgu_.to(dtype), wd_.to(dtype)
        eager = fn(*args)
        torch._dynamo.reset()
        counts.clear()
        with inductor_config.patch({**OPTIONS, "fx_graph_cache": False}):  # the pass runs
            compiled = torch.compile(fn, fullgraph=True, dynamic=False)(*args)
        globals()["wgu"], globals()["wd"] = wgu_, wd_
        err = ((compiled.double() - eager.double()).norm() / eager.double().norm()).item()
        out[f"{fn.__name__} {rows} {dtype}"] = dict(rewrites=sum(counts), err=err)
print(json.dumps(dict(out=out, names=[f.__name__ for f in FNS], rewritten=REWRITTEN)))
"""

_MODEL_SCRIPT = r"""
import json, sys, torch
import torch._inductor.config as inductor_config
from hf_tp.assembly import load_parallel_model
from hf_tp.config import TPConfig
from hf_tp.kernels import prologue_pass
from hf_tp.parallel.comm import TPGroup

MODE = sys.argv[2]  # "prologues" or "epilogues"
FP8 = len(sys.argv) > 3  # an FP8 checkpoint kept FP8 (its reference form on CPU), with FP8_GLU_EPILOGUE
REWRITE = "fuse_glu_into_decode_linear" if MODE == "prologues" else "fuse_glu_into_gate_up"
counts = []
real = getattr(prologue_pass, REWRITE)
setattr(prologue_pass, REWRITE, lambda graph: counts.append(real(graph)) or counts[-1])
prologue_pass.FP8_GLU_EPILOGUE = FP8
config = TPConfig(fp8_weights="keep", fuse=True) if FP8 else TPConfig(decode_gemm="triton", fuse=True)
model = load_parallel_model(sys.argv[1], TPGroup(0, 1, torch.device("cpu")), progress=False, tp_config=config,
                            dtype=torch.bfloat16 if FP8 else torch.float32)  # fused gate/up, as on CUDA
assert not FP8 or model.model.layers[0].mlp.gate_proj.weight.dtype == torch.float8_e4m3fn
ids = torch.tensor([[5, 9, 2]]) if not FP8 else torch.tensor([[5]])  # FP8: one row (the GEMV keeps K whole)
model._hf_tp_in_generate = True  # as the decode loop's compiled step runs: inside generate, inputs checked once
def last_logits(ids):
    return model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1]
with torch.no_grad():
    eager = last_logits(ids)
    options = prologue_pass.inductor_options(MODE == "prologues", MODE == "epilogues")
    with inductor_config.patch({**options, "fx_graph_cache": False}):  # the pass runs
        compiled = torch.compile(last_logits, fullgraph=True, dynamic=False)(ids)
print(json.dumps(dict(rewrites=sum(counts), layers=model.config.num_hidden_layers,
                      max_diff=(compiled - eager).abs().max().item(), scale=eager.abs().max().item(),
                      same_token=bool(torch.equal(compiled.argmax(-1), eager.argmax(-1))))))
"""


_EPILOGUE_KERNEL_SCRIPT = r"""
import json, torch
from hf_tp.kernels import gemv_triton as gt
from hf_tp.kernels.decode_gemm import glu_reference
# (M, I, K, path, dtype, bias, fp32 out, config): the [gate | up] GEMM of 2I rows with silu(gate) * up in its
# epilogue, against the same GEMM then glu_reference; a config's split of K is dropped (the last cases)
cases = [
    (1, 20, 48, "gemv", "float32", True, False, {"BLOCK_N": 8, "BLOCK_K": 16}),
    (1, 22, 100, "gemv", "float16", False, False, {"BLOCK_N": 4, "BLOCK_K": 32}),
    (1, 24, 96, "dot", "float16", True, False, {"BLOCK_N": 16, "BLOCK_K": 32}),
    (17, 20, 100, "dot", "float32", True, False, {"BLOCK_N": 16, "BLOCK_K": 32}),
    (2, 40, 72, None, "float16", True, True, None),
    (1, 20, 300, "gemv", "float16", True, False, {"BLOCK_N": 4, "BLOCK_K": 64, "SPLIT": 2}),
    (3, 20, 300, "dot", "float32", False, True, {"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT": 3}),
]
rows = []
for M, I, K, path, dtype, bias, fp32_out, config in cases:
    g = torch.Generator().manual_seed(M * 1000 + I + K)
    dt = getattr(torch, dtype)
    x = torch.randn(M, K, generator=g).to(dt)
    w = (torch.randn(2 * I, K, generator=g) * 0.3).to(dt)
    b = torch.randn(2 * I, generator=g).to(dt) if bias else None
    out_dtype = torch.float32 if fp32_out else None
    fused = gt.launch(x, w, None, 0, 0, b, out_dtype=out_dtype, config=config, path=path, glu_out=True)
    unfused = glu_reference(gt.launch(x, w, None, 0, 0, b, out_dtype=out_dtype, config=dict(config or {}, SPLIT=1),
                                      path=path))
    ref = glu_reference(torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double()))
    rel = lambda a, r: ((a.double() - r.double()).norm() / r.double().norm()).item()
    rows.append(dict(case=[M, I, K, path, dtype], err=rel(fused, ref), vs_unfused=rel(fused, unfused),
                     same_bits=bool(torch.equal(fused, unfused)), dtype=str(fused.dtype),
                     out_dtype=str(unfused.dtype), shape=list(fused.shape), expected=[M, I]))
errors = []
for args, kwargs in (((torch.zeros(1, 6), torch.zeros(5, 6)), {}), ((torch.zeros(1, 12), torch.zeros(4, 6)),
                                                                   {"glu": True})):
    try:
        gt.launch(*args, glu_out=True, **kwargs)
        errors.append(None)
    except ValueError as exc:
        errors.append(str(exc))
rows.append(dict(errors=errors))
print(json.dumps(rows))
"""


_run = run_interpreter_script


_FP8_PASS_SCRIPT = r"""
import json, torch, torch.nn.functional as F
import torch._inductor.config as inductor_config
from hf_tp.kernels import prologue_pass
from hf_tp.kernels.fp8 import fp8_linear

seen = []
real = prologue_pass.fuse_glu_into_gate_up
def recording(graph):
    fused = real(graph)
    calls = [n for n in graph.nodes if n.target is torch.ops.hf_tp.fp8_linear_glu_out.default]
    copies = [n for n in graph.nodes if n.target is torch.ops.prims.convert_element_type.default
              and n.args[1] == torch.float16]
    seen.append(dict(fused=fused, f16=[bool(n.args[-1]) for n in calls], copies_left=len(copies)))
    return fused
prologue_pass.fuse_glu_into_gate_up = recording

I, H = 48, 32
g = torch.Generator().manual_seed(0)
def fp8(n, k):
    return (torch.randn(n, k, generator=g) * 2).to(torch.float8_e4m3fn), torch.rand(n, 1, generator=g) * 0.02 + 0.001
wgu, sgu = fp8(2 * I, H)
wd, sd = fp8(H, I)
wlong, slong = fp8(2 * I, 64 * H)  # K = 2048 over 96 rows: the GEMV's config splits K
def plain(x, r):  # fp8_linear as hf_tp's layers call it
    gate, up = fp8_linear(x, wgu, sgu, H, 0).split([I, I], -1)
    return fp8_linear(F.silu(gate) * up, wd, sd, I, 0) + r
def with_copy(x, r):  # the down projection's fp16 form: its x16 argument is the activation's fp16 copy
    gate, up = fp8_linear(x, wgu, sgu, H, 0).split([I, I], -1)
    h = F.silu(gate) * up
    return torch.ops.hf_tp.fp8_linear(h, wd, sd, I, 0, None, h.to(torch.float16), False) + r
def k_split(x, r):
    gate, up = fp8_linear(x.repeat(1, 1, 64), wlong, slong, 64 * H, 0).split([I, I], -1)
    return fp8_linear(F.silu(gate) * up, wd, sd, I, 0) + r
out = {}
for enabled in (False, True):
    prologue_pass.FP8_GLU_EPILOGUE = enabled
    for fn in (plain, with_copy, k_split):
        for rows in (1, 3):
            x = torch.randn(1, rows, H, generator=g).bfloat16()
            eager = fn(x, x)
            torch._dynamo.reset()
            seen.clear()
            options = prologue_pass.inductor_options(False, True)
            with inductor_config.patch({**options, "fx_graph_cache": False}):
                compiled = torch.compile(fn, fullgraph=True, dynamic=False)(x, x)
            err = ((compiled.double() - eager.double()).norm() / eager.double().norm()).item()
            out[f"{enabled} {fn.__name__} {rows}"] = dict(seen=seen[-1], err=err)
print(json.dumps(out))
"""


def test_fp8_gate_up_epilogue_pass_rewrites_with_the_fp16_copy():
    """prologue_pass.FP8_GLU_EPILOGUE: an FP8 [gate | up] GEMM (``hf_tp::fp8_linear``) whose silu(gate) * up nothing
    else reads becomes ``hf_tp::fp8_linear_glu_out``; where the down projection reads the activation's fp16 copy
    (its fp16 form's x16), the op writes the copy and the graph's own conversion is gone. Not with the switch off,
    nor where the gate/up GEMM splits K. The compiled results are the eager ones (the op's CPU form is
    ``fp8_linear`` then the activation)."""
    pytest.importorskip("triton")
    out = _run(_FP8_PASS_SCRIPT)
    for key, row in out.items():
        enabled, name, rows = key.split()
        fused = enabled == "True" and name != "k_split"
        assert row["seen"]["fused"] == int(fused), (key, row)
        assert row["seen"]["f16"] == ([name == "with_copy"] if fused else []), (key, row)
        if name == "with_copy":
            assert row["seen"]["copies_left"] == (0 if fused else 1), (key, row)
        assert row["err"] < 1e-2, (key, row)




def test_glu_kernel_matches_silu_mul_then_the_gemm():
    pytest.importorskip("triton")
    rows = _run(_KERNEL_SCRIPT)
    error = rows.pop()["bad_shape_error"]
    assert error is not None and "glu takes dense weights (N, K) and x (M, 2K)" in error
    for row in rows:
        assert row["shape"] == row["expected"], row
        # fp32: summation order only; 16-bit: the output's rounding (as tests/test_decode_gemm.py)
        bound = 1e-5 if row["case"][4] == "float32" else 5e-3
        assert row["err"] < bound, row
        assert row["vs_unfused"] < (1e-5 if row["case"][4] == "float32" else 1e-12), row  # the unfused kernel's bits


def test_glu_epilogue_kernel_matches_the_gemm_then_silu_mul():
    pytest.importorskip("triton")
    rows = _run(_EPILOGUE_KERNEL_SCRIPT)
    errors = rows.pop()["errors"]
    assert all(e is not None and "glu_out takes a [gate | up] weight" in e for e in errors), errors
    for row in rows:
        assert row["shape"] == row["expected"] and row["dtype"] == row["out_dtype"], row
        # 16-bit: the output's rounding; fp32: the activation's exp (the kernel's against torch's)
        assert row["err"] < (1e-5 if row["dtype"] == "torch.float32" else 5e-3), row
        if row["dtype"] == "torch.float16":
            assert row["same_bits"], row  # rounded as the unfused step rounds: [gate | up], silu, the product
        else:
            assert row["vs_unfused"] < 1e-6, row


@pytest.mark.parametrize("mode", ["prologues", "epilogues"])
def test_pass_rewrites_exactly_the_silu_product_and_keeps_the_values(mode):
    pytest.importorskip("triton")
    result = _run(_PASS_SCRIPT, mode)
    out, names, rewritten = result["out"], result["names"], set(result["rewritten"])
    forms = {"split_form", "slice_form", "chunk_form"}
    assert len(names) == 10 and rewritten == forms | (
        {"gate_up_used_twice", "k_split_gate_up"} if mode == "prologues" else {"product_used_twice"})
    for case in ("1 torch.float16", "3 torch.float32"):
        for name in names:
            # the three forms of silu(gate) * up are rewritten; another activation, swapped halves, 1 + 3 exp(-x)
            # and a three-way split are left alone. The prologue form also leaves a product needed elsewhere; the
            # epilogue form, a [gate | up] needed elsewhere and a gate/up GEMM that splits K
            assert out[f"{name} {case}"]["rewrites"] == (name in rewritten), (name, case, out)
            # fp32: summation order; fp16: Inductor computes the unfused activation in fp32 without rounding
            # it (eager rounds silu's result), so the two differ by the activation's rounding
            bound = 1e-5 if case.endswith("float32") else 2e-3
            assert out[f"{name} {case}"]["err"] < bound, (name, case, out)


@pytest.mark.parametrize("mode", ["prologues", "epilogues"])
def test_every_mlp_of_a_tiny_llama_is_rewritten_with_the_same_logits(tmp_path, mode):
    pytest.importorskip("triton")
    folder = save_tiny_model(tmp_path / "llama", tiny_config("llama"))
    out = _run(_MODEL_SCRIPT, str(folder), mode)
    assert out["rewrites"] == out["layers"] == 2, out
    assert out["max_diff"] <= 1e-4 * max(1.0, out["scale"]), out
    assert out["same_token"], out


def test_every_mlp_of_a_tiny_fp8_llama_is_rewritten(tmp_path):
    """prologue_pass.FP8_GLU_EPILOGUE on hf_tp's own model graph: every layer's FP8 [gate | up] GEMM (fused, kept
    FP8) takes silu(gate) * up in its epilogue; compiled and eager logits agree to bf16 noise (the op's CPU form
    is the reference; Inductor keeps the step's other intermediates in fp32)."""
    pytest.importorskip("triton")
    from fp8_checkpoints import write_channel_fp8

    src = save_tiny_model(tmp_path / "llama", tiny_config("llama"), max_shard_size=None)
    out = _run(_MODEL_SCRIPT, str(write_channel_fp8(src, tmp_path / "fp8")), "epilogues", "fp8")
    assert out["rewrites"] == out["layers"] == 2, out
    assert out["max_diff"] <= 0.05 * max(1.0, out["scale"]), out


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize("form", ["prologue", "epilogue"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")
def test_gpu_glu_kernels_at_llama3_8b_widths(tp, rows, form):
    """The activation in the down projection's loads (``glu``) or in the gate/up GEMM's epilogue (``glu_out``),
    bf16, at the MLP widths of a Llama-3-8B rank of tp 1/2/4/8."""
    from hf_tp.kernels import gemv_triton
    from hf_tp.kernels.decode_gemm import glu_reference

    g = torch.Generator(device="cuda").manual_seed(tp * 10 + rows)
    inter = 14336 // tp
    if form == "prologue":
        gate_up = torch.randn(rows, 2 * inter, device="cuda", generator=g).to(torch.bfloat16)
        weight = (torch.randn(4096, inter, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        fused = lambda: gemv_triton.launch(gate_up, weight, glu=True)
        unfused = gemv_triton.launch(glu_reference(gate_up), weight)
        ref, bound = glu_reference(gate_up).float() @ weight.float().t(), 5e-3  # the output's bf16 rounding
    else:
        x = torch.randn(rows, 4096, device="cuda", generator=g).to(torch.bfloat16)
        weight = (torch.randn(2 * inter, 4096, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        fused = lambda: gemv_triton.launch(x, weight, glu_out=True)
        unfused = glu_reference(gemv_triton.launch(x, weight, config={"SPLIT": 1}))
        ref, bound = glu_reference(x.float() @ weight.float().t()), 1e-2  # [gate | up]'s rounding, then silu's
    got = fused()
    rel = lambda a, r: ((a.float() - r.float()).norm() / r.float().norm()).item()
    assert got.shape == unfused.shape and rel(got, ref) < bound
    # the activation's exp (the GEMM's against torch's silu) may move a bf16 activation by one unit
    assert rel(got, unfused) < 5e-3
    assert torch.equal(got, fused())  # the same bits every call


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")
@pytest.mark.parametrize("option, rewrite", [("gemm_prologues", "fuse_glu_into_decode_linear"),
                                             ("gemm_epilogues", "fuse_glu_into_gate_up")])
def test_gpu_loop_with_gemm_fusions_matches_transformers(tmp_path, monkeypatch, option, rewrite):
    from hf_tp.config import TPConfig
    from hf_tp.kernels import prologue_pass

    counts = []
    real = getattr(prologue_pass, rewrite)
    monkeypatch.setattr(prologue_pass, rewrite, lambda graph: counts.append(real(graph)))
    config = tiny_config("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3)
    ours, got, want = gpu_loop_and_transformers_tokens(save_tiny_model(tmp_path / "m", config),
                                                       TPConfig(**{option: True}))
    assert getattr(ours.hf_tp_config, option) and ours.hf_tp_config.decode_gemm == "triton"
    assert torch.equal(got, want), (got[:, 11:].tolist(), want[:, 11:].tolist())
    assert ours._hf_tp_static_decoder.use_graphs and sum(counts) == config.num_hidden_layers, counts


def test_decode_loop_sets_the_inductor_options_its_config_asks_for():
    """StaticDecoder.inductor_options: what the loop sets in Inductor's config around each generate call."""
    import types

    from hf_tp.config import TPConfig
    from hf_tp.generation.decode_loop import StaticDecoder
    from hf_tp.kernels.prologue_pass import GemmFusions

    def options(device, pdl=False, **config):
        config = TPConfig(**{"combo_kernels": True, "gemm_prologues": False, "decode_gemm": "triton", **config})
        return StaticDecoder.inductor_options(types.SimpleNamespace(device=torch.device(device), config=config,
                                                                    _pdl=pdl))

    assert options("cpu", gemm_prologues=True) == {}  # no compiled step on CPU
    assert options("cuda") == {"combo_kernels": True}
    assert options("cuda", combo_kernels=False) == {}
    fusions = options("cuda", gemm_prologues=True)["post_grad_custom_post_pass"]
    assert isinstance(fusions, GemmFusions) and (fusions.prologues, fusions.epilogues) == (True, False)
    fusions = options("cuda", gemm_epilogues=True)["post_grad_custom_post_pass"]
    assert isinstance(fusions, GemmFusions) and (fusions.prologues, fusions.epilogues) == (False, True)
    assert "post_grad_custom_post_pass" not in options("cuda", gemm_epilogues=True, decode_gemm="cublas")
    assert "post_grad_custom_post_pass" not in options("cuda", gemm_prologues=True, decode_gemm="cublas")
    assert options("cuda", pdl=True).get("triton.enable_pdl") is True
