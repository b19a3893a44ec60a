"""TPConfig.gemm_norms: a Llama-style RMSNorm (and the residual add before it) computed inside the GEMM that reads
its output (hf_tp::decode_linear_norm, hf_tp/kernels/prologue_pass.py ``fuse_rmsnorm_into_decode_linear``).

- The kernel (Triton's interpreter, CPU): decode_linear_norm against the norm then the GEMM (``decode_gemm.
  norm_reference``, as Transformers' LlamaRMSNorm computes it) and against the unfused kernel, on the GEMV and
  tl.dot paths, with and without the residual add (whose sum it writes), splits of K, K tails, bias, fp32 output
  and the [gate | up] epilogue; bad inputs get one clear error.
- The pass (Inductor on CPU): it rewrites exactly the norm's decomposed form feeding a decode GEMM (with the
  residual add, whose other users then read the op's sum), and leaves Gemma's 1 + weight form, a normalized x
  with another user and a norm weight of another dtype alone; the compiled values are the unfused ones. On a
  tiny Llama loaded by hf_tp with decode_gemm="triton", both norms of every layer are rewritten (with and
  without the gate/up epilogue) and the compiled forward gives the eager forward's logits and greedy token.
- GPU (``gpu``): the kernel in bf16 at the Llama-3-8B q/k/v and gate/up widths of the ranks of tp 1/2/4/8, 1
  and 4 rows, against the unfused kernel and fp32; the decode loop with the option gives Transformers' greedy
  tokens on a tiny Llama. Its speed: benchmarks/next_cycle.sh.
"""

from __future__ import annotations

import os

import pytest
import torch

from conftest import gpu_loop_and_transformers_tokens, run_interpreter_script, save_tiny_model, tiny_config

_KERNEL_SCRIPT = r"""
import json, torch
from hf_tp.kernels import gemv_triton as gt
from hf_tp.kernels.decode_gemm import decode_linear_norm, decode_linear_norm_reference, glu_reference, norm_reference
# (M, N, K, path, dtype, residual, glu_out, bias, fp32 out, config). 16-bit cases in fp16: the CPU interpreter
# rounds fp32 -> bf16 casts differently from torch; bf16 runs on the GPU.
cases = [
    (1, 20, 48, "gemv", "float32", True, False, True, False, {"BLOCK_N": 4, "BLOCK_K": 16, "num_stages": 1}),
    (1, 24, 100, "gemv", "float16", True, True, False, False, {"BLOCK_N": 4, "BLOCK_K": 32}),
    (1, 20, 96, "gemv", "float16", False, False, False, True, {"BLOCK_N": 8, "BLOCK_K": 32, "SPLIT": 2}),
    (1, 40, 96, "dot", "float16", True, False, True, False, {"BLOCK_N": 16, "BLOCK_K": 32}),
    (5, 40, 100, "dot", "float32", True, True, False, False, {"BLOCK_N": 16, "BLOCK_K": 32}),
    (17, 24, 96, "dot", "float16", False, False, False, False, {"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT": 3}),
    (3, 24, 40, None, "float32", True, False, True, True, None),
    # the residual's sum written by one program per row block: with splits of K, two row blocks, GLU_OUT and an N tail
    (20, 40, 96, "dot", "float16", True, False, False, False, {"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT": 2}),
    (1, 20, 96, "gemv", "float32", True, False, False, False, {"BLOCK_N": 4, "BLOCK_K": 16, "SPLIT": 3}),
    (33, 22, 64, "dot", "float32", True, True, True, False, {"BLOCK_N": 16, "BLOCK_K": 32}),
]
rows = []
rel = lambda a, r: ((a.double() - r.double()).norm() / r.double().norm()).item()
for M, N, K, path, dtype, res, glu_out, bias, fp32_out, cfg in cases:
    g = torch.Generator().manual_seed(M * 100 + N + K)
    dt = getattr(torch, dtype)
    x = (torch.randn(M, K, generator=g) * 2).to(dt)
    r = torch.randn(M, K, generator=g).to(dt) if res else None
    nw = (1 + 0.3 * torch.randn(K, generator=g)).to(dt)
    w = (torch.randn(N, K, generator=g) * 0.2).to(dt)
    b = torch.randn(N, generator=g).to(dt) if bias else None
    out_dtype = torch.float32 if fp32_out else None
    h = torch.full_like(x, float("nan")) if res else None  # an element no program writes stays NaN
    xn = torch.full_like(x, float("nan"))  # the normalized x, written for its other readers (x_out)
    out = gt.launch(x, w, None, 0, 0, b, out_dtype=out_dtype, config=cfg, path=path, glu_out=glu_out,
                    norm_weight=nw, eps=1e-5, residual=r, h_out=h, x_out=xn)
    ref, h_ref, xn_ref = decode_linear_norm_reference(x, r, nw, 1e-5, w, b, fp32_out, glu_out, True)
    unfused = gt.launch(norm_reference(x if r is None else x + r, nw, 1e-5), w, None, 0, 0, b, out_dtype=out_dtype,
                        config=cfg, path=path, glu_out=glu_out)
    # the custom op, default config, without the normalized x
    op_out, op_h, op_x = decode_linear_norm(x, r, nw, 1e-5, w, b, fp32_out, glu_out)
    # without the normalized x, an unsplit GEMM sums the statistic in its loop (RSTD_LAST): another rounding
    h2 = torch.full_like(x, float("nan")) if res else None
    out_again = gt.launch(x, w, None, 0, 0, b, out_dtype=out_dtype, config=cfg, path=path, glu_out=glu_out,
                          norm_weight=nw, eps=1e-5, residual=r, h_out=h2)
    rows.append(dict(case=[M, N, K, path, dtype], err=rel(out, ref), vs_unfused=rel(out, unfused),
                     op_err=rel(op_out, ref), dtype=str(out.dtype), ref_dtype=str(ref.dtype),
                     shape=list(out.shape), expected=[M, N // 2 if glu_out else N],
                     h_same=None if h is None else bool(torch.equal(h, h_ref) and torch.equal(op_h, h_ref)),
                     op_h_shape=list(op_h.shape), op_x_shape=list(op_x.shape),
                     xn_err=rel(xn, xn_ref), xn_nan=bool(xn.isnan().any()),
                     without_x_out_err=rel(out_again, ref), without_x_out_vs_unfused=rel(out_again, unfused),
                     without_x_out_h_same=None if h is None else bool(torch.equal(h2, h_ref))))
errors = []
x0 = torch.zeros(1, 6)
for kwargs in (dict(norm_weight=torch.ones(7)), dict(norm_weight=torch.ones(6), residual=torch.zeros(1, 6)),
               dict(norm_weight=torch.ones(6, dtype=torch.float16)),
               dict(norm_weight=torch.ones(6), glu=True),
               dict(residual=torch.zeros(1, 6), h_out=torch.zeros(1, 6)),  # no norm weight
               dict(norm_weight=torch.ones(6), h_out=torch.zeros(1, 6)),  # h_out without a residual
               dict(norm_weight=torch.ones(6), residual=torch.zeros(1, 6), h_out=x0),  # h_out is x
               dict(norm_weight=torch.ones(6), x_out=x0)):  # x_out is x
    try:
        gt.launch(torch.zeros(1, 12) if kwargs.get("glu") else x0, torch.zeros(4, 6), **kwargs)
        errors.append(None)
    except ValueError as exc:
        errors.append(str(exc))
try:
    decode_linear_norm(torch.zeros(1, 2, 6), torch.zeros(2, 1, 6), torch.ones(6), 1e-5, torch.zeros(4, 6))
    errors.append(None)
except ValueError as exc:  # a residual that would broadcast
    errors.append(str(exc))
rows.append(dict(errors=errors))
# FP8 weights (canonical form) with the norm: per channel, aligned blocks, a slice starting inside a group; the
# GEMV and tl.dot (with a config asking for the fp16 form, which fp16 x runs in its own dtype)
from hf_tp.kernels.fp8 import fp8_linear_norm, fp8_linear_norm_reference, fp8_linear_reference
fp8_rows = []
for M, N, K, group_k, k_off, path, cfg in [(1, 20, 96, 96, 0, "gemv", {"BLOCK_N": 4, "BLOCK_K": 32}),
                                          (1, 20, 96, 32, 0, "gemv", {"BLOCK_N": 4, "BLOCK_K": 64}),
                                          (1, 20, 96, 24, 8, "gemv", {"BLOCK_N": 4, "BLOCK_K": 32}),
                                          (1, 40, 96, 32, 0, "dot", {"BLOCK_N": 16, "BLOCK_K": 32, "X16": True}),
                                          (3, 40, 96, 96, 0, "dot", {"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT": 2}),
                                          (3, 40, 96, 24, 8, "dot", {"BLOCK_N": 16, "BLOCK_K": 16})]:
    g = torch.Generator().manual_seed(M + N + K + group_k)
    x = (torch.randn(M, K, generator=g) * 2).half()
    r = torch.randn(M, K, generator=g).half()
    nw = (1 + 0.3 * torch.randn(K, generator=g)).half()
    w = (torch.randn(N, K, generator=g) * 0.2).to(torch.float8_e4m3fn)
    scale = torch.rand(N, 1 if group_k == K else (K + k_off + group_k - 1) // group_k, generator=g) + 0.5
    h, xn = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))
    out = gt.launch(x, w, scale, group_k, k_off, None, config=cfg, path=path, norm_weight=nw, eps=1e-5, residual=r,
                    h_out=h, x_out=xn)
    ref, h_ref, xn_ref = fp8_linear_norm_reference(x, r, nw, 1e-5, w, scale, group_k, k_off, None, True)
    unfused = gt.launch(xn_ref, w, scale, group_k, k_off, None, config=cfg, path=path)
    op = fp8_linear_norm(x, r, nw, 1e-5, w, scale, group_k, k_off)  # CPU: the op's reference path
    fp8_rows.append(dict(case=[M, N, K, group_k, k_off, path], err=rel(out, ref), vs_unfused=rel(out, unfused),
                         h_same=bool(torch.equal(h, h_ref)), xn_err=rel(xn, xn_ref), op_err=rel(op[0], ref),
                         op_shapes=[list(t.shape) for t in op]))
rows.append(dict(fp8=fp8_rows))
print(json.dumps(rows))
"""

_PASS_SCRIPT = r"""
import json, sys, torch
import torch._inductor.config as inductor_config
from hf_tp.kernels import fp8, prologue_pass  # fp8: registers hf_tp::fp8_linear
from hf_tp.kernels.decode_gemm import decode_linear, decode_linear_glu_out

counts = []
real = prologue_pass.fuse_rmsnorm_into_decode_linear
def counting(graph):
    counts.append(real(graph))
    return counts[-1]
prologue_pass.fuse_rmsnorm_into_decode_linear = counting
OPTIONS = prologue_pass.inductor_options(False, False, True)

H, N = 64, 40
g = torch.Generator().manual_seed(0)
W = {"w": torch.randn(N, H, generator=g) * 0.2, "nw": 1 + 0.2 * torch.randn(H, generator=g),
     "wgu": torch.randn(2 * N, H, generator=g) * 0.2}

def llama_norm(h, nw, eps=1e-6):  # Transformers' LlamaRMSNorm.forward
    h32 = h.to(torch.float32)
    return nw * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)
def norm_only(a, b):
    return decode_linear(llama_norm(a, W["nw"]), W["w"])
def residual_add(a, b):  # the layer's form: h = a + b feeds the norm and the next residual
    h = a + b
    return decode_linear(llama_norm(h, W["nw"]), W["w"]).sum(-1, keepdim=True) + h
def gate_up_epilogue(a, b):  # the gate/up GEMM with silu(gate) * up in its epilogue
    h = a + b
    return decode_linear_glu_out(llama_norm(h, W["nw"]), W["wgu"])
def gemma_norm(a, b):  # 1 + weight, in fp32: another norm
    h32 = (a + b).float()
    n = h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + W["nw"].float())
    return decode_linear(n.to(a.dtype), W["w"])
def normalized_used_twice(a, b):  # the op also writes the normalized x for its other reader
    x = llama_norm(a + b, W["nw"])
    return decode_linear(x, W["w"]) + x[..., :N]
def moe_block(a, b):  # the router's GEMM and the experts read the tokens flattened: (B, S, H) -> (B * S, H)
    flat = llama_norm(a + b, W["nw"]).reshape(-1, H)
    return decode_linear(flat, W["w"]).sum(-1, keepdim=True) + flat * 2
def unfused_projections(a, b):  # q, k and v as three GEMMs of one normalized x
    x = llama_norm(a + b, W["nw"])
    return torch.cat([decode_linear(x, W["w"]), decode_linear(x, W["w"] * 2), decode_linear(x, W["w"] / 2)], -1)
def reshape_of_another_width(a, b):  # a reshape that changes the last dim: not the GEMM's x as normalized
    x = llama_norm(a + b, W["nw"]).reshape(*a.shape[:-1], 2, H // 2).transpose(-1, -2).reshape(a.shape)
    return decode_linear(x, W["w"])
def weight_in_fp32(a, b):  # a norm weight of another dtype than h: the product is fp32, not the GEMM's x dtype
    return decode_linear(llama_norm(a + b, W["nw"].float()).to(a.dtype), W["w"])
def mean_over_rows(a, b):  # the statistic over dim 1 (tokens), not the hidden size
    h32 = (a + b).float()
    return decode_linear(W["nw"] * (h32 * torch.rsqrt(h32.pow(2).mean(1, keepdim=True) + 1e-6)).to(a.dtype), W["w"])
def eps_as_a_tensor(a, b):
    h32 = (a + b).float()
    eps = torch.full((1,), 1e-6, dtype=torch.float32)
    return decode_linear(W["nw"] * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)).to(a.dtype), W["w"])
def weight_of_rank_3(a, b):
    return decode_linear(llama_norm(a + b, W["nw"].view(1, 1, -1)), W["w"])
W8 = (torch.randn(N, H, generator=g) * 0.2).to(torch.float8_e4m3fn)
S8 = torch.rand(N, 2, generator=g) + 0.5  # two groups of 32 columns
def fp8_layer(a, b):  # an FP8 layer after the norm (hf_tp::fp8_linear; its fp16 copy of x is made on CUDA only)
    return torch.ops.hf_tp.fp8_linear(llama_norm(a + b, W["nw"]), W8, S8, 32, 0, None)
def fp8_with_fp16_copy(a, b):  # the fp16 form's copy of x made beside the call, as fp8_linear makes it on CUDA
    x = llama_norm(a + b, W["nw"])
    return torch.ops.hf_tp.fp8_linear(x, W8, S8, 32, 0, None, x.to(torch.float16))
def fp8_with_another_copy(a, b):  # an fp16 "copy" of something else: not the form the rewrite knows
    x = llama_norm(a + b, W["nw"])
    return torch.ops.hf_tp.fp8_linear(x, W8, S8, 32, 0, None, (x * 2).to(torch.float16))
FNS = (norm_only, residual_add, gate_up_epilogue, gemma_norm, normalized_used_twice, weight_in_fp32,
       mean_over_rows, eps_as_a_tensor, weight_of_rank_3, moe_block, unfused_projections, reshape_of_another_width,
       fp8_layer, fp8_with_fp16_copy, fp8_with_another_copy)
REWRITTEN = ("norm_only", "residual_add", "gate_up_epilogue", "normalized_used_twice", "moe_block",
             "unfused_projections", "fp8_layer", "fp8_with_fp16_copy")
out = {}
# 1 row (the GEMV kernel) in fp16, 3 rows (tl.dot) in fp32: each kernel path and each dtype's graph once, in 30
# Inductor compiles instead of 60 for every pair
for rows, dtype in ((1, torch.float16), (3, torch.float32)):
    a = torch.randn(1, rows, H, generator=g)
    b = torch.randn(1, rows, H, generator=g)
    for fn in FNS:
        args = (a.to(dtype), b.to(dtype))
        saved = dict(W)
        W.update({k: (v.to(dtype) if k != "nw" or fn is not weight_in_fp32 else v) for k, v in W.items()})
        eager = fn(*args)
        torch._dynamo.reset()
        counts.clear()
        with inductor_config.patch({**OPTIONS, "fx_graph_cache": False}):  # the pass runs
            compiled = torch.compile(fn, fullgraph=True, dynamic=False)(*args)
        W.update(saved)
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

EPILOGUES = sys.argv[2] == "1"
counts = []
real = prologue_pass.fuse_rmsnorm_into_decode_linear
prologue_pass.fuse_rmsnorm_into_decode_linear = lambda graph: counts.append(real(graph)) or counts[-1]
# fused q/k/v and gate/up as on CUDA; an MoE model's router and experts on hf_tp's decode kernels
model = load_parallel_model(sys.argv[1], TPGroup(0, 1, torch.device("cpu")), dtype=torch.float32, progress=False,
                            tp_config=TPConfig(decode_gemm="triton", fuse=True, moe_decode="triton"))
model._hf_tp_in_generate = True  # as the decode loop's compiled step runs: inside generate, inputs checked once
def last_logits(ids):
    return model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1]
rows = []
for ids in (torch.tensor([[5]]), torch.tensor([[5, 9, 2]])):  # one row of x (the GEMV), three (tl.dot)
    counts.clear()
    torch._dynamo.reset()
    with torch.no_grad():
        eager = last_logits(ids)
        options = prologue_pass.inductor_options(False, EPILOGUES, True)
        with inductor_config.patch({**options, "fx_graph_cache": False}):  # the pass runs
            compiled = torch.compile(last_logits, fullgraph=True, dynamic=False)(ids)
    rows.append(dict(rewrites=sum(counts), layers=model.config.num_hidden_layers,
                     max_diff=(compiled - eager).abs().max().item(), scale=eager.abs().max().item(),
                     same_token=bool(torch.equal(compiled.argmax(-1), eager.argmax(-1)))))
print(json.dumps(rows))
"""


_run = run_interpreter_script


def test_norm_kernel_matches_the_norm_then_the_gemm():
    pytest.importorskip("triton")
    rows = _run(_KERNEL_SCRIPT)
    for row in rows.pop()["fp8"]:
        # FP8 weights: the product of the normalized x as the unfused kernel computes it (fp16: one rounding of
        # the output), h and the normalized x as eager's
        assert row["err"] < 5e-3 and row["vs_unfused"] < 2e-3 and row["op_err"] < 5e-3, row
        assert row["h_same"] and row["xn_err"] < 1e-3, row
        assert row["op_shapes"] == [[row["case"][0], row["case"][1]], [row["case"][0], row["case"][2]], [0]], row
    errors = rows.pop()["errors"]
    assert len(errors) == 9 and all(e is not None for e in errors), errors
    assert all("the norm form takes a plain x" in e for e in errors[:4]), errors
    assert all("belongs to the norm form" in e for e in errors[4:6]), errors
    assert all("must not share memory" in e for e in errors[6:8]) and "no broadcasting" in errors[8], errors
    for row in rows:
        assert row["shape"] == row["expected"] and row["dtype"] == row["ref_dtype"], row
        # fp32: summation order (the statistic's and the GEMM's); fp16: the output's rounding, and a normalized x
        # that the statistic's last bits may round to the neighbouring fp16 value
        bound = 1e-5 if row["case"][4] == "float32" else 5e-3
        assert row["err"] < bound and row["op_err"] < bound, row
        assert row["vs_unfused"] < (1e-5 if row["case"][4] == "float32" else 2e-3), row
        # the residual sum the op writes is x + residual rounded once, as eager's add
        assert row["h_same"] in (None, True), row
        assert row["op_h_shape"] == ([row["case"][0], row["case"][2]] if row["h_same"] is not None else [0]), row
        # the normalized x, written whole (no NaN left) for its other readers, as the reference normalizes (fp16:
        # up to the statistic's last bits)
        assert not row["xn_nan"] and row["xn_err"] < (1e-6 if row["case"][4] == "float32" else 1e-3), row
        # without it (the statistic summed in the loop where K is not split): as close to the truth, h written whole
        assert row["op_x_shape"] == [0] and row["without_x_out_err"] < bound, row
        assert row["without_x_out_vs_unfused"] < (1e-5 if row["case"][4] == "float32" else 2e-3), row
        assert row["without_x_out_h_same"] in (None, True), row


def test_pass_rewrites_exactly_the_llama_norm_and_keeps_the_values():
    pytest.importorskip("triton")
    result = _run(_PASS_SCRIPT)
    out, names, rewritten = result["out"], result["names"], set(result["rewritten"])
    assert len(names) == 15 and rewritten == {"norm_only", "residual_add", "gate_up_epilogue",
                                               "normalized_used_twice", "moe_block", "unfused_projections",
                                               "fp8_layer", "fp8_with_fp16_copy"}
    for case in ("1 torch.float16", "3 torch.float32"):
        for name in names:
            # in fp32 Gemma's form and a weight in fp32 are the same computation with the weight 1 + w (or w):
            # rewritten, with that weight as the op's input; in fp16 they round once where Llama's rounds twice
            expected = name in rewritten or (case.endswith("float32") and name in ("gemma_norm", "weight_in_fp32"))
            assert out[f"{name} {case}"]["rewrites"] == expected, (name, case, out)
            # fp32: summation order; fp16: Inductor computes the unfused norm without eager's intermediate
            # roundings (the residual sum, the normalized value), the kernel with them
            bound = 1e-5 if case.endswith("float32") else 5e-3
            assert out[f"{name} {case}"]["err"] < bound, (name, case, out)


@pytest.mark.parametrize("arch, epilogues", [("llama", False), ("llama", True), ("qwen3_moe", True)])
def test_both_norms_of_every_layer_are_rewritten_with_the_same_logits(tmp_path, arch, epilogues):
    pytest.importorskip("triton")
    if arch == "qwen3_moe":  # the post-attention norm feeds the router's GEMM and the experts (keep_x)
        import transformers

        config = transformers.Qwen3MoeConfig(
            vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
            head_dim=16, intermediate_size=80, moe_intermediate_size=40, num_experts=6, num_experts_per_tok=3,
            norm_topk_prob=True, max_position_embeddings=128, pad_token_id=0, tie_word_embeddings=False)
    else:
        config = tiny_config(arch)
    folder = save_tiny_model(tmp_path / arch, config)
    for row in _run(_MODEL_SCRIPT, str(folder), "1" if epilogues else "0"):
        # the input and post-attention norms of each layer; the final norm reaches the LM head through
        # logits_to_keep's slice and stays (and Qwen3's per-head q/k norms feed attention, not a GEMM)
        assert row["rewrites"] == 2 * row["layers"] == 4, row
        assert row["max_diff"] <= 1e-4 * max(1.0, row["scale"]), row
        assert row["same_token"], row


def _decode_at_tp2_with_gemm_norms(folder: str, ids: torch.Tensor, mask: torch.Tensor):
    """One rank: hf_tp's decode loop at tp 2 over gloo, its step compiled by Inductor with the norm pass (the
    loop compiles with backend="eager" off CUDA, and the option resolves off there: both set here as on CUDA),
    the GEMMs by Triton's interpreter."""
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton's kernels are defined
    os.environ["HF_TP_FAST_DECODE"] = "1"
    import torch._inductor.config as inductor_config
    from torch._inductor.compile_fx import compile_fx

    import hf_tp
    from hf_tp.generation.decode_loop import StaticDecoder
    from hf_tp.kernels import prologue_pass

    counts = []
    real = prologue_pass.fuse_rmsnorm_into_decode_linear
    prologue_pass.fuse_rmsnorm_into_decode_linear = lambda graph: counts.append(real(graph)) or counts[-1]
    compile_ = torch.compile
    torch.compile = lambda fn, **kwargs: compile_(fn, **{**kwargs, "backend": compile_fx, "options": None})
    model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=2, device="cpu", dtype=torch.float32,
                                                       tp_config=hf_tp.TPConfig(decode_gemm="triton", fuse=True))
    model._hf_tp_static_decoder = StaticDecoder(model, model.hf_tp, use_graphs=True)
    with inductor_config.patch({**prologue_pass.inductor_options(False, False, True), "fx_graph_cache": False}):
        tokens = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=8, pad_token_id=0)
    return {"tokens": tokens, "rewrites": counts}


def test_tp2_decode_loop_with_the_norm_pass_gives_transformers_tokens(tmp_path):
    """At tp 2 the residual add reads the all-reduced o_proj and down_proj outputs; with uneven heads (9 query / 3
    KV heads: 6 and 3 per rank) the ranks compile different graphs, each rewritten."""
    pytest.importorskip("triton")
    from conftest import load_reference, run_ranks

    config = tiny_config("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3)
    folder = str(save_tiny_model(tmp_path / "llama_uneven", config, seed=7))
    ids = torch.randint(1, 101, (2, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    with torch.no_grad():
        expected = load_reference(folder).generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=8,
                                                   pad_token_id=0)
    for rank, out in enumerate(run_ranks(_decode_at_tp2_with_gemm_norms, 2, folder, ids, mask, timeout=600)):
        assert torch.equal(out["tokens"], expected), (rank, out["tokens"][:, 8:].tolist(), expected[:, 8:].tolist())
        # the decode step's graph: both norms of both layers
        assert max(out["rewrites"], default=0) == 2 * config.num_hidden_layers, (rank, out["rewrites"])


def test_the_option_resolves_off_by_default_and_reaches_the_pass():
    import types

    from hf_tp.config import TPConfig
    from hf_tp.generation.decode_loop import StaticDecoder
    from hf_tp.kernels.prologue_pass import GemmFusions

    assert TPConfig().resolve("cuda", 2, environ={}).gemm_norms is False  # opt-in until measured
    assert TPConfig().resolve("cuda", 2, environ={"HF_TP_GEMM_NORMS": "1"}).gemm_norms is True
    assert TPConfig(gemm_norms=True).resolve("cpu", 1, environ={}).gemm_norms is False
    config = TPConfig(gemm_norms=True, gemm_epilogues=False, combo_kernels=False, decode_gemm="triton")
    options = StaticDecoder.inductor_options(types.SimpleNamespace(device=torch.device("cuda"), config=config,
                                                                   _pdl=False))
    fusions = options["post_grad_custom_post_pass"]
    assert isinstance(fusions, GemmFusions) and (fusions.prologues, fusions.epilogues, fusions.norms) == (
        False, False, True)
    assert fusions.uuid() != GemmFusions(False, False, False).uuid()  # FX-graph cache keys tell them apart


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize("gemm", ["qkv", "gate_up"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")
def test_gpu_norm_kernels_at_llama3_8b_widths(tp, rows, gemm):
    """The residual add + RMSNorm inside the q/k/v GEMM and inside the gate/up GEMM with its silu(gate) * up
    epilogue, bf16, at the widths of a Llama-3-8B rank of tp 1/2/4/8 (the table's configs: the GEMV or tl.dot)."""
    from hf_tp.kernels import gemv_triton
    from hf_tp.kernels.decode_gemm import glu_reference, norm_reference

    g = torch.Generator(device="cuda").manual_seed(tp * 10 + rows)
    n = (4096 + 2 * 1024) // tp if gemm == "qkv" else 2 * 14336 // tp
    glu_out = gemm == "gate_up"
    x = torch.randn(rows, 4096, device="cuda", generator=g).to(torch.bfloat16)
    r = torch.randn(rows, 4096, device="cuda", generator=g).to(torch.bfloat16)
    nw = (1 + 0.1 * torch.randn(4096, device="cuda", generator=g)).to(torch.bfloat16)
    weight = (torch.randn(n, 4096, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    h = torch.empty_like(x)
    fused = lambda: gemv_triton.launch(x, weight, glu_out=glu_out, norm_weight=nw, eps=1e-5, residual=r, h_out=h)
    got = fused()
    normed = norm_reference(x + r, nw, 1e-5)
    unfused = gemv_triton.launch(normed, weight, config={"SPLIT": 1} if glu_out else None, glu_out=glu_out)
    ref = normed.float() @ weight.float().t()
    ref = glu_reference(ref) if glu_out else ref
    rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()
    assert torch.equal(h, x + r)
    assert got.shape == unfused.shape and rel(got, ref) < 1e-2
    # the statistic's last bits (summed in another order than torch's mean) may move a normalized bf16 value by one
    # unit
    assert rel(got, unfused) < 5e-3
    assert torch.equal(got, fused())  # the same bits every call


@pytest.mark.parametrize("tp", [1, 2, 8])
@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize("scales", ["channel", "block"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")
def test_gpu_fp8_norm_kernels_at_llama3_8b_widths(tp, rows, scales):
    """FP8 weights (per channel, 128 x 128 blocks) with the norm inside, bf16 x, at the gate/up widths of a
    Llama-3-8B rank (the table's GEMV, or tl.dot in fp16 with the fp16 x made from the normalized h)."""
    from hf_tp.kernels import fp8_triton
    from hf_tp.kernels.decode_gemm import norm_reference
    from hf_tp.kernels.fp8 import fp8_linear_reference

    g = torch.Generator(device="cuda").manual_seed(tp * 10 + rows)
    n, k = 2 * 14336 // tp, 4096
    x = torch.randn(rows, k, device="cuda", generator=g).to(torch.bfloat16)
    r = torch.randn(rows, k, device="cuda", generator=g).to(torch.bfloat16)
    nw = (1 + 0.1 * torch.randn(k, device="cuda", generator=g)).to(torch.bfloat16)
    weight = (torch.randn(n, k, device="cuda", generator=g) * 0.5).to(torch.float8_e4m3fn)
    group_k = k if scales == "channel" else 128
    scale = torch.rand(n, k // group_k, device="cuda", generator=g) * 0.05 + 0.01
    h, xn = torch.empty_like(x), torch.empty_like(x)
    fused = lambda: fp8_triton.launch(x, weight, scale, group_k, 0, None,
                                      norm=dict(norm_weight=nw, eps=1e-5, residual=r, h_out=h, x_out=xn))
    got = fused()
    normed = norm_reference(x + r, nw, 1e-5)
    unfused = fp8_triton.launch(normed, weight, scale, group_k, 0, None)
    ref = fp8_linear_reference(normed.float(), weight, scale, group_k, 0)
    rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()
    assert torch.equal(h, x + r) and rel(xn, normed) < 5e-3
    assert rel(got, ref) < 1e-2 and rel(got, unfused) < 5e-3
    assert torch.equal(got, fused())  # the same bits every call


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")
@pytest.mark.parametrize("epilogues", [False, True])
def test_gpu_loop_with_gemm_norms_matches_transformers(tmp_path, monkeypatch, epilogues):
    from hf_tp.config import TPConfig
    from hf_tp.kernels import prologue_pass

    counts = []
    real = prologue_pass.fuse_rmsnorm_into_decode_linear
    monkeypatch.setattr(prologue_pass, "fuse_rmsnorm_into_decode_linear", lambda graph: counts.append(real(graph)))
    config = tiny_config("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3)
    ours, got, want = gpu_loop_and_transformers_tokens(save_tiny_model(tmp_path / "m", config),
                                                       TPConfig(gemm_norms=True, gemm_epilogues=epilogues))
    assert ours.hf_tp_config.gemm_norms and ours.hf_tp_config.decode_gemm == "triton"
    assert torch.equal(got, want), (got[:, 11:].tolist(), want[:, 11:].tolist())
    # both norms of each layer, in the decode step's graph (the prefill runs eagerly)
    assert ours._hf_tp_static_decoder.use_graphs and max(counts) == 2 * config.num_hidden_layers, counts


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")
def test_gpu_bf16_step_has_both_norms_of_every_layer_rewritten(tmp_path, monkeypatch):
    """The bf16 form of the norm (its converts, as Inductor decomposes them on CUDA) is the one the pass must
    match in the real decode step: a tiny Llama in bf16 on the GPU, one decode-sized token, with the gate/up
    epilogue as by default; the compiled forward's logits against the eager forward's."""
    import torch._inductor.config as inductor_config

    from hf_tp.assembly import load_parallel_model
    from hf_tp.config import TPConfig
    from hf_tp.kernels import prologue_pass
    from hf_tp.parallel.comm import TPGroup

    counts = []
    real = prologue_pass.fuse_rmsnorm_into_decode_linear
    monkeypatch.setattr(prologue_pass, "fuse_rmsnorm_into_decode_linear", lambda graph: counts.append(real(graph)))
    config = tiny_config("llama", hidden_size=256, intermediate_size=512, num_attention_heads=8,
                         num_key_value_heads=2)
    device = torch.device("cuda", 0)
    model = load_parallel_model(str(save_tiny_model(tmp_path / "m", config)), TPGroup(0, 1, device),
                                dtype=torch.bfloat16, progress=False,
                                tp_config=TPConfig(decode_gemm="triton", fuse=True))  # fused q/k/v and gate/up
    model._hf_tp_in_generate = True  # as the decode loop's compiled step runs
    ids = torch.tensor([[5], [17]], device=device)
    last_logits = lambda ids: model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].float()
    with torch.no_grad():
        eager = last_logits(ids)
        options = prologue_pass.inductor_options(False, True, True)
        with inductor_config.patch({**options, "fx_graph_cache": False}):
            compiled = torch.compile(last_logits, fullgraph=True, dynamic=False)(ids)
    assert counts and max(counts) == 2 * config.num_hidden_layers, counts
    assert (compiled - eager).abs().max() <= 3e-2 * eager.abs().max()  # bf16 roundings of a 2-layer step
    for row in range(ids.shape[0]):  # the same token, or a near-tie in eager's logits
        if compiled[row].argmax() != eager[row].argmax():
            top = eager[row].topk(2).values
            assert top[0] - top[1] <= 3e-2 * eager.abs().max(), (row, top)
