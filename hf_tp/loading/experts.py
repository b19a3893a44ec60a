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
from .quantization import is_fp8, read_fp8

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


def read_experts(index, keys: list[tuple[str, ...]], dim: int | None, pieces, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Stack per-expert 2-D tensors into this rank's slice of the fused 3-D parameter.

    ``dim``/``pieces`` are in fused coordinates (dim 1 or 2 of (experts, out, in)); a piece may span
    several packed parts (gate and up), so it is cut at part boundaries first. ``dim=None``: whole tensors.
    FP8 experts (index.quantization) are dequantized to ``dtype`` piece by piece (loading.quantization).
    """
    def read(key, lead_dim=None, start=0, stop=None):
        if is_fp8(index, key):
            return read_fp8(index, key, lead_dim, start, stop).dequantize(dtype or torch.float32)
        view = index.handle(key).get_slice(key)
        return view[:] if lead_dim is None else view[(*(slice(None),) * lead_dim, slice(start, stop))]

    experts = []
    for part_keys in keys:
        if dim is None:
            experts.append(torch.cat([read(k) for k in part_keys], dim=0))
            continue
        part_len = index.handle(part_keys[0]).get_slice(part_keys[0]).get_shape()[dim - 1]
        chunks = []
        for start, stop in pieces:
            while start < stop:
                part, offset = divmod(start, part_len)
                end = min(stop, (part + 1) * part_len)
                chunks.append(read(part_keys[part], dim - 1, offset, offset + end - start))
                start = end
        experts.append(torch.cat(chunks, dim=dim - 1))
    return torch.stack(experts)
