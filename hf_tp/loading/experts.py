"""Per-expert checkpoint keys behind Transformers 5's fused 3-D MoE expert parameters.

Transformers 5 holds a MoE layer's experts as two 3-D parameters, ``experts.gate_up_proj``
(experts, 2 x intermediate, hidden) and ``experts.down_proj`` (experts, hidden, intermediate),
but checkpoints on the Hub, and its own ``save_pretrained``, store one 2-D tensor per expert
and part (``experts.3.gate_proj.weight``; Mixtral: ``block_sparse_moe.experts.3.w1.weight``).
This module maps the first to the second, and reads each rank's slice of every expert straight into
the rank's 3-D parameter (``read_experts``).
"""

from __future__ import annotations

import torch

from ..errors import CheckpointError
from .file_ranges import copy_from
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


def read_experts(index, keys: list[tuple[str, ...]], dim: int | None, pieces, dest: torch.Tensor,
                 write=None) -> int:
    """Read this rank's slice of every expert straight into ``dest``, the rank's (experts, out, in) parameter.

    ``dim``/``pieces`` are in fused coordinates (dim 1 or 2 of (experts, out, in)); a piece may span several
    packed parts (gate and up), so it is cut at part boundaries. ``dim=None``: whole tensors, parts packed
    along dim 1. Each piece is copied from the file into its view of ``dest`` (``dest[e, row0:row1, :]`` or
    ``dest[e, :, col0:col1]``), cast on the way: no per-expert concatenation or stacking copies. Whole parts and
    row ranges come as file ranges (``index.rows``, read with preadv), column ranges as strided views of the
    file's memory map (``index.view``; safetensors slices where it gives none). FP8 experts (index.quantization)
    are dequantized piece by piece to ``dest.dtype`` (loading.quantization) and the piece is written into its
    view. ``write(view, source)`` does each copy, ``source`` a tensor or a ``loading.file_ranges.FileRange``
    (default ``file_ranges.copy_from``; the loader passes its pinned CUDA staging). Returns the bytes taken out
    of the checkpoint (FP8: weights and their float32 scales).
    """
    write = write or _copy
    if len(keys) != dest.shape[0]:
        raise CheckpointError(f"{keys[0][0]}: the checkpoint has {len(keys)} experts where the config needs "
                              f"{dest.shape[0]}; the checkpoint does not match its config.")
    nbytes = 0
    along = dim or 1  # the dim of dest the parts are packed / split along

    def put(expert: int, key: str, start=None, stop=None, at: int = 0) -> int:
        """Part ``key``'s [start, stop) along ``along`` (None: the whole part) -> dest[expert], from ``at``
        along ``along``. Returns the length written."""
        nonlocal nbytes
        lead_dim = None if start is None else along - 1
        if is_fp8(index, key):
            fp8 = read_fp8(index, key, lead_dim, start or 0, stop)
            nbytes += fp8.weight.numel() + fp8.scale.numel() * 4
            source = fp8.dequantize(dest.dtype)
        else:
            # Whole tensors and row ranges are contiguous in the file: read with preadv (loading.file_ranges).
            if lead_dim in (None, 0):
                source = index.rows(key, start, stop)
            else:  # columns: a strided view of the file's map, gathered by the one copy into the destination
                source = index.view(key)
                if source is not None:
                    source = source[(*(slice(None),) * lead_dim, slice(start, stop))]
            if source is None:
                view = index.handle(key).get_slice(key)  # memory-mapped: slicing reads nothing yet
                source = view[:] if lead_dim is None else view[(*(slice(None),) * lead_dim, slice(start, stop))]
            nbytes += source.numel() * source.element_size()
        length = source.shape[along - 1] if len(source.shape) == 2 else 0
        target = dest[expert, at:at + length] if along == 1 else dest[expert, :, at:at + length]
        if tuple(source.shape) != tuple(target.shape):  # copy_ would broadcast a wrong shape silently
            raise CheckpointError(f"{key} in {index.files[key]} gives a slice of shape {tuple(source.shape)}, expected "
                                  f"{tuple(target.shape)}; the checkpoint does not match its config.")
        write(target, source)
        return length

    for expert, part_keys in enumerate(keys):
        at = 0
        if dim is None:
            for key in part_keys:
                at += put(expert, key, at=at)
        else:
            part_len = index.handle(part_keys[0]).get_slice(part_keys[0]).get_shape()[dim - 1]
            for start, stop in pieces:
                while start < stop:
                    part, offset = divmod(start, part_len)
                    if part >= len(part_keys):
                        raise CheckpointError(f"{part_keys[0]}: a slice [{start}, {stop}) reaches past its {len(part_keys)} "
                                              f"part(s) of {part_len}; the checkpoint does not match its config.")
                    end = min(stop, (part + 1) * part_len)
                    if offset == 0 and end - start == part_len:  # the whole part (tp 1): one file range, even
                        at += put(expert, part_keys[part], at=at)  # for down_proj's columns, not a strided slice
                    else:
                        at += put(expert, part_keys[part], offset, offset + end - start, at)
                    start = end
        if at != dest.shape[along]:
            raise CheckpointError(f"{part_keys[0]}: the checkpoint gives {at} of the {dest.shape[along]} rows/columns "
                                  f"(dim {along}) this rank's parameter has; the checkpoint does not match its config.")
    return nbytes


def _copy(target: torch.Tensor, source) -> None:
    copy_from(target, source)
