"""Cancelling an in-flight generate on every rank at the same decode step.

When the user interrupts a call (Ctrl-C, a notebook's "interrupt kernel"), the driver sends CANCEL
to every worker. Each worker's reader thread notes it at once, but the ranks notice it at different
moments, and a rank that stopped alone would leave its peers waiting in the next step's all-reduce
forever. So at every decode step the ranks agree with one tiny all-reduce (MAX) of their flags: all
stop at the same step, or none does, and every rank leaves ``generate`` by the same exception with
the same collectives behind it. The cost is one all-reduce of one integer per step (per host check,
every few tokens, in hf_tp's own decode loop), next to the step's own all-reduces.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from transformers import StoppingCriteria


class GenerationCancelled(Exception):
    """Raised on every rank, at the same step, when the driver cancelled the call being served."""


def agree_to_stop(local: bool, tp) -> bool:
    """True on every rank when any rank wants to stop: one all-reduce (MAX) over the TP group."""
    if tp.tp_size == 1:
        return local
    flag = torch.tensor([int(local)], dtype=torch.int32, device=tp.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=tp.group)
    return bool(flag.item())


class CancelCriterion(StoppingCriteria):
    """The same agreement for beam search, where generate() refuses a streamer: stopping criteria run
    once per step on every rank. It never stops a sequence itself; it raises when the call was cancelled."""

    hf_tp_internal = True  # not the user's: the decode loop's planner does not count it as a request

    def __init__(self, check):
        self.check = check

    def __call__(self, input_ids, scores, **kwargs):
        self.check()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
