"""hf_tp's decode MoE kernels (hf_tp/kernels/moe_decode.py) against Transformers' own MoE blocks.

On CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, read when a kernel is defined), in a
spawned process so that the setting cannot leak into other tests. On CUDA (``gpu``): bf16 at Qwen3-30B-A3B's
expert shapes, the kernels captured in a CUDA graph and replayed with other routing, and the bf16 check of
benchmarks/gpu_check.py (two gloo ranks on one GPU against one-GPU Transformers) with the kernels on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import run_interpreted

from hf_tp.config import TPConfig

_BASE = dict(vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
             max_position_embeddings=128, bos_token_id=1, eos_token_id=None, pad_token_id=0, initializer_range=0.1,
             tie_word_embeddings=False)
CONFIGS = {
    "mixtral": lambda: transformers.MixtralConfig(**_BASE, intermediate_size=40, num_local_experts=4, num_experts_per_tok=2),
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(**_BASE, intermediate_size=80, head_dim=16, moe_intermediate_size=40,
                                                     num_experts=6, num_experts_per_tok=3, norm_topk_prob=True),
}


def _blocks_check() -> list[str]:
    """Transformers' sparse MoE block, then the same block with hf_tp's decode switch installed: outputs for
    1..3 tokens (kernels) and for MOE_DECODE_MAX_TOKENS + 1 tokens (Transformers' forward, bitwise)."""
    from hf_tp.kernels import moe_decode as K
    from hf_tp.kernels.moe_decode import MOE_DECODE_MAX_TOKENS
    from hf_tp.parallel.moe_decode import install_moe_decode

    failures = []
    for arch, make in CONFIGS.items():
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(make(), dtype=torch.float32).eval()
        block = model.model.layers[0].mlp
        with torch.no_grad():
            block.gate.weight[2] = block.gate.weight[1]  # a routing tie: both experts' logits equal
            inputs = {t: torch.randn(1, t, 48) for t in (1, 3, MOE_DECODE_MAX_TOKENS + 1)}
            expected = {t: block(x) for t, x in inputs.items()}
            if install_moe_decode(model, "triton") != 2:
                failures.append(f"{arch}: the switch was not installed on both experts modules")
            got = {t: block(x) for t, x in inputs.items()}
            # the other down form too: per-pair products summed by torch, or summed in the kernel
            shipped = K.DOWN_BLOCKS
            K.DOWN_BLOCKS = (*shipped[:3], not shipped[3])
            try:
                other = {t: block(inputs[t]) for t in (1, 3)}
            finally:
                K.DOWN_BLOCKS = shipped
        for t in (1, 3):
            for form, out in (("shipped", got[t]), ("other down form", other[t])):
                err = float((out - expected[t]).abs().max() / expected[t].abs().max())
                if err > 1e-5:
                    failures.append(f"{arch}: {t} tokens: kernel ({form}) rel err {err:.2e}")
        if not torch.equal(got[MOE_DECODE_MAX_TOKENS + 1], expected[MOE_DECODE_MAX_TOKENS + 1]):
            failures.append(f"{arch}: above the switch point the output is not Transformers' own")
    return failures


def _decode_check(folder: str, new_tokens: int):
    """hf_tp at tp 1 with moe_decode='triton' and decode_gemm='triton' (the CUDA defaults): the decode loop's
    greedy tokens, the resolved config, and how many routers compute their logits with the decode GEMM kernel."""
    from hf_tp.assembly import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    model = load_parallel_model(folder, TPGroup(tp_rank=0, tp_size=1, device=torch.device("cpu")), dtype=torch.float32,
                                progress=False, tp_config=TPConfig(fast_decode=True, moe_decode="triton",
                                                                   decode_gemm="triton"))
    switched = sum(hasattr(m, "_hf_tp_grouped_forward") for m in model.modules())
    routers = sum(hasattr(m, "_hf_tp_route_form") and m.decode_gemm for m in model.modules())
    prompt = torch.tensor([[1, 17, 42, 9, 77, 23]])
    with torch.no_grad():
        tokens = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False)
    return model.hf_tp_config.moe_decode, switched, routers, tokens



def test_kernels_match_transformers_blocks_interpreted():
    pytest.importorskip("triton")
    failures = run_interpreted(_blocks_check)
    assert not failures, "\n".join(failures)


def test_decode_loop_with_kernels_matches_transformers_interpreted(tmp_path):
    pytest.importorskip("triton")
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(CONFIGS["qwen3_moe"](), dtype=torch.float32).eval()
    ref.save_pretrained(tmp_path / "ckpt")
    new_tokens = 8
    with torch.no_grad():
        expected = ref.generate(torch.tensor([[1, 17, 42, 9, 77, 23]]), max_new_tokens=new_tokens, do_sample=False)
    mode, switched, routers, tokens = run_interpreted(_decode_check, str(tmp_path / "ckpt"), new_tokens)
    assert mode == "triton" and switched == 2 and routers == 2  # both MoE layers' experts and routers
    assert torch.equal(tokens, expected)


def test_kernels_support_experts_without_post_norm_attribute():
    """Transformers 5.17 (the GPU image's) sets no ``has_post_expert_norm`` on its experts modules (5.24 sets it
    to False): such a module must still get the kernels. Here the attribute is removed from a 5.24 module, which
    leaves it as 5.17 builds it."""
    from hf_tp.parallel.moe_decode import kernel_supports

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS["qwen3_moe"](), dtype=torch.float32)
    experts = model.model.layers[0].mlp.experts
    assert kernel_supports(experts)
    if "has_post_expert_norm" in vars(experts):
        del experts.has_post_expert_norm
    assert not hasattr(experts, "has_post_expert_norm") and kernel_supports(experts)
    experts.has_post_expert_norm = True  # a module that has one keeps Transformers' forward
    assert not kernel_supports(experts)


def test_moe_decode_option_resolves_once():
    pytest.importorskip("triton")
    assert TPConfig().resolve("cpu", 2, environ={}).moe_decode == "grouped"
    from hf_tp.config import _triton_available
    # measured faster on an H200 (benchmarks/RESULTS.md 2026-12-03): the default on CUDA wherever Triton imports
    assert TPConfig().resolve("cuda", 1, environ={}).moe_decode == ("triton" if _triton_available() else "grouped")
    assert TPConfig(moe_decode="triton").resolve("cuda", 1, environ={}).moe_decode == "triton"
    assert TPConfig().resolve("cuda", 1, environ={"HF_TP_MOE_DECODE": "triton"}).moe_decode == "triton"
    assert TPConfig(moe_decode="triton").resolve("cpu", 1, environ={"TRITON_INTERPRET": "1"}).moe_decode == "triton"
    with pytest.raises(ValueError, match="need Triton on CUDA"):
        TPConfig(moe_decode="triton").resolve("cpu", 1, environ={})
    with pytest.raises(ValueError, match="moe_decode"):
        TPConfig(moe_decode="fast")


def test_kernels_wait_for_the_kernel_before_only_with_pdl():
    """TPConfig.pdl: each MoE kernel (gate/up, down, down summing its pairs, the router), built for sm_90 on this
    CPU host, has the PDL wait and trigger (ACQBULK, PREEXIT in SASS) only when launched with PDL."""
    pytest.importorskip("triton")
    from test_decode_gemm import _hopper_build

    from hf_tp.kernels.moe_decode import _kernels
    from hf_tp.kernels.moe_routing_triton import route_kernel

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the kernels were defined for Triton's interpreter in this process")
    _, gate_up, down, down_sum = _kernels()
    moe = {"x_ptr": "*bf16", "w_ptr": "*bf16", "ids_ptr": "*i64", "act_ptr": "*bf16", "rw_ptr": "*fp32",
           "out_ptr": "*fp32"}
    cases = [(gate_up, moe, dict(TOP_K=8, BLOCK_N=16, BLOCK_K=256)),
             (down, moe, dict(BLOCK_N=16, BLOCK_K=256)),
             (down_sum, dict(moe, out_ptr="*bf16"), dict(TOP_K=8, TOP_K_P2=8, BLOCK_N=16, BLOCK_K=256)),
             (route_kernel, {"logits_ptr": "*fp32", "weights_ptr": "*fp32", "ids_ptr": "*i64"},
              dict(TOP_K=8, BLOCK_E=128, WARP=32, LANES_K=8, RENORMALIZE=True, ROUND_BF16=False, LIBDEVICE_EXP=True,
                   TORCH_ORDER=True))]
    for kernel, pointers, constexprs in cases:
        for pdl in (False, True):
            try:
                built = _hopper_build(kernel, pointers, dict(constexprs, PDL=pdl), 4, 1)
            except (TypeError, AttributeError) as exc:  # another Triton's compile API: nothing to check here
                pytest.skip(f"this Triton's ASTSource/compile API differs: {exc}")
            if built is None:
                pytest.skip("no cuobjdump to read the SASS")
            sass = built[2]
            assert ("ACQBULK" in sass and "PREEXIT" in sass) is pdl, (kernel.fn.__name__, pdl)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pdl_gives_the_same_bits(monkeypatch):
    """TPConfig.pdl: the router and the expert kernels, each right after a kernel that writes what it reads,
    give the bits they give without PDL, eagerly and replayed from a CUDA graph with other inputs."""
    from hf_tp.kernels import pdl as pdl_module
    from hf_tp.kernels.moe_decode import moe_experts_decode
    from hf_tp.kernels.moe_routing import moe_route

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs a Hopper or later GPU")
    gen = torch.Generator(device="cuda").manual_seed(6)
    experts, hidden, inter, top_k = 64, 2048, 768, 8
    gate_up = (torch.randn(experts, 2 * inter, hidden, device="cuda", generator=gen) * 0.02).bfloat16()
    down = (torch.randn(experts, hidden, inter, device="cuda", generator=gen) * 0.02).bfloat16()
    router = torch.randn(experts, hidden, device="cuda", generator=gen) * 0.05
    base = torch.randn(2, hidden, device="cuda", generator=gen)
    scale = torch.ones((), device="cuda")

    def block():
        x = (base * scale).bfloat16()  # a kernel right before the router and the experts, writing what they read
        weights, ids = moe_route((x.float() @ router.T), top_k, True, False)
        return moe_experts_decode(x, gate_up, down, ids, weights)

    results = {}
    for on in (False, True):
        monkeypatch.setattr(pdl_module, "_ACTIVE", on)
        assert bool(pdl_module.launch_args(base.device)) is on, "this GPU and Triton should launch with PDL"
        scale.fill_(1.0)
        eager = block().clone()
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            block()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = block()
        replayed = []
        for factor in (0.5, 2.0):
            scale.fill_(factor)
            graph.replay()
            replayed.append(out.clone())
        results[on] = (eager, replayed)
    assert torch.equal(results[False][0], results[True][0])
    assert all(torch.equal(a, b) for a, b in zip(results[False][1], results[True][1]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernels_bf16_and_cuda_graph():
    from hf_tp.kernels.moe_decode import experts_reference, moe_experts_decode

    torch.manual_seed(0)
    experts, hidden, inter, top_k = 64, 2048, 768, 8  # qwen3-moe-mini's expert shapes
    gate_up = (torch.randn(experts, 2 * inter, hidden, device="cuda") * 0.02).bfloat16()
    down = (torch.randn(experts, hidden, inter, device="cuda") * 0.02).bfloat16()
    for tokens in (1, 8):
        x = torch.randn(tokens, hidden, device="cuda").bfloat16()
        weights, ids = torch.softmax(torch.randn(tokens, experts, device="cuda"), -1).topk(top_k)
        got = moe_experts_decode(x, gate_up, down, ids, weights)
        ref = experts_reference(x, gate_up, down, ids, weights)
        assert float((got.float() - ref.float()).abs().max() / ref.float().abs().max()) < 1e-2
    # Captured once, replayed with other experts chosen: no host sync, no data-dependent shape.
    x = torch.randn(1, hidden, device="cuda").bfloat16()
    weights, ids = torch.softmax(torch.randn(1, experts, device="cuda"), -1).topk(top_k)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        moe_experts_decode(x, gate_up, down, ids, weights)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = moe_experts_decode(x, gate_up, down, ids, weights)
    new_weights, new_ids = torch.softmax(torch.randn(1, experts, device="cuda"), -1).topk(top_k)
    ids.copy_(new_ids)
    weights.copy_(new_weights)
    graph.replay()
    torch.cuda.synchronize()
    ref = experts_reference(x, gate_up, down, ids, weights)
    assert float((out.float() - ref.float()).abs().max() / ref.float().abs().max()) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe"])
def test_bf16_two_gloo_ranks_on_one_gpu_with_kernels(tmp_path, arch):
    """benchmarks/gpu_check.py's criterion (bf16 noise floor, near-tie analysis) with moe_decode='triton' on
    every rank (the documented environment override, inherited by the ranks)."""
    out = tmp_path / "gpu_check.json"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--tp-size", "2", "--one-gpu-gloo",
                           "--random-arch", arch, "--new-tokens", "64", "--json", str(out)],
                          env={**os.environ, "HF_TP_MOE_DECODE": "triton"}, capture_output=True, text=True, timeout=900)
    assert out.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["passed"], result["fail_reasons"]
