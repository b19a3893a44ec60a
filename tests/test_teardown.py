"""hf_tp.parallel.teardown on 2 gloo ranks: graphs are released while the group still exists, the group is
destroyed after, and a rank whose peer never arrives still leaves, through its bounds (issue 12). No clock
decides the outcome: the absent peer waits for the leaving rank's signal, so it is absent for as long as it takes."""

from __future__ import annotations

import os
import time

import pytest
from conftest import run_ranks


def leave_in_order():
    import torch.distributed as dist

    from hf_tp.parallel import teardown

    dist.init_process_group("gloo")
    seen = []

    class Owner:  # stands for the decode loop, which owns CUDA graphs holding NCCL kernels
        def release_graphs(self):
            seen.append(("released with the group alive", dist.is_initialized()))

    owner = Owner()
    teardown.register_graph_owner(owner)
    outcome = teardown.shutdown_group()
    return {"seen": seen, "outcome": outcome, "initialized_after": dist.is_initialized()}


def test_graphs_released_before_the_group_is_destroyed():
    for out in run_ranks(leave_in_order, 2):
        assert out["seen"] == [("released with the group alive", True)]
        assert out["outcome"] == "destroyed" and not out["initialized_after"]


def user_destroys_the_group(failing_release: bool):
    import torch.distributed as dist

    from hf_tp.parallel import teardown

    dist.init_process_group("gloo")
    seen = []

    class Owner:
        def release_graphs(self):
            seen.append(("released with the group alive", dist.is_initialized()))

    owner = Owner()
    teardown.register_graph_owner(owner)
    teardown.guard_destroy()  # a second registration or call wraps nothing twice
    dist.destroy_process_group(dist.new_group([0, 1]))  # a subgroup: not the communicator the graphs hold
    after_subgroup = list(seen)
    if failing_release:  # a release that raises (a CUDA error, say): the destroy asked for happens all the same
        def fail():
            raise RuntimeError("injected release failure")

        teardown.release_graphs = fail
    dist.destroy_process_group()  # what a torchrun script's last line often is, hf_tp's exit teardown not yet run
    return {"seen": seen, "after_subgroup": after_subgroup, "initialized_after": dist.is_initialized(),
            "c10d_wrapped_too": dist.distributed_c10d.destroy_process_group is dist.destroy_process_group,
            # the wrapper wraps torch's own function, not another wrapper
            "wrapped_once": not hasattr(dist.destroy_process_group.hf_tp_unguarded, "hf_tp_unguarded")}


@pytest.mark.parametrize("failing_release", [False, True], ids=["release", "release-fails"])
def test_a_scripts_own_destroy_process_group_releases_the_graphs_first(failing_release):
    """NCCL waits for live graphs that hold its kernels: a script's own destroy_process_group() after decoding
    with the loop must drop them first, as hf_tp's teardown at exit does; a subgroup's destroy leaves them."""
    for out in run_ranks(user_destroys_the_group, 2, failing_release):
        assert out["after_subgroup"] == []
        assert out["seen"] == ([] if failing_release else [("released with the group alive", True)])
        assert not out["initialized_after"] and out["c10d_wrapped_too"] and out["wrapped_once"]


def leave_without_peer(marker: str):
    import logging

    import torch.distributed as dist

    from hf_tp.parallel import teardown

    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        # The peer that never reaches the exit barrier (stuck, or gone): it stays away until rank 0 says it left,
        # so rank 0 cannot have waited for it, however slow the host. The deadline is only a hang guard.
        deadline = time.monotonic() + 120
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        return {"rank 0 left while I was away": os.path.exists(marker)}
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("hf_tp")
    logger.setLevel(logging.DEBUG)  # the barrier's own timeout is reported at debug level
    logger.addHandler(Keep(logging.DEBUG))
    outcome = teardown.shutdown_group(barrier_timeout_s=2, destroy_timeout_s=2)
    with open(marker, "w"):
        pass
    return {"outcome": outcome, "log": records}


def test_a_rank_leaves_within_its_bounds_when_a_peer_never_arrives(tmp_path):
    rank0, rank1 = run_ranks(leave_without_peer, 2, str(tmp_path / "rank0_left"), timeout=300)
    assert rank1 == {"rank 0 left while I was away": True}
    assert rank0["outcome"] in ("destroyed", "aborted")
    # It left through the barrier's bound, not through a barrier that completed: either gloo's monitored_barrier
    # gave up after barrier_timeout_s (and said which rank was missing), or the thread bound around it expired.
    assert any("Rank 1 failed to pass monitoredBarrier in 2000 ms" in r or "did not reach the exit barrier within 2 s" in r
               for r in rank0["log"]), rank0["log"]
