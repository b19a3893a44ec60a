"""The tensor-parallel process group and thin wrappers over torch.distributed collectives.

hf_tp never invents its own transport: NCCL on GPU, gloo on CPU, through torch.distributed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol


@dataclass(frozen=True)
class TPGroup:
    """Who this process is in the tensor-parallel group. Passed explicitly, never re-read from env."""

    tp_rank: int
    tp_size: int
    device: torch.device
    group: dist.ProcessGroup | None = None  # None: the default (world) group
    # Benchmarks only (hf-tp bench --simulate-tp): one process plays rank ``tp_rank`` of ``tp_size`` with
    # no process group; every collective is a local op of the same shapes (see the functions below).
    stand_in: bool = False

    @property
    def is_first(self) -> bool:
        return self.tp_rank == 0

    @property
    def alone(self) -> bool:
        """No other process to talk to: tp_size 1, or a simulated rank whose collectives are stand-ins."""
        return self.tp_size == 1 or self.stand_in


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def all_reduce(tensor: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    """Sum partial results across the TP group (in place in eager mode) and return the sum.

    Under torch.compile (the static-cache decode path) the functional collective is used: it is
    what Inductor traces into the graph, and CUDA graphs then replay the NCCL kernel with no
    launch overhead.
    """
    if tp.tp_size == 1:
        return tensor
    if tp.stand_in:  # compute only: the sum's shape and dtype, no communication (its cost is left out)
        return tensor.clone()
    if _compiling():
        return funcol.all_reduce(tensor, "sum", tp.group or dist.group.WORLD)
    dist.all_reduce(tensor, group=tp.group)
    return tensor


def decode_compile_options(tp: TPGroup, allreduce: str = "nccl", one_shot_max_kb: float = 128.0) -> dict:
    """Inductor options for the compiled decode forward, choosing its all-reduce (TPConfig.allreduce).

    "nccl" (default): the functional all-reduce stays an NCCL kernel (replayed inside
    the CUDA graph). "one_shot": symmetric memory is enabled for the TP group and Inductor lowers every
    all-reduce of at most ``one_shot_max_kb`` (default 128, Inductor's own) to PyTorch's
    ``symm_mem.one_shot_all_reduce`` (each rank reads its peers' buffers over NVLink; NVLink
    multicast is not used). Opt-in until benchmarks/allreduce_probe.py has measured it on two GPUs.
    All ranks agree: if enabling fails on any rank, every rank keeps NCCL (said once).
    """
    if tp.alone or tp.device.type != "cuda" or allreduce != "one_shot":
        return {}
    ok, group = 1, tp.group or dist.group.WORLD
    try:
        from torch.distributed._symmetric_memory import enable_symm_mem_for_group

        enable_symm_mem_for_group(group.group_name)
    except Exception as exc:  # noqa: BLE001 - any failure means NCCL, on every rank
        ok = 0
        logging.getLogger("hf_tp").warning("hf_tp: symmetric memory unavailable (%s: %s); all-reduces stay on NCCL",
                                           type(exc).__name__, exc)
    flag = torch.tensor([ok], device=tp.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=tp.group)
    if not int(flag.item()):
        return {}
    max_bytes = int(one_shot_max_kb * 1024)
    return {"_collective.auto_select": True, "_collective.one_shot_all_reduce_threshold_bytes": max_bytes}


# torch 2.13 renamed all_gather_into_tensor (and warns on the old name); torch 2.11 has only the old one.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def all_gather_last_dim(tensor: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    """Concatenate every rank's equally sized tensor along the last dimension."""
    if tp.tp_size == 1:
        return tensor
    tensor = tensor.contiguous()
    if tp.stand_in:  # compute only: the gathered shape, every part this rank's own
        return torch.cat([tensor] * tp.tp_size, dim=-1)
    # Gathers along dim 0, so the split dim moves there and back. Eager and compiled send the same bytes (the
    # moved layout): a rank that runs a forward eagerly (its compile failed) gathers with ranks that run it compiled.
    moved = tensor.movedim(-1, 0).contiguous()
    if _compiling():
        return funcol.all_gather_tensor(moved, 0, tp.group or dist.group.WORLD).movedim(0, -1)
    gathered = moved.new_empty((tp.tp_size * moved.shape[0], *moved.shape[1:]))
    _all_gather_single(gathered, moved, group=tp.group)
    return gathered.movedim(0, -1).contiguous()  # contiguous, as the concatenation it replaced (callers may view it)


def all_gather_uneven(tensor: torch.Tensor, sizes: tuple[int, ...], dim: int, tp: TPGroup) -> torch.Tensor:
    """Concatenate every rank's tensor along ``dim``, where rank r's is ``sizes[r]`` long there
    (uneven head splits): padded to the longest for one equally sized gather, the padding cut off."""
    if tp.tp_size == 1:
        return tensor
    longest = max(sizes)
    moved = tensor.movedim(dim, -1)
    if moved.shape[-1] < longest:
        moved = torch.nn.functional.pad(moved, (0, longest - moved.shape[-1]))
    gathered = all_gather_last_dim(moved, tp)
    parts = [gathered[..., r * longest: r * longest + size] for r, size in enumerate(sizes)]
    return torch.cat(parts, dim=-1).movedim(-1, dim)


def broadcast_int(value: int, tp: TPGroup) -> int:
    """Rank 0's integer, on every rank."""
    if tp.alone:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=tp.device)
    dist.broadcast(t, src=_global_rank(tp, 0), group=tp.group)
    return int(t.item())


def min_int(value: int, tp: TPGroup) -> int:
    """The smallest of the ranks' integers, on every rank."""
    if tp.alone:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=tp.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=tp.group)
    return int(t.item())


def _global_rank(tp: TPGroup, tp_rank: int) -> int:
    return tp_rank if tp.group is None else dist.get_global_rank(tp.group, tp_rank)
