"""The launcher side of SPMD mode: is this process one rank of torchrun / accelerate launch, which
device it uses, and its process group (created here, and torn down at exit through teardown.py)."""

from __future__ import annotations

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from .config import DEFAULT_WORKER_ENV
from .parallel.comm import TPGroup


def launcher_world_size() -> int | None:
    """WORLD_SIZE set by torchrun / accelerate launch, or None in a plain process."""
    value = os.environ.get("WORLD_SIZE")
    return int(value) if value else None


def resolve_device(device) -> torch.device:
    """'cuda' / 'cpu' / None (cuda when available) -> the device type this process uses."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):  # torch's message lists every device type it knows
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}.") from None
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {str(device)!r}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but CUDA is not available here; pass device='cpu' to run with gloo.")
    return device


def init_spmd_group(tp_size: int, device: torch.device, timeout_s: float | None = None,
                    worker_env: dict | None = None) -> TPGroup:
    """The TP group of a launcher-started process: one rank per process, world == TP group.
    ``worker_env`` (TPConfig.worker_env) is set where the launcher left it unset, before NCCL starts."""
    world = launcher_world_size()
    if world != tp_size:
        raise ValueError(
            f"tp_size={tp_size} but the launcher started WORLD_SIZE={world} processes. hf_tp splits the model over "
            f"all of them: launch with --nproc-per-node {tp_size} (torchrun) or --num_processes {tp_size} "
            f"(accelerate launch), or pass tp_size={world}."
        )
    for key, value in (worker_env if worker_env is not None else DEFAULT_WORKER_ENV).items():
        os.environ.setdefault(key, value)  # what single-controller workers get (TPConfig.worker_env)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", tp_size))
        if torch.cuda.device_count() < local_world:
            raise ValueError(
                f"{local_world} ranks on this host need {local_world} GPUs but only {torch.cuda.device_count()} are "
                "visible; lower tp_size or make more GPUs visible (CUDA_VISIBLE_DEVICES)."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        extra = {"device_id": device} if device.type == "cuda" else {}
        if timeout_s:
            extra["timeout"] = timedelta(seconds=timeout_s)
        dist.init_process_group(backend=backend, **extra)
        # We created the group, so we tear it down, at exit, before the interpreter does: left to
        # interpreter teardown, a rank can still touch the rendezvous store after the host that
        # serves it (another node's launcher) is gone, and abort.
        atexit.register(_destroy_group)
    elif backend not in str(dist.get_backend()):
        raise ValueError(
            f"torch.distributed is already initialised with backend {dist.get_backend()!r}, which cannot run "
            f"{device.type} collectives; initialise it with {backend!r} or pass device={'cpu' if backend == 'gloo' else 'cuda'!r}."
        )
    return TPGroup(tp_rank=dist.get_rank(), tp_size=tp_size, device=device)


def _destroy_group() -> None:
    from .parallel.teardown import shutdown_group

    shutdown_group()
