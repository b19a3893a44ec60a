"""The reverse of loading: every rank's slices put back together into the unsplit state dict.

Used by ``save_pretrained`` on a split model. The sharding plan says where each rank's pieces sit in
the full tensor (several pieces for fused tensors, trailing zero rows for padded vocab shards, the
same KV head on several ranks when KV heads are replicated), so the gather needs no per-model code.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..parallel.comm import TPGroup
from ..policies.plan import ParamShard, ShardingPlan


def gather_full(local: torch.Tensor, shard: ParamShard, tp: TPGroup) -> torch.Tensor | None:
    """The unsplit tensor on tp rank 0 (on the CPU), None elsewhere. A collective: every rank calls it."""
    dim, longest = shard.dim, max(shard.local_size)
    local = local.contiguous()
    if local.shape[dim] < longest:  # all_gather needs equal shapes: pad, the plan says what is real
        pad = list(local.shape)
        pad[dim] = longest - local.shape[dim]
        local = torch.cat([local, local.new_zeros(pad)], dim=dim)
    parts = [torch.empty_like(local) for _ in range(tp.tp_size)]
    dist.all_gather(parts, local, group=tp.group)
    if not tp.is_first:
        return None
    shape = list(local.shape)
    shape[dim] = max(stop for pieces in shard.pieces for _, stop in pieces)
    full = torch.empty(shape, dtype=local.dtype)
    for rank, part in enumerate(parts):
        offset = 0
        for start, stop in shard.pieces[rank]:
            full.narrow(dim, start, stop - start).copy_(part.narrow(dim, offset, stop - start))
            offset += stop - start
    return full


def full_state_dict(model: nn.Module, plan: ShardingPlan, tp: TPGroup,
                    transposed: frozenset[str] = frozenset()) -> dict[str, torch.Tensor] | None:
    """Parameters (unsplit, in the checkpoint's layout) and persistent buffers, on rank 0's CPU; None
    on the other ranks. Tied parameters stay one tensor under each of their names, as in
    Transformers' own state dict, so its save_pretrained drops the duplicates as usual."""
    state: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor | None] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) not in done:
            local = param.detach()
            if name in transposed:  # the layer holds (out, in); the checkpoint (in, out)
                local = local.t()
            shard = plan.param_shard(name)
            if shard is None:
                done[id(param)] = local.cpu() if tp.is_first else None
            else:
                done[id(param)] = gather_full(local, shard, tp)
        if tp.is_first:
            state[name] = done[id(param)]
    if not tp.is_first:
        return None
    for name, buffer in model.named_buffers():
        owner, _, attr = name.rpartition(".")
        if attr not in model.get_submodule(owner)._non_persistent_buffers_set:
            state[name] = buffer.detach().cpu()
    return state
