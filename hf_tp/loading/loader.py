"""Fill a model whose parameters are on the meta device with this rank's slices of a checkpoint.

Each tensor is read with ``safe_open(...).get_slice`` so only this rank's rows/columns are
touched, then cast and moved to the rank's device. No rank materializes the full model.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import CheckpointError
from ..policies.plan import ParamShard, ShardingPlan
from .checkpoint import CheckpointIndex
from .experts import expert_part_keys, read_experts
from .file_ranges import copy_from
from .keys import find_key
from .quantization import FP8Slice, is_fp8, quantize_blocks, read_canonical, read_dequantized
from .staging import MIN_CHUNK_BYTES, PinnedStager, finished_at_exit


@dataclass
class LoadStats:
    tensors: int = 0
    bytes_read: int = 0  # bytes taken out of the checkpoint files by this rank
    seconds: float = 0.0
    pin_seconds: float = 0.0  # pinning the staging buffers (in the background, from before the skeleton)
    # Where a rank's from_pretrained time went, filled by assembly.load_parallel_model: planning (config,
    # skeleton, plan), building (parallel layers, fused buffers), reading (the weights), each in seconds.
    phases: dict = field(default_factory=dict)
    # CUDA pinned staging only: seconds summed over the reader threads (PinnedStager.seconds) and chunks moved.
    staging: dict = field(default_factory=dict)

    @property
    def gb_per_s(self) -> float:
        return self.bytes_read / 1e9 / self.seconds if self.seconds else 0.0


def default_load_threads() -> int:
    """Parallel reads per rank when none is given: min(4, cores) (on the lent H100, 4 loaded the 13B shape's
    tp-2 shards in 0.84 s, 8 in 1.11 s: benchmarks/RESULTS.md, 2026-11-25)."""
    return min(4, os.cpu_count() or 1)


def _read(index: CheckpointIndex, key: str, shard: ParamShard | None, tp_rank: int,
          dtype: torch.dtype | None = None, keep_fp8: bool = False):
    """The rank's piece of one tensor (full tensor when replicated), in the file's dtype. FP8 weights
    (index.quantization) come dequantized to ``dtype``, or with ``keep_fp8`` as an FP8Slice (canonical form)."""
    dim, pieces = (None, None) if shard is None else (shard.dim, shard.pieces[tp_rank])
    try:
        if is_fp8(index, key):
            if keep_fp8:
                return read_canonical(index, key, dim, pieces)
            tensor = read_dequantized(index, key, dim, pieces, dtype or torch.float32)
        elif shard is None:
            return index.handle(key).get_tensor(key)
        else:
            view = index.handle(key).get_slice(key)
            lead = (slice(None),) * shard.dim
            parts = [view[(*lead, slice(a, b))] for a, b in pieces]
            tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=shard.dim)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"could not read tensor {key!r} from {index.files[key]} ({exc}); the file may be corrupt.") from exc
    if shard is None:
        return tensor
    pad = shard.local_size[tp_rank] - tensor.shape[shard.dim]
    if pad:  # vocab shards are padded to equal length with zero rows
        shape = list(tensor.shape)
        shape[shard.dim] = pad
        tensor = torch.cat([tensor, tensor.new_zeros(shape)], dim=shard.dim)
    return tensor


def make_stager(device: torch.device, pinned: bool = True, chunk_mb: float | None = None,
                buffers: int | None = None) -> PinnedStager | None:
    """Pinned staging on CUDA (``pinned=False``: plain copies); plain copies elsewhere. Create it early:
    its ``buffers`` buffers of ``chunk_mb`` MB are pinned in the background while the caller builds the model."""
    if device.type == "cuda" and pinned:
        return PinnedStager(device, max(MIN_CHUNK_BYTES, int(chunk_mb * 2**20)) if chunk_mb else None, buffers)
    return None


def _to_device(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype, stager: PinnedStager | None) -> torch.Tensor:
    if stager is not None:
        return stager.to_device(tensor, dtype)
    return tensor.contiguous().to(device=device, dtype=dtype)


def _copy_into(target: torch.Tensor, tensor: torch.Tensor, stager: PinnedStager | None, coalesce: bool = False) -> None:
    """Host tensor -> an existing device tensor (a view into a fused buffer), cast on the way. ``coalesce``: see
    PinnedStager.copy_into (the caller flushes)."""
    if stager is not None:
        stager.copy_into(target, tensor, coalesce=coalesce)
        return
    copy_from(target, tensor)


def _tie_groups(model: nn.Module) -> list[list[str]]:
    """Names that share one Parameter object (tied embeddings), first name first."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return list(groups.values())


def _checked_fp8(fp8: FP8Slice, target, key: str, index, tp_rank: int, device, stager) -> FP8Slice:
    """An FP8Slice of the layer's shape, moved to ``device``."""
    if fp8 is None or tuple(fp8.weight.shape) != tuple(target.shape):
        got = None if fp8 is None else tuple(fp8.weight.shape)
        raise CheckpointError(f"{key} in {index.files[key]} gives an FP8 slice of shape {got} on tp rank {tp_rank}, "
                              f"expected {tuple(target.shape)}; the checkpoint does not match its config.")
    return FP8Slice(_to_device(fp8.weight, device, fp8.weight.dtype, stager),
                    _to_device(fp8.scale, device, torch.float32, stager), fp8.group_k, fp8.k_offset)


def loading_info(model: nn.Module, index: CheckpointIndex) -> dict:
    """Transformers' ``output_loading_info`` dict for loading ``model`` (its unsplit skeleton) from
    ``index``. Only ``unexpected_keys`` can be non-empty: a missing or mis-shaped weight is an error
    in hf_tp (CheckpointError), where Transformers would initialise it randomly."""
    import re

    used = set()
    for group in _tie_groups(model):
        key = find_key(group, index)
        used.update([key] if key is not None else [k for keys in expert_part_keys(group[0], index) or () for k in keys])
    used.update(name for name, _ in model.named_buffers() if name in index)
    if index.quantization is not None:  # an FP8 weight's scales (the static scheme's input_scale is not needed)
        weights = [k for k in used if k.endswith("weight")]
        used.update(index.quantization.scale_key(k) for k in weights)
        used.update(k[: -len("weight")] + "input_scale" for k in weights)
    ignored = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()]
    unexpected = {k for k in index.files if k not in used and not any(p.search(k) for p in ignored)}
    return {"missing_keys": set(), "unexpected_keys": unexpected, "mismatched_keys": set(), "error_msgs": []}


def load_shards(model: nn.Module, plan: ShardingPlan, index: CheckpointIndex, tp_rank: int,
                device: torch.device, transposed: frozenset[str] = frozenset(), progress: bool = True,
                stager: PinnedStager | None = None, threads: int | None = None) -> LoadStats:
    """Replace every meta parameter of ``model`` by this rank's slice from the checkpoint.

    ``transposed`` names parameters stored (in, out) in the file but (out, in) in the layer
    (GPT-2 Conv1D turned into a parallel linear). Tied parameters are read once and re-tied.
    ``stager``: from ``make_stager`` (made here when not given). ``threads``: tensors read at once.
    """
    stats, start = LoadStats(), time.perf_counter()
    stager = stager or make_stager(device)
    # Finished on every exit: the asynchronous copies are done before anyone reads a weight, and
    # on errors before their targets can be freed.
    with contextlib.closing(index), finished_at_exit(stager):  # the index's open files, also on errors
        groups = _tie_groups(model)
        # Fused 3-D expert parameters stored per expert in the checkpoint: name -> per-expert keys.
        found = {g[0]: find_key(g, index) for g in groups}
        per_expert = {g[0]: keys for g in groups if found[g[0]] is None
                      for keys in [expert_part_keys(g[0], index)] if keys}
        missing = [g[0] for g in groups if found[g[0]] is None and g[0] not in per_expert]
        if missing:
            raise CheckpointError(
                f"{index.folder}: {len(missing)} weight(s) of the model are not in the checkpoint, e.g. {missing[:3]}. "
                "The checkpoint does not match this config (architecture or size)."
            )
        def read_group(group):
            """Read, check, cast and move one (tied) parameter; runs in a worker thread."""
            shards = {plan.param_shard(n) for n in group}
            if len(shards) > 1:
                raise CheckpointError(f"tied parameters {group} are split differently by the policy; split them the same way.")
            shard = shards.pop()
            module_name, _, local = group[0].rpartition(".")
            target = model.get_submodule(module_name)._parameters[local]
            if group[0] in per_expert:
                # Straight into the rank's 3-D parameter (or the fused buffer it is a view of), expert by expert
                # and piece by piece, through the pinned staging on CUDA.
                placed = target.device.type != "meta"
                dest = target if placed else torch.empty(target.shape, dtype=target.dtype, device=device)
                try:
                    # One DMA for several back-to-back pieces (experts are 3 MB each in Qwen3-30B-A3B).
                    try:
                        nbytes = read_experts(index, per_expert[group[0]], shard and shard.dim,
                                              shard and shard.pieces[tp_rank], dest,
                                              lambda view, piece: _copy_into(view, piece, stager, coalesce=True))
                    except BaseException:
                        if stager is not None:
                            with contextlib.suppress(Exception):  # the read's error is the one to report
                                stager.flush()
                        raise
                    if stager is not None:
                        stager.flush()
                except CheckpointError:
                    raise
                except Exception as exc:
                    raise CheckpointError(f"could not read the experts of {group[0]} from {index.folder} ({exc}).") from exc
                return group, nbytes, None if placed else dest
            key = found[group[0]]
            keep_fp8 = target.dtype == torch.float8_e4m3fn  # a layer that keeps its weight FP8 (keep_fp8_layers)
            tensor = _read(index, key, shard, tp_rank, target.dtype, keep_fp8=keep_fp8)
            if keep_fp8 and not isinstance(tensor, FP8Slice):  # unquantized in the file: TPConfig.weights="fp8"
                tensor = quantize_blocks(tensor)
            if keep_fp8:
                return group, _checked_fp8(tensor, target, key, index, tp_rank, device, stager), None
            nbytes = tensor.numel() * tensor.element_size()
            if group[0] in transposed:
                tensor = tensor.t()
            expected = tuple(target.shape)
            if tuple(tensor.shape) != expected:
                raise CheckpointError(
                    f"{key} in {index.files[key]} has shape {tuple(tensor.shape)} on tp rank {tp_rank}, expected {expected}; "
                    "the checkpoint does not match its config."
                )
            if target.device.type != "meta":  # already placed (a view into a fused buffer): write into it
                _copy_into(target, tensor, stager)
                return group, nbytes, None
            dtype = target.dtype if tensor.is_floating_point() else tensor.dtype
            return group, nbytes, _to_device(tensor, device, dtype, stager)

        # Several reads in flight: copies out of the page cache and host-to-device transfers of
        # different tensors overlap (torch releases the GIL while copying).
        with ThreadPoolExecutor(max_workers=threads or default_load_threads()) as pool:
            for group, nbytes, tensor in tqdm(pool.map(read_group, groups), total=len(groups),
                                              desc="hf_tp: loading shards", unit="tensor", disable=not progress):
                if isinstance(nbytes, FP8Slice):  # the weight, its scales and their group geometry
                    fp8, nbytes = nbytes, nbytes.weight.numel() + nbytes.scale.numel() * 4
                    tensor = fp8.weight
                    owner = model.get_submodule(group[0].rpartition(".")[0])
                    owner.fp8_scale, owner.fp8_group_k, owner.fp8_k_offset = fp8.scale, fp8.group_k, fp8.k_offset
                stats.bytes_read += nbytes
                stats.tensors += 1
                if tensor is None:  # written in place
                    continue
                param = nn.Parameter(tensor, requires_grad=False)
                for name in group:
                    owner, _, attr = name.rpartition(".")
                    model.get_submodule(owner)._parameters[attr] = param
        for name, buffer in list(model.named_buffers()):
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner)
            if name in index and attr not in module._non_persistent_buffers_set:
                module._buffers[attr] = _read(index, name, None, tp_rank).to(device)
            elif buffer.device != device:
                module._buffers[attr] = buffer.to(device)
    if stager is not None:
        stats.pin_seconds = stager.pin_seconds
        stats.staging = {**{k: round(v, 3) for k, v in stager.seconds.items()}, "chunks": stager.chunks}
    stats.seconds = time.perf_counter() - start
    return stats
