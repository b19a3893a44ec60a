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

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import load_reference, save_tiny_model, tiny_config

ROOT = Path(__file__).resolve().parents[1]

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
import json, torch, torch.nn.functional as F
import torch._inductor.config as inductor_config
from hf_tp.kernels import prologue_pass
from hf_tp.kernels.decode_gemm import decode_linear

counts = []
real = prologue_pass.fuse_glu_into_decode_linear
def counting(graph):
    counts.append(real(graph))
    return counts[-1]
prologue_pass.fuse_glu_into_decode_linear = counting

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
FNS = (split_form, slice_form, chunk_form, gelu_mlp, product_used_twice, swapped_halves, scaled_add, three_parts)
REWRITTEN = ("split_form", "slice_form", "chunk_form")
out = {}
for rows, dtype in ((1, torch.float32), (3, torch.float32), (1, torch.float16), (3, torch.float16)):
    x = torch.randn(1, rows, H, generator=g)  # 1: the GEMV kernel; 3: tl.dot
    for fn in FNS:
        args = (x.to(dtype), x.to(dtype))
        wgu_, wd_ = wgu, wd
        globals()["wgu"], globals()["wd"] = wgu_.to(dtype), wd_.to(dtype)
        eager = fn(*args)
        torch._dynamo.reset()
        counts.clear()
        with inductor_config.patch({**prologue_pass.inductor_options(True), "fx_graph_cache": False}):  # the pass runs
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

counts = []
real = prologue_pass.fuse_glu_into_decode_linear
prologue_pass.fuse_glu_into_decode_linear = lambda graph: counts.append(real(graph)) or counts[-1]
model = load_parallel_model(sys.argv[1], TPGroup(0, 1, torch.device("cpu")), dtype=torch.float32, progress=False,
                            tp_config=TPConfig(decode_gemm="triton", fuse=True))  # fused gate/up, as on CUDA
ids = torch.tensor([[5, 9, 2]])
model._hf_tp_in_generate = True  # as the decode loop's compiled step runs: inside generate, inputs checked once
def last_logits(ids):
    return model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1]
with torch.no_grad():
    eager = last_logits(ids)
    with inductor_config.patch({**prologue_pass.inductor_options(True), "fx_graph_cache": False}):  # the pass runs
        compiled = torch.compile(last_logits, fullgraph=True, dynamic=False)(ids)
print(json.dumps(dict(rewrites=sum(counts), layers=model.config.num_hidden_layers,
                      max_diff=(compiled - eager).abs().max().item(), scale=eager.abs().max().item(),
                      same_token=bool(torch.equal(compiled.argmax(-1), eager.argmax(-1))))))
"""


def _run(script: str, *args: str, timeout: int = 600) -> object:
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    result = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0 and "interpret" in result.stderr.lower() and "not supported" in result.stderr.lower():
        pytest.skip(f"Triton's interpreter cannot run the kernels here: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


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


def test_pass_rewrites_exactly_the_silu_product_and_keeps_the_values():
    pytest.importorskip("triton")
    result = _run(_PASS_SCRIPT)
    out, names, rewritten = result["out"], result["names"], set(result["rewritten"])
    assert len(names) == 8 and rewritten == {"split_form", "slice_form", "chunk_form"}
    for case in ("1 torch.float32", "3 torch.float32", "1 torch.float16", "3 torch.float16"):
        for name in names:
            # the three forms of silu(gate) * up are rewritten; another activation, a product needed elsewhere,
            # swapped halves, 1 + 3 exp(-x) and a three-way split are left alone
            assert out[f"{name} {case}"]["rewrites"] == (name in rewritten), (name, case, out)
            # fp32: summation order; fp16: Inductor computes the unfused activation in fp32 without rounding
            # it (eager rounds silu's result), so the two differ by the activation's rounding
            bound = 1e-5 if case.endswith("float32") else 2e-3
            assert out[f"{name} {case}"]["err"] < bound, (name, case, out)


def test_every_mlp_of_a_tiny_llama_is_rewritten_with_the_same_logits(tmp_path):
    pytest.importorskip("triton")
    folder = save_tiny_model(tmp_path / "llama", tiny_config("llama"))
    out = _run(_MODEL_SCRIPT, str(folder))
    assert out["rewrites"] == out["layers"] == 2, out
    assert out["max_diff"] <= 1e-4 * max(1.0, out["scale"]), out
    assert out["same_token"], out


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")
def test_gpu_glu_kernel_at_llama3_8b_widths(tp, rows):
    from hf_tp.kernels import gemv_triton
    from hf_tp.kernels.decode_gemm import glu_reference

    g = torch.Generator(device="cuda").manual_seed(tp * 10 + rows)
    inter = 14336 // tp
    gate_up = torch.randn(rows, 2 * inter, device="cuda", generator=g).to(torch.bfloat16)
    weight = (torch.randn(4096, inter, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    act = glu_reference(gate_up)
    fused = gemv_triton.launch(gate_up, weight, glu=True)
    unfused = gemv_triton.launch(act, weight)
    ref = act.float() @ weight.float().t()
    rel = lambda a, r: ((a.float() - r.float()).norm() / r.float().norm()).item()
    assert rel(fused, ref) < 5e-3  # the output's bf16 rounding (tests/test_decode_gemm.py's bound)
    # the activation's exp (the GEMM's against torch's silu) may move a bf16 activation by one unit
    assert rel(fused, unfused) < 5e-3
    assert torch.equal(fused, gemv_triton.launch(gate_up, weight, glu=True))  # the same bits every call


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")
def test_gpu_loop_with_gemm_prologues_matches_transformers(tmp_path, monkeypatch):
    from hf_tp.auto import load_parallel_model
    from hf_tp.config import TPConfig
    from hf_tp.kernels import prologue_pass
    from hf_tp.parallel.comm import TPGroup

    counts = []
    real = prologue_pass.fuse_glu_into_decode_linear
    monkeypatch.setattr(prologue_pass, "fuse_glu_into_decode_linear", lambda graph: counts.append(real(graph)))
    config = tiny_config("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3)
    folder = save_tiny_model(tmp_path / "m", config)
    device = torch.device("cuda", 0)
    ours = load_parallel_model(str(folder), TPGroup(0, 1, device), dtype=torch.float32, progress=False,
                               tp_config=TPConfig(gemm_prologues=True))
    assert ours.hf_tp_config.gemm_prologues and ours.hf_tp_config.decode_gemm == "triton"
    ref = load_reference(folder).to(device)
    ids = torch.randint(1, 101, (2, 11), generator=torch.Generator().manual_seed(5)).to(device)
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fx_graph_cache=False):  # compile here, so the pass runs
        got = ours.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                            pad_token_id=0)
    with torch.no_grad():
        want = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                            pad_token_id=0)
    assert torch.equal(got, want), (got[:, 11:].tolist(), want[:, 11:].tolist())
    assert ours._hf_tp_static_decoder.use_graphs and sum(counts) == config.num_hidden_layers, counts


def test_decode_loop_sets_the_inductor_options_its_config_asks_for():
    """StaticDecoder.inductor_options: what the loop sets in Inductor's config around each generate call."""
    import types

    from hf_tp.config import TPConfig
    from hf_tp.generation.decode_loop import StaticDecoder
    from hf_tp.kernels.prologue_pass import GemmPrologues

    def options(device, pdl=False, **config):
        config = TPConfig(**{"combo_kernels": True, "gemm_prologues": False, "decode_gemm": "triton", **config})
        return StaticDecoder.inductor_options(types.SimpleNamespace(device=torch.device(device), config=config,
                                                                    _pdl=pdl))

    assert options("cpu", gemm_prologues=True) == {}  # no compiled step on CPU
    assert options("cuda") == {"combo_kernels": True}
    assert options("cuda", combo_kernels=False) == {}
    assert isinstance(options("cuda", gemm_prologues=True)["post_grad_custom_post_pass"], GemmPrologues)
    assert "post_grad_custom_post_pass" not in options("cuda", gemm_prologues=True, decode_gemm="cublas")
    assert options("cuda", pdl=True).get("triton.enable_pdl") is True
