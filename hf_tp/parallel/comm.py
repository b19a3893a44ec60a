"""The tensor-parallel process group and thin wrappers over torch.distributed collectives.

hf_tp never invents its own transport: NCCL on GPU, gloo on CPU, through torch.distributed.
"""

from __future__ import annotations

import hashlib
import logging
import traceback
from contextlib import contextmanager
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

    @property
    def is_first(self) -> bool:
        return self.tp_rank == 0


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
    if tp.tp_size == 1 or tp.device.type != "cuda" or allreduce != "one_shot":
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


def all_gather_last_dim(tensor: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    """Concatenate every rank's equally sized tensor along the last dimension."""
    if tp.tp_size == 1:
        return tensor
    tensor = tensor.contiguous()
    if _compiling():  # gathers along dim 0, so move the split dim there and back
        gathered = funcol.all_gather_tensor(tensor.movedim(-1, 0).contiguous(), 0, tp.group or dist.group.WORLD)
        return gathered.movedim(0, -1)
    parts = [torch.empty_like(tensor) for _ in range(tp.tp_size)]
    dist.all_gather(parts, tensor, group=tp.group)
    return torch.cat(parts, dim=-1)


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
    if tp.tp_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=tp.device)
    dist.broadcast(t, src=_global_rank(tp, 0), group=tp.group)
    return int(t.item())


def _global_rank(tp: TPGroup, tp_rank: int) -> int:
    return tp_rank if tp.group is None else dist.get_global_rank(tp.group, tp_rank)


def fingerprint(*objects) -> int:
    """A 63-bit digest of tensors and plain values, to check that ranks were given the same thing."""
    digest = hashlib.sha256()

    def feed(obj):
        if isinstance(obj, torch.Tensor):
            cpu = obj.detach().to("cpu").contiguous()
            digest.update(repr((tuple(cpu.shape), str(cpu.dtype))).encode())
            digest.update(cpu.reshape(-1).view(torch.uint8).numpy().tobytes() if cpu.numel() else b"")
        elif isinstance(obj, dict):
            for key in sorted(obj, key=str):
                digest.update(str(key).encode())
                feed(obj[key])
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                feed(item)
        elif obj is None or isinstance(obj, (bool, int, float, str, torch.dtype)):
            digest.update(repr(obj).encode())
        elif hasattr(obj, "to_dict"):  # GenerationConfig and similar
            feed(obj.to_dict())
        else:
            # Objects such as streamers or logits processors differ by identity on each rank;
            # only their type is compared.
            digest.update(type(obj).__qualname__.encode())

    for obj in objects:
        feed(obj)
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def check_same_on_all_ranks(value: int, tp: TPGroup, what: str, local_error: str | None = None) -> None:
    """Raise the same ValueError on every rank if ``value`` differs between ranks, or if any rank
    found its own inputs invalid (``local_error``). One small all-gather when all is well."""
    if tp.tp_size == 1:
        if local_error:
            raise ValueError(local_error)
        return
    mine = torch.tensor([int(local_error is not None), value], dtype=torch.int64, device=tp.device)
    parts = [torch.empty_like(mine) for _ in range(tp.tp_size)]
    dist.all_gather(parts, mine, group=tp.group)
    flags = [int(p[0].item()) for p in parts]
    values = [int(p[1].item()) for p in parts]
    if any(flags):
        # Every rank saw the flags, so every rank joins this second gather of the messages.
        messages: list = [None] * tp.tp_size
        dist.all_gather_object(messages, local_error, group=tp.group)
        rank = flags.index(1)
        raise ValueError(local_error if local_error else f"tp rank {rank} rejected its inputs: {messages[rank]}")
    differing = [r for r, v in enumerate(values) if v != values[0]]
    if differing:
        raise ValueError(
            f"{what} differ across ranks (tp ranks {differing} differ from tp rank 0). In SPMD mode "
            "(torchrun, accelerate launch) every rank must pass the same inputs and arguments; "
            "build them identically on every rank, or broadcast them from rank 0."
        )


class RemoteRankError(RuntimeError):
    """Another rank failed with an exception that cannot be rebuilt here from its message."""


@contextmanager
def fail_together(tp: TPGroup, stage: str):
    """Run a block on every rank and, if it failed on any rank, raise on all of them.

    Without this, a rank whose file is missing raises while the others block forever in
    the next collective. The rank that failed re-raises its own exception; the others raise an
    exception of the same type carrying the failed rank's message and traceback.
    """
    error: BaseException | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
        error = exc
    if tp.tp_size > 1:
        report = None if error is None else (type(error), str(error), traceback.format_exc())
        reports: list = [None] * tp.tp_size
        dist.all_gather_object(reports, report, group=tp.group)
        failures = [(rank, r) for rank, r in enumerate(reports) if r is not None]
        if failures and error is None:
            rank, (cls, message, trace) = failures[0]
            text = f"tp rank {rank} failed while {stage}: {message}\n--- traceback from tp rank {rank} ---\n{trace}"
            # The same exception type on every rank, so one except clause works everywhere.
            try:
                remote = cls(text)
            except Exception:  # an exception type whose constructor wants more than a message
                remote = RemoteRankError(f"{cls.__name__}: {text}")
            raise remote
    if error is not None:
        raise error
