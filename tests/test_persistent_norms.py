"""TPConfig.persistent_norms: Inductor compiles the decode loop's step with row reductions up to 8192 wide held in
registers (hf_tp/kernels/persistent_norms.py).

- CPU: which reductions the choices make persistent (inner, of a known width up to MAX_ROW); the option reaches
  the loop's Inductor options only on CUDA; the loop's config block installs the choices and puts back the ones
  it found.
- GPU (``gpu``): a fused residual add + RMSNorm of a hidden size of 4096 and 8192 compiles to a persistent
  reduction with the option (a looped one without) and gives eager's values; the decode loop with the option
  gives Transformers' greedy tokens on a tiny Llama whose hidden size (1280) is past Inductor's own limit of 1024.
  Its speed: benchmarks/next_cycle.sh.
"""

from __future__ import annotations

import types

import pytest
import sympy
import torch

from conftest import gpu_loop_and_transformers_tokens, save_tiny_model, tiny_config

from hf_tp.kernels import persistent_norms


def test_inner_rows_of_a_known_width_up_to_the_limit_are_persistent():
    from torch._inductor.runtime.hints import ReductionHint

    wide = persistent_norms.wide_inner_row
    assert wide(ReductionHint.INNER, sympy.Integer(4096), False)
    assert wide(ReductionHint.INNER, sympy.Integer(persistent_norms.MAX_ROW), False)
    assert not wide(ReductionHint.INNER, sympy.Integer(persistent_norms.MAX_ROW + 1), False)  # a vocabulary
    assert not wide(ReductionHint.INNER, sympy.Symbol("s0", positive=True, integer=True), False)  # symbolic
    assert not wide(ReductionHint.OUTER, sympy.Integer(4096), False)  # across rows: Inductor's choice
    assert not wide(ReductionHint.DEFAULT, sympy.Integer(4096), False)
    assert not wide(ReductionHint.INNER, sympy.Integer(4096), True)  # cooperative reductions split rows already


def test_the_loop_asks_for_the_choices_only_on_cuda_and_when_configured():
    from hf_tp.config import TPConfig
    from hf_tp.generation.decode_loop import StaticDecoder

    def options(device, **config):
        config = TPConfig(**{"combo_kernels": False, "gemm_prologues": False, "decode_gemm": "triton", **config})
        return StaticDecoder.inductor_options(types.SimpleNamespace(device=torch.device(device), config=config,
                                                                    _pdl=False))

    assert options("cpu", persistent_norms=True) == {}  # no compiled step on CPU
    assert options("cuda", persistent_norms=False) == {}
    chosen = options("cuda", persistent_norms=True)["inductor_choices_class"]()
    assert isinstance(chosen, persistent_norms.PersistentRowNorms)
    assert TPConfig().resolve("cuda", 1, environ={}).persistent_norms is True  # the default with CUDA
    assert TPConfig().resolve("cuda", 1, environ={"HF_TP_PERSISTENT_NORMS": "0"}).persistent_norms is False
    assert TPConfig(persistent_norms=True).resolve("cpu", 1, environ={}).persistent_norms is False


def test_the_loops_config_block_installs_the_choices_and_puts_back_the_previous_ones():
    import torch._inductor.config as inductor_config
    from torch._inductor.virtualized import V

    from hf_tp.generation.decode_loop import inductor_config_patch

    before = V.choices
    options = persistent_norms.inductor_options(True)
    with inductor_config_patch(options):
        assert isinstance(V.choices, persistent_norms.PersistentRowNorms)
        assert inductor_config.inductor_choices_class is options["inductor_choices_class"]  # the cache key
    assert V.choices is before and inductor_config.inductor_choices_class is None
    with inductor_config_patch({"combo_kernels": True}):
        assert V.choices is before


def _add_rms_norm(x, residual, weight):
    """The residual add and Llama's RMSNorm as Transformers writes them (the step's pattern)."""
    hidden = x + residual
    h32 = hidden.float()
    normed = h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-5)
    return weight * normed.to(x.dtype), hidden


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")
@pytest.mark.parametrize("width", [4096, 8192])
def test_gpu_add_rms_norm_compiles_to_one_persistent_reduction(width):
    import torch._inductor.config as inductor_config
    from torch._inductor.utils import run_and_get_code

    gen = torch.Generator(device="cuda").manual_seed(width)
    x, residual = (torch.randn(1, width, device="cuda", generator=gen, dtype=torch.bfloat16) for _ in range(2))
    weight = torch.randn(width, device="cuda", generator=gen, dtype=torch.bfloat16)
    want = _add_rms_norm(x, residual, weight)
    kinds = {}
    for enabled in (False, True):
        torch._dynamo.reset()
        with inductor_config.patch(fx_graph_cache=False):
            got, code = run_and_get_code(persistent_norms.compiled_with_persistent_norms(_add_rms_norm, enabled),
                                         x, residual, weight)
        code = "\n".join(code)
        kinds[enabled] = ("triton_per_" in code, "triton_red_" in code)
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)  # the residual sum: exact
        torch.testing.assert_close(got[0].float(), want[0].float(), rtol=1.6e-2, atol=1e-2)  # one bf16 step
    assert kinds == {False: (False, True), True: (True, False)}, kinds


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")
def test_gpu_loop_with_persistent_norms_matches_transformers(tmp_path, monkeypatch):
    from hf_tp.config import TPConfig

    chosen = []
    real = persistent_norms.wide_inner_row
    monkeypatch.setattr(persistent_norms, "wide_inner_row",
                        lambda *args: chosen.append(real(*args)) or chosen[-1])
    config = tiny_config("llama", hidden_size=1280, num_attention_heads=10, num_key_value_heads=2,
                         intermediate_size=256)
    ours, got, want = gpu_loop_and_transformers_tokens(save_tiny_model(tmp_path / "m", config),
                                                       TPConfig(persistent_norms=True))
    assert ours.hf_tp_config.persistent_norms
    assert torch.equal(got, want), (got[:, 11:].tolist(), want[:, 11:].tolist())
    assert ours._hf_tp_static_decoder.use_graphs and any(chosen), chosen  # the 1280-wide norms became persistent
