"""hf_tp.kernels.pdl: the switches the decode loop sets around each generate call (TPConfig.pdl). The launches
themselves, and that they give the same bits, are GPU tests (test_decode_gemm.py, test_decode_attention.py)."""

import pytest
import torch

from hf_tp.kernels import pdl


def test_launching_sets_and_restores_the_switch():
    assert pdl._ACTIVE is False
    with pdl.launching(True):
        assert pdl._ACTIVE is True
        with pdl.launching(False):
            assert pdl._ACTIVE is False
        assert pdl._ACTIVE is True
    assert pdl._ACTIVE is False
    with pytest.raises(RuntimeError), pdl.launching(True):
        raise RuntimeError("a generate call that fails")
    assert pdl._ACTIVE is False
    with pdl.launching(True):  # a CPU tensor never launches with PDL
        assert pdl.launch_args(torch.device("cpu")) == {}


def test_inductor_option_is_set_only_inside_the_block():
    import torch._inductor.config as inductor_config

    if not hasattr(inductor_config.triton, "enable_pdl"):
        assert pdl.inductor_options(True) == {}
        pytest.skip(f"torch {torch.__version__}'s Inductor has no triton.enable_pdl")
    before = inductor_config.triton.enable_pdl
    with pdl.inductor_launching(True):
        assert inductor_config.triton.enable_pdl is True
    assert inductor_config.triton.enable_pdl == before
    with pdl.inductor_launching(False):
        assert inductor_config.triton.enable_pdl == before
