"""One rank of a tp-N model, alone on one device: ``hf-tp bench --simulate-tp N``.

The rank's own work (its shard shapes, from the real sharding plan) is what a decode step costs before any
communication; measuring it on one GPU says how far the step is from its bandwidth floor at every width,
without N GPUs. The rank is the widest one (the most bytes: with uneven heads the ranks differ, and the
slowest rank sets the pace). Its collectives are local stand-ins of the same shapes (TPGroup.stand_in), so the
rows are "compute only": an upper bound on what the real tp-N run can reach.
"""

from __future__ import annotations

import torch


def rank_bytes(planned) -> list[int]:
    """Bytes of parameters each rank holds under ``planned.plan`` (from the full-shape meta skeleton):
    split tensors at their local size along the split dim (vocab padding included), the rest whole."""
    plan, sizes = planned.plan, [0] * planned.plan.tp_size
    for name, param in planned.skeleton.named_parameters():
        shard = plan.param_shard(name)
        nbytes = param.numel() * param.element_size()
        for r in range(plan.tp_size):
            sizes[r] += nbytes if shard is None else nbytes // param.shape[shard.dim] * shard.local_size[r]
    return sizes


def widest_rank(planned) -> tuple[int, list[int]]:
    """(the rank holding the most bytes, lowest on a tie; every rank's bytes)."""
    sizes = rank_bytes(planned)
    return sizes.index(max(sizes)), sizes


def load_simulated_rank(model_path, tp_size: int, device: torch.device, dtype=None, tp_config=None, progress=False):
    """(model, rank, bytes of that rank): the widest rank of a tp-``tp_size`` split of ``model_path``, built and
    read exactly as that rank builds it, on ``device``, with stand-in collectives. No process group."""
    from ..assembly import build_rank_model, plan_model, resolve_tp_config
    from ..parallel.comm import TPGroup

    planned = plan_model(str(model_path), tp_size, dtype)
    rank, sizes = widest_rank(planned)
    tp = TPGroup(tp_rank=rank, tp_size=tp_size, device=torch.device(device), stand_in=True)
    config = resolve_tp_config(tp_config, tp.device.type, tp_size)
    model = build_rank_model(planned, tp, config, progress=progress)
    return model, rank, sizes[rank] + _fp8_difference(model, planned.dtype)


def _fp8_difference(model, dtype) -> int:
    """Bytes a rank holds beyond (negative: below) the plan's count, which sizes every weight in the model's
    dtype: layers that kept their FP8 slices hold one byte per weight plus their scales."""
    from ..parallel.fp8 import fp8_scale_bytes

    kept = [m.weight.numel() for m in model.modules() if getattr(m, "fp8_scale", None) is not None]
    if not kept:
        return 0
    return fp8_scale_bytes(model) - sum(kept) * (torch.empty((), dtype=dtype).element_size() - 1)

