"""Inductor's choice of reduction kernel for the decode loop's compiled step (TPConfig.persistent_norms): a row
reduction as wide as a model's hidden size (an RMSNorm's mean of squares, fused with the residual add before it)
held in registers and read once ("persistent reduction"), instead of Inductor's loop over the row.

Why: Inductor keeps a reduction persistent only up to 1024 elements a row (``InductorChoices.
should_use_persistent_reduction``); above, it loops, and a fused add + RMSNorm reads its row twice (once for the
mean of squares, once to normalize). At decode a row is one token's hidden state (4096 values for Llama-3-8B): a
latency-bound kernel of one program, run twice per layer, whose fixed cost is part of what keeps a rank's step
from its bandwidth floor (issue 18). Held in registers, the row is read once. The sum's order changes (a tree over
the whole row instead of per-lane partial sums), so values may differ in the last bits of the fp32 statistic.

It works through Inductor's documented extension point: an ``InductorChoices`` subclass, both installed for the
block (``V.set_choices_handler``) and named in the config (``inductor_choices_class``), so that Inductor's FX-graph
cache keys steps compiled with and without it apart.
"""

from __future__ import annotations

import contextlib

import torch

# The widest row made persistent: the hidden sizes up to Llama-3-70B's 8192. Wider rows (a vocabulary's softmax when
# sampling, for one) keep Inductor's loop: held whole, they would take too many registers a thread.
MAX_ROW = 8192

try:
    from torch._inductor.choices import InductorChoices
    from torch._inductor.runtime.hints import ReductionHint
except ImportError:  # pragma: no cover - a torch without the extension point: nothing to install
    InductorChoices, ReductionHint = object, None


class PersistentRowNorms(InductorChoices):
    """Inductor's default choices, but an inner reduction (along contiguous memory) of a fixed width up to MAX_ROW
    is persistent."""

    def uuid(self):  # Inductor's FX-graph cache key for this choice (torch >= 2.12 asks the factory's instance)
        return f"hf_tp.persistent_norms.{MAX_ROW}"

    def should_use_persistent_reduction(self, features, cooperative_reduction: bool = False, *args, **kwargs) -> bool:
        if super().should_use_persistent_reduction(features, cooperative_reduction, *args, **kwargs):
            return True
        return wide_inner_row(features.get_reduction_hint(), features.reduction_numel, cooperative_reduction)


def wide_inner_row(hint, reduction_numel, cooperative_reduction: bool) -> bool:
    """An inner reduction whose width is a known integer up to MAX_ROW (a symbolic width keeps Inductor's
    choice), outside cooperative reductions (which split a row over programs on their own)."""
    if ReductionHint is None or cooperative_reduction or hint != ReductionHint.INNER:
        return False
    try:
        width = int(reduction_numel)
    except TypeError:  # symbolic
        return False
    return width <= MAX_ROW


def _choices_factory() -> PersistentRowNorms:
    return PersistentRowNorms()


def inductor_options(enabled: bool) -> dict:
    """The Inductor config entry that names the choices (the FX-graph cache key); empty when not ``enabled`` or when
    this torch has no such entry."""
    if not enabled or ReductionHint is None:
        return {}
    import torch._inductor.config as inductor_config

    if not hasattr(inductor_config, "inductor_choices_class"):
        return {}
    return {"inductor_choices_class": _choices_factory}


def choosing(options: dict):
    """A block in which Inductor compiles with the choices that ``options`` name (``inductor_options``), or
    nothing. The config entry alone is not enough: Inductor reads it once per thread, on its first compile."""
    factory = options.get("inductor_choices_class")
    if factory is None:
        return contextlib.nullcontext()
    from torch._inductor.virtualized import V

    return V.set_choices_handler(factory())


def compiled_with_persistent_norms(fn, enabled: bool = True):
    """``fn`` compiled by Inductor with (or without) the choices, for tests and probes that compile outside the
    decode loop; each call runs in the block, where a first call compiles."""
    options = inductor_options(enabled)
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)

    def call(*args, **kwargs):
        import torch._inductor.config as inductor_config

        with inductor_config.patch(options), choosing(options):
            return compiled(*args, **kwargs)

    return call
