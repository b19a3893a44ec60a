"""Self-resetting int32 counters for kernels whose last program finishes the work of all the others (decode
attention's split combine, the decode GEMMs' split-K sum).

A kernel's programs each add one to their block's counter with acquire-release order; the program that sees the
count of all others does the final step and sets the counter back to zero. So the counters are zero between calls
and no memset enters a CUDA graph. A pool holds, per device, a list of buffers (the last one the largest): buffers
are never freed, since a captured graph keeps the address it was captured with. Kernels on one stream run one at
a time, so every call of a device shares its buffer.
"""

from __future__ import annotations

import torch


def reserve(pool: dict, device, count: int, minimum: int) -> torch.Tensor:
    """The device's zeroed counters, at least ``count`` (allocated, at least ``minimum`` or twice ``count``, when
    the last buffer is smaller). Called outside any CUDA graph (at load, in tests): a call that may run inside a
    graph pool (CUDA-graph trees' warm-up, torch.compile's "reduce-overhead") must not allocate, since the pool
    could hand the block out again."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # the key a call looks up: its tensors' device
        device = torch.device("cuda", torch.cuda.current_device())
    held = pool.setdefault(device, [])
    if not held or held[-1].numel() < count:
        held.append(torch.zeros(max(minimum, 2 * count), dtype=torch.int32, device=device))
    return held[-1]


def lookup(pool: dict, device: torch.device, count: int, minimum: int) -> torch.Tensor | None:
    """The device's zeroed counters, at least ``count``; None on CUDA when not reserved (the caller takes its
    path without counters). Off CUDA (Triton's interpreter) allocated on first use: no graph pools there."""
    held = pool.get(device)
    if held and held[-1].numel() >= count:
        return held[-1]
    if device.type == "cuda":
        return None
    return reserve(pool, device, count, minimum)
