"""Shared by the GPU benchmark scripts: this process's hf_tp model on its GPU, and a prompt.

Under torchrun every rank joins the TP group; without it, hf_tp's parallel layers run with a TP
group of one (so tp 1 measures the same code)."""

from __future__ import annotations

import os

import torch


def load_rank_model(folder: str, dtype=torch.bfloat16):
    """(model, tp group, random 128-token prompt on the rank's device)."""
    from hf_tp.auto import init_spmd_group, load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    from hf_tp.bench import dump_stacks_periodically

    dump_stacks_periodically()  # a hang shows where every rank's Python is
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    tp = init_spmd_group(world, device) if world > 1 else TPGroup(0, 1, device)
    model = load_parallel_model(folder, tp, dtype=dtype, progress=False)
    ids = torch.randint(3, model.config.vocab_size, (1, 128), generator=torch.Generator().manual_seed(0)).to(device)
    return model, tp, ids
