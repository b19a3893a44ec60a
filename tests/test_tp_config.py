"""hf_tp.TPConfig: device defaults, the documented environment overrides (read in resolve() only), and
clear errors for bad values. Pure: no process group."""

from __future__ import annotations

import os

import pytest
import torch

import hf_tp
from hf_tp.config import DEFAULT_WORKER_ENV
from hf_tp.kernels.pdl import resolve_pdl


def test_defaults_resolve_per_device():
    cpu, cuda1, cuda2 = (hf_tp.TPConfig().resolve(d, t, environ={}) for d, t in (("cpu", 2), ("cuda", 1), ("cuda", 2)))
    assert (cpu.fast_decode, cpu.fuse) == (False, False)  # nothing to capture; fused copies would double RSS
    assert (cuda1.fast_decode, cuda1.fuse) == (True, True)
    assert (cuda2.fast_decode, cuda2.fuse) == (False, True)  # opt-in at tp > 1 until the 2-GPU run
    assert cpu.load_threads == min(4, os.cpu_count() or 1) and cpu.worker_env == DEFAULT_WORKER_ENV
    # What applies on CPU, not the CUDA options (issue 20: a CPU model showed allreduce='nccl', cuda_graphs=True).
    assert (cpu.cuda_graphs, cpu.allreduce, cpu.pinned_load) == (False, "gloo", False)
    assert (cuda2.cuda_graphs, cuda2.allreduce, cuda2.pinned_load) == (True, "nccl", True)
    # Programmatic dependent launch: a CUDA launch; on CUDA decided at load, on for MoE kernel models only.
    assert (cpu.pdl, cuda1.pdl, cuda2.pdl) == (False, None, None)
    assert hf_tp.TPConfig(pdl=True).resolve("cpu", 2, environ={}).pdl is False
    assert hf_tp.TPConfig().resolve("cuda", 1, environ={"HF_TP_PDL": "1"}).pdl is True
    assert [resolve_pdl(cuda1, torch.device("cuda", 0), moe).pdl for moe in (0, 24)] == [False, True]
    assert resolve_pdl(cuda1, torch.device("cpu"), 24).pdl is False
    # dense ranks from PDL_MIN_TP_SIZE on (measured faster at the ranks of tp 4 and 8, not at tp 2)
    assert [resolve_pdl(cuda1, torch.device("cuda", 0), 0, tp).pdl for tp in (2, 4, 8)] == [False, True, True]
    assert resolve_pdl(cuda1, torch.device("cpu"), 0, 8).pdl is False
    # layers kept in FP8 count the width twice (half the bytes): from tp 2 on (measured faster at its rank of tp 2)
    assert [resolve_pdl(cuda1, torch.device("cuda", 0), 0, tp, fp8_layers=224).pdl for tp in (1, 2, 4)] == [
        False, True, True]
    assert resolve_pdl(cuda1, torch.device("cpu"), 0, 2, fp8_layers=224).pdl is False
    assert resolve_pdl(hf_tp.TPConfig(pdl=False).resolve("cuda", 1, environ={}), torch.device("cuda"), 24).pdl is False
    # Inductor's combo kernels for the compiled step: on with CUDA, where there is a compiled step.
    assert (cpu.combo_kernels, cuda1.combo_kernels, cuda2.combo_kernels) == (False, True, True)
    assert hf_tp.TPConfig().resolve("cuda", 1, environ={"HF_TP_COMBO_KERNELS": "0"}).combo_kernels is False
    assert hf_tp.TPConfig(combo_kernels=True).resolve("cpu", 1, environ={}).combo_kernels is False
    # The GEMM prologue pass (silu * up inside the down projection's GEMM): opt-in, and only with CUDA.
    assert (cpu.gemm_prologues, cuda1.gemm_prologues, cuda2.gemm_prologues) == (False, False, False)
    assert hf_tp.TPConfig().resolve("cuda", 2, environ={"HF_TP_GEMM_PROLOGUES": "1"}).gemm_prologues is True
    assert hf_tp.TPConfig(gemm_prologues=True).resolve("cpu", 1, environ={}).gemm_prologues is False
    # The prologue and the epilogue make the same activation: asking for the prologue turns the epilogue's default
    # off, and asking for both is an error.
    prologue = hf_tp.TPConfig(gemm_prologues=True).resolve("cuda", 2, environ={})
    assert (prologue.gemm_prologues, prologue.gemm_epilogues) == (True, False)
    with pytest.raises(ValueError, match="choose one"):
        hf_tp.TPConfig(gemm_prologues=True, gemm_epilogues=True).resolve("cuda", 2, environ={})
    # The epilogue form (silu * up in the gate/up GEMM) and persistent norms: on with CUDA, where there is a
    # compiled step.
    assert (cpu.gemm_epilogues, cuda1.gemm_epilogues, cuda2.gemm_epilogues) == (False, True, True)
    assert hf_tp.TPConfig().resolve("cuda", 2, environ={"HF_TP_GEMM_EPILOGUES": "0"}).gemm_epilogues is False
    assert hf_tp.TPConfig(gemm_epilogues=True).resolve("cpu", 1, environ={}).gemm_epilogues is False
    assert (cpu.persistent_norms, cuda1.persistent_norms, cuda2.persistent_norms) == (False, True, True)
    # Asked for or set by the environment, they still do not apply on CPU.
    asked = hf_tp.TPConfig(cuda_graphs=True, allreduce="one_shot", pinned_load=True)
    assert asked.resolve("cpu", 2, environ={"HF_TP_CUDA_GRAPHS": "1"}) == cpu
    # Explicit values stay; resolving twice changes nothing.
    explicit = hf_tp.TPConfig(fast_decode=True, fuse=False, load_threads=3).resolve("cuda", 2, environ={})
    assert (explicit.fast_decode, explicit.fuse, explicit.load_threads) == (True, False, 3)
    assert explicit.resolve("cuda", 2, environ={}) == explicit


def test_environment_overrides_are_read_by_resolve():
    environ = {"HF_TP_FAST_DECODE": "1", "HF_TP_FUSE": "0", "HF_TP_ALLREDUCE": "one_shot", "HF_TP_LOAD_CHUNK_MB": "2.5",
               "HF_TP_LOAD_BUFFERS": "2", "HF_TP_REDUCE_FP32": ""}  # empty: not set
    config = hf_tp.TPConfig(fast_decode=False, fuse=True).resolve("cuda", 2, environ=environ)
    assert (config.fast_decode, config.fuse, config.allreduce) == (True, False, "one_shot")
    assert (config.load_chunk_mb, config.load_buffers, config.reduce_fp32) == (2.5, 2, True)


@pytest.mark.parametrize("make, match", [
    (lambda: hf_tp.TPConfig(allreduce="ring"), "allreduce='ring'"),
    (lambda: hf_tp.TPConfig(load_threads=0), "load_threads=0"),
    (lambda: hf_tp.TPConfig(allreduce="gloo").resolve("cuda", 2, environ={}), "what a CPU model resolves to"),
    (lambda: hf_tp.TPConfig().resolve("cpu", 2, environ={"HF_TP_FUSE": "yes"}), r"\$HF_TP_FUSE='yes'.*0 or 1"),
    (lambda: hf_tp.TPConfig().resolve("cpu", 2, environ={"HF_TP_LOAD_THREADS": "many"}), "HF_TP_LOAD_THREADS"),
])
def test_bad_values_say_what_is_wrong(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_tp_config_needs_a_split_model(tmp_path):
    with pytest.raises(ValueError, match="tp_config applies to tensor-parallel models"):
        hf_tp.AutoModelForCausalLM.from_pretrained(str(tmp_path), tp_size=1, tp_config=hf_tp.TPConfig())
    from hf_tp.assembly import resolve_tp_config

    with pytest.raises(TypeError, match="must be an hf_tp.TPConfig"):
        resolve_tp_config({"fuse": True}, "cpu", 2)


@pytest.mark.parametrize("option", ["timeout_s", "startup_timeout_s", "auto_restart"])
def test_handle_options_are_from_pretrained_arguments(tmp_path, option):
    """Issue 20: TPConfig(timeout_s=120) was a bare TypeError. It says where the option goes; and the option
    is refused, clearly, where no handle exists to take it (tp_size 1: plain Transformers)."""
    with pytest.raises(TypeError, match=rf"TPConfig\({option}=120\).*from_pretrained\(name, tp_size=2, {option}=120\)"):
        hf_tp.TPConfig(**{option: 120})
    with pytest.raises(ValueError, match=rf"{option} configure the single-controller handle.*tp_size=1"):
        hf_tp.AutoModelForCausalLM.from_pretrained(str(tmp_path), tp_size=1, **{option: 120})
