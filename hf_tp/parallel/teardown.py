"""Leaving a process group without hanging: graphs released first, ranks agree, destroy bounded.

NCCL's communicator teardown waits until every CUDA graph that captured one of its kernels has
been destroyed (PyTorch issue 115388): a process that still holds its decode graphs when it calls
``destroy_process_group()`` waits forever, at exit, on every rank (seen on 2 x H200, 2026-11-30,
benchmarks/RESULTS.md). So the objects that capture graphs register here, and ``shutdown_group``
runs the steps in the order that cannot hang:

  1. every registered owner drops its graphs (``release_graphs()``), and the device drains;
  2. the ranks meet at a barrier, bounded: a rank that died or hangs must not keep the others;
  3. ``destroy_process_group()`` runs in a helper thread, bounded; past the bound the group is
     aborted (``_abort_process_group``), which returns whatever NCCL is waiting for.

A script that calls ``torch.distributed.destroy_process_group()`` itself (common at the end of torchrun scripts)
would reach NCCL before step 1: ``guard_destroy`` (installed when a graph owner registers in a process of a group
of several ranks) wraps that function so that it releases the graphs first.

The barrier waits up to ``barrier_timeout_s`` for the slowest rank, the destroy up to ``destroy_timeout_s``;
when nothing is wrong both return at once (world size 1 on an H200: 2.4 s including the graph release and
NCCL's barrier, benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import weakref
from datetime import timedelta

import torch
import torch.distributed as dist

logger = logging.getLogger("hf_tp")

# Objects with a release_graphs() method (the decode loop); weak, so registering keeps nothing alive.
_graph_owners: "weakref.WeakSet" = weakref.WeakSet()


def register_graph_owner(owner) -> None:
    """``owner.release_graphs()`` will be called before the process group is destroyed: by hf_tp's own teardown
    at exit, and, in a process of a group of several ranks, by ``torch.distributed.destroy_process_group`` called
    from user code (``guard_destroy``)."""
    _graph_owners.add(owner)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        guard_destroy()


def guard_destroy() -> None:
    """Wrap ``torch.distributed.destroy_process_group`` (once) so that destroying the default group first releases
    every registered owner's graphs: NCCL waits for live graphs that hold its kernels (the module docstring). The
    suspected hang of benchmarks/gpu_check.py's ranks, which call it themselves after decoding with the loop at tp 2
    (2 x H200, 2026-12-04, benchmarks/RESULTS.md). Releasing costs nothing the model needs: the loop captures again
    on its next call. If the release fails (a CUDA error), the group is destroyed all the same. A script that bound
    the function by name before a graph owner registered (``from torch.distributed import destroy_process_group``
    at its top) calls the unwrapped one; hf_tp's exit teardown still releases first."""
    current = dist.destroy_process_group
    if getattr(current, "hf_tp_unguarded", None) is not None:  # wrapped already (also across a module reload)
        return

    @functools.wraps(current)
    def destroy_process_group(group=None, *args, **kwargs):
        if group is None or group is dist.GroupMember.WORLD:  # a subgroup's communicator is not the graphs'
            try:
                release_graphs()
            except Exception as exc:  # noqa: BLE001 - the destroy asked for still happens
                logger.warning("hf_tp: releasing CUDA graphs before destroy_process_group failed (%s: %s)",
                               type(exc).__name__, exc)
        return current(group, *args, **kwargs)

    destroy_process_group.hf_tp_unguarded = current
    dist.destroy_process_group = destroy_process_group
    dist.distributed_c10d.destroy_process_group = destroy_process_group


def _unguarded_destroy():
    """torch's own destroy_process_group, whether or not guard_destroy wrapped it."""
    return getattr(dist.destroy_process_group, "hf_tp_unguarded", dist.destroy_process_group)


def release_graphs() -> int:
    """Drop every registered owner's CUDA graphs and wait for the device; returns how many owners."""
    owners = list(_graph_owners)
    for owner in owners:
        try:
            owner.release_graphs()
        except Exception as exc:  # noqa: BLE001 - teardown goes on; the bounded destroy still protects us
            logger.warning("hf_tp: releasing CUDA graphs failed (%s: %s)", type(exc).__name__, exc)
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return len(owners)


def _bounded(fn, timeout_s: float) -> bool:
    """Run ``fn`` in a daemon thread; True if it returned (or raised) within ``timeout_s``."""
    done = threading.Event()
    # The current CUDA device is per thread: the helper thread must run NCCL on this rank's GPU.
    device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def run():
        try:
            if device is not None:
                torch.cuda.set_device(device)
            fn()
        except Exception as exc:  # noqa: BLE001 - reported; the caller only needs to know it ended
            logger.debug("hf_tp: teardown step raised %s: %s", type(exc).__name__, exc)
        finally:
            done.set()

    threading.Thread(target=run, name="hf_tp-teardown", daemon=True).start()
    return done.wait(timeout_s)


def _barrier(timeout_s: float) -> None:
    if dist.get_backend() == "gloo":
        # Leave together: a gloo rank that tore its group down while a peer was still finishing aborted
        # now and then at exit ("terminate called without an active exception", about 1 torchrun run in
        # 15 on CPU). monitored_barrier is gloo's bounded barrier.
        dist.monitored_barrier(timeout=timedelta(seconds=timeout_s))
    else:
        dist.barrier()


def shutdown_group(barrier_timeout_s: float = 10.0, destroy_timeout_s: float = 5.0) -> str:
    """Release graphs, agree, destroy the default process group, each step bounded.

    Returns what happened: "not initialized", "destroyed" or "aborted"."""
    release_graphs()
    if not dist.is_initialized():
        return "not initialized"
    if not _bounded(lambda: _barrier(barrier_timeout_s), barrier_timeout_s + 1):
        logger.warning("hf_tp: the other ranks did not reach the exit barrier within %.0f s; leaving without them.",
                       barrier_timeout_s)
    if _bounded(_unguarded_destroy(), destroy_timeout_s):  # the graphs were released above
        return "destroyed"
    logger.warning("hf_tp: destroy_process_group did not return within %.0f s; aborting the process group.",
                   destroy_timeout_s)
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if abort is not None:
        _bounded(abort, destroy_timeout_s)
    return "aborted"
