"""Per-expert checkpoint keys behind Transformers 5's fused 3-D MoE expert parameters.

Transformers 5 holds a MoE layer's experts as two 3-D parameters, ``experts.gate_up_proj``
(experts, 2 x intermediate, hidden) and ``experts.down_proj`` (experts, hidden, intermediate),
but checkpoints on the Hub, and its own ``save_pretrained``, store one 2-D tensor per expert
and part (``experts.3.gate_proj.weight``; Mixtral: ``block_sparse_moe.experts.3.w1.weight``).
This module maps the first to the second; the loader then reads each expert's slices.
"""

from __future__ import annotations

import torch

from .keys import checkpoint_names

# Fused parameter -> candidate per-expert part names, in packing order (gate before up).
_PARTS = {
    "gate_up_proj": (("gate_proj", "up_proj"), ("w1", "w3")),
    "down_proj": (("down_proj",), ("w2",)),
}


def expert_part_keys(name: str, index) -> list[tuple[str, ...]] | None:
    """For a fused expert parameter absent from the checkpoint: per expert, the keys of its parts
    (in packing order). None when the checkpoint has no per-expert tensors for it either."""
    prefix, _, local = name.rpartition(".")
    for names in _PARTS.get(local, ()):
        for base in checkpoint_names(prefix + "."):
            base = base[:-1]
            keys = []
            while all(f"{base}.{len(keys)}.{n}.weight" in index for n in names):
                keys.append(tuple(f"{base}.{len(keys)}.{n}.weight" for n in names))
            if keys:
                return keys
    return None


def read_experts(index, keys: list[tuple[str, ...]], dim: int | None, pieces) -> torch.Tensor:
    """Stack per-expert 2-D tensors into this rank's slice of the fused 3-D parameter.

    ``dim``/``pieces`` are in fused coordinates (dim 1 or 2 of (experts, out, in)); a piece may span
    several packed parts (gate and up), so it is cut at part boundaries first. ``dim=None``: whole tensors.
    """
    experts = []
    for part_keys in keys:
        views = [index.handle(k).get_slice(k) for k in part_keys]
        if dim is None:
            experts.append(torch.cat([v[:] for v in views], dim=0))
            continue
        part_len = views[0].get_shape()[dim - 1]
        lead = (slice(None),) * (dim - 1)
        chunks = []
        for start, stop in pieces:
            while start < stop:
                part, offset = divmod(start, part_len)
                end = min(stop, (part + 1) * part_len)
                chunks.append(views[part][(*lead, slice(offset, offset + end - start))])
                start = end
        experts.append(torch.cat(chunks, dim=dim - 1))
    return torch.stack(experts)
