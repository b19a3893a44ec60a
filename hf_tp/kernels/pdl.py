"""Programmatic dependent launch (PDL, Hopper and later) for hf_tp's decode kernels.

A kernel launched with ``launch_pdl`` may have its programs placed on the SMs while the kernel before it on the
stream is still finishing (also inside a CUDA graph, where the launch becomes a programmatic edge). Each such
kernel starts with ``griddepcontrol.wait`` (Triton's ``tl.extra.cuda.gdc_wait``), which returns once the kernel
before has finished and its writes are visible, so it reads and writes nothing earlier; then it lets the next
kernel be placed (``gdc_launch_dependents``). What this can save is the launch latency between two kernels, a
microsecond or two each. hf_tp's decode loop turns it on for its calls where ``TPConfig.pdl`` says so
(:func:`launching`); Inductor's kernels of the compiled step get the same from its own ``triton.enable_pdl``
option (:func:`inductor_options`), which the decode loop sets around the same calls.
"""

from __future__ import annotations

import contextlib
import functools

import torch

# Set by launching() around the decode loop's calls: the kernels launched (or captured) meanwhile use PDL.
_ACTIVE = False


@contextlib.contextmanager
def launching(enabled: bool):
    """hf_tp's decode kernels launched inside this block use PDL when ``enabled`` (and the device and Triton
    support it); the previous setting comes back after it."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, bool(enabled)
    try:
        yield
    finally:
        _ACTIVE = previous


def inductor_options(enabled: bool) -> dict:
    """Inductor options that make the kernels it generates use PDL too: empty when not ``enabled`` or when this
    torch has no such option."""
    if not enabled:
        return {}
    import torch._inductor.config as inductor_config

    return {"triton.enable_pdl": True} if hasattr(inductor_config.triton, "enable_pdl") else {}


def inductor_launching(enabled: bool):
    """A block in which Inductor generates and launches its kernels with PDL (``inductor_options`` set in its
    config for the block's duration, compiling and capturing included), or nothing: what the decode loop does
    around each generate call (with its other Inductor options, StaticDecoder.inductor_options), for tests that
    compile outside the loop."""
    options = inductor_options(enabled)
    if not options:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(options)


@functools.cache
def _supported(device_index: int) -> bool:
    """This Triton launches with PDL (its CUDA options have ``launch_pdl`` and its language the wait) and the GPU
    is a Hopper or later. Never in Triton's interpreter, which has no such launch."""
    try:
        import triton.language.extra.cuda as cuda_language
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    fields = getattr(CUDAOptions, "__dataclass_fields__", {})
    return (hasattr(cuda_language, "gdc_wait") and "launch_pdl" in fields
            and torch.cuda.get_device_capability(device_index)[0] >= 9)


def launch_args(device: torch.device) -> dict:
    """The extra launch arguments of a decode kernel on ``device`` (its ``PDL`` constexpr and Triton's
    ``launch_pdl``): PDL inside :func:`launching` (True) where the device and Triton support it, else none."""
    if not _ACTIVE or device.type != "cuda":
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {"PDL": True, "launch_pdl": True} if _supported(index) else {}


# Ranks get PDL from this tensor-parallel width on, where a rank's GEMMs are short enough for the launch overlap to
# pay (one H200, Llama-3-8B's rank of tp 8: 774.3 -> 885.0 tok/s; one H100, its rank of tp 4: 500.3 -> 515.0; its
# rank of tp 2 was not faster on the H200, 367.6 -> 363.8; benchmarks/RESULTS.md, 2026-12-04 seventh session,
# 2026-12-05 and 2026-12-05 thirteenth session). Layers kept in FP8 read half the bytes, so they count twice the
# width: the FP8 rank of tp 2 reads what a bf16 rank of tp 4 does (one H100: 426.3 and 429.5 -> 465.3 tok/s with
# PDL; benchmarks/RESULTS.md, 2026-12-06 twenty-first session).
PDL_MIN_TP_SIZE = 4


def resolve_pdl(config, device: torch.device, moe_kernel_modules: int, tp_size: int = 1, fp8_layers: int = 0):
    """``config`` with ``pdl`` decided where it is None (the default), on CUDA: on for a model whose MoE experts
    run hf_tp's decode kernels (``moe_kernel_modules`` > 0; qwen3-moe-mini tp 1: 609.9 -> 653.1 tok/s), and for
    ranks whose width reaches PDL_MIN_TP_SIZE, counting ``tp_size`` twice where layers keep FP8 weights
    (``fp8_layers`` > 0: half the bytes per GEMM); off for the others (dense Llama-3-8B at tp 1 and the rank of
    tp 2, FP8 at tp 1: not shown faster). Chosen once at load, so a launched model's ``hf_tp_config`` shows it."""
    if config.pdl is not None:
        return config
    import dataclasses

    width = tp_size * (2 if fp8_layers > 0 else 1)
    wanted = moe_kernel_modules > 0 or width >= PDL_MIN_TP_SIZE
    return dataclasses.replace(config, pdl=device.type == "cuda" and wanted)
