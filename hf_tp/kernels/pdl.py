"""Programmatic dependent launch (PDL, Hopper and later) for hf_tp's decode kernels.

A kernel launched with ``launch_pdl`` may have its programs placed on the SMs while the kernel before it on the
stream is still finishing (also inside a CUDA graph, where the launch becomes a programmatic edge). Each such
kernel starts with ``griddepcontrol.wait`` (Triton's ``tl.extra.cuda.gdc_wait``), which returns once the kernel
before has finished and its writes are visible, so it reads and writes nothing earlier; then it lets the next
kernel be placed (``gdc_launch_dependents``). What this can save is the launch latency between two kernels, a
microsecond or two each. Off (``PDL_LAUNCH``) until measured on a GPU: benchmarks flip it.
"""

from __future__ import annotations

import functools

import torch

PDL_LAUNCH = False


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
    ``launch_pdl``): PDL where ``PDL_LAUNCH`` asks and the device and Triton support it, else none."""
    if not PDL_LAUNCH or device.type != "cuda":
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {"PDL": True, "launch_pdl": True} if _supported(index) else {}
