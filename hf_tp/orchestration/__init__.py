"""Single-controller mode: the driver starts, feeds and supervises tp_size worker processes."""

from __future__ import annotations


def start_tp_model(name_or_path, tp_size, dtype=None, device=None, **hf_kwargs):
    raise NotImplementedError(
        f"tp_size={tp_size} without a launcher needs the single-controller orchestrator, which is not built yet. "
        f"Run the script under a launcher instead: torchrun --nproc-per-node {tp_size} script.py"
    )
