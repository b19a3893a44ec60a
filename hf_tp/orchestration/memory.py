"""Per-rank memory: the pre-flight check before loading, the optional cap, and memory() reports."""

from __future__ import annotations

import resource

import torch

from ..errors import ShardingError


def host_available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# A kept FP8 weight: 1 byte per element, plus its per-row fp32 scales, one per 128 columns (block and per-channel
# formats alike, counted at the block format's size: an upper bound).
FP8_BYTES_PER_ELEMENT = 1 + 4 / 128


def shard_bytes(model, plan, tp_rank: int, dtype: torch.dtype, fp8_names=frozenset()) -> int:
    """Bytes of this rank's parameters, from a meta skeleton and its plan (no weights read). ``fp8_names``: the
    parameters that will stay FP8 (TPConfig.fp8_weights), counted at FP8_BYTES_PER_ELEMENT."""
    total, seen = 0, set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        shard = plan.param_shard(name)
        numel = param.numel()
        if shard is not None:
            numel = numel // param.shape[shard.dim] * shard.local_size[tp_rank]
        if name in fp8_names:
            total += int(numel * FP8_BYTES_PER_ELEMENT)
        else:
            total += numel * (torch.finfo(dtype).bits // 8 if param.is_floating_point() else param.element_size())
    return total


def preflight(need_bytes: int, device: torch.device, cap_bytes: int | None, tp_rank: int) -> None:
    """Refuse to load when the shard plus KV budget cannot fit, instead of failing halfway with an OOM."""
    gib = 2**30
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        limit = min(free, cap_bytes) if cap_bytes else free
        if cap_bytes:
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), device)
    else:
        limit = min(host_available_bytes() or need_bytes, cap_bytes) if cap_bytes else host_available_bytes()
    if limit and need_bytes > limit:
        raise ShardingError(
            f"tp rank {tp_rank} needs {need_bytes / gib:.2f} GiB (weights shard + KV-cache budget) but only "
            f"{limit / gib:.2f} GiB is available on {device}{' under max_memory_per_gpu' if cap_bytes else ''}. "
            "Use a larger tp_size, a smaller dtype (torch.bfloat16), a lower kv_cache_tokens, or free device memory."
        )


def memory_report(model, tp_rank: int, device: torch.device, kv_cache_bytes: int) -> dict:
    from ..parallel.fp8 import fp8_scale_bytes

    # FP8 layers (TPConfig.fp8_weights="keep") count their 1-byte weights and their scales.
    weights = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    weights += fp8_scale_bytes(model)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        # CPU: the process's resident set stands for reserved, its high-water mark for peak.
        with open("/proc/self/statm") as f:
            reserved = int(f.read().split()[1]) * resource.getpagesize()
        allocated = weights + kv_cache_bytes
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        free = host_available_bytes()
    return {"rank": tp_rank, "device": str(device), "allocated_bytes": allocated, "reserved_bytes": reserved,
            "peak_bytes": peak, "free_bytes": free, "weights_bytes": weights, "kv_cache_bytes": kv_cache_bytes}
