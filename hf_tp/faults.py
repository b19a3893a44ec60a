"""Fault injection for hf_tp's own tests; unset in normal use.

HF_TP_FAULT_INJECT="RANK:OP:KIND" makes tp rank RANK, at OP, do KIND. The orchestrator's workers know the
ops of their requests (load, generate, forward, ...) and the kinds raise, hang, exit and compile (spend
$HF_TP_FAULT_SECONDS inside torch.compile's own start/end hooks, as a long compile does); the decode loop
knows op "compile" with kind "raise" (a compile that fails on one rank); the workers' progress marks know op
"layer" with kind "slow" (sleep $HF_TP_FAULT_SECONDS before each decoder layer: a long forward that
progresses). The one place that reads it.
"""

from __future__ import annotations

import os

FAULT_ENV = "HF_TP_FAULT_INJECT"
FAULT_SECONDS_ENV = "HF_TP_FAULT_SECONDS"


def injected_fault(rank: int, op: str) -> str | None:
    """The KIND injected for ``rank`` at ``op``, or None."""
    spec = os.environ.get(FAULT_ENV, "")
    if spec.count(":") != 2:
        return None
    fault_rank, fault_op, kind = spec.split(":")
    return kind if fault_op == op and int(fault_rank) == rank else None


def fault_seconds(default: float = 10.0) -> float:
    return float(os.environ.get(FAULT_SECONDS_ENV, default))
