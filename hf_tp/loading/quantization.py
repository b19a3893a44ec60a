"""A checkpoint's ``quantization_config`` -> how its FP8 weights are read; every other method is refused.

Two on-disk formats, one reading (hf_tp.kernels.fp8 describes the canonical per-rank form):

- Transformers / DeepSeek block FP8 (``quant_method: "fp8"``): ``<m>.weight`` float8_e4m3fn (N, K) and
  ``<m>.weight_scale_inv`` (ceil(N/bn), ceil(K/bk)) for ``weight_block_size: [bn, bk]``; fp32, bf16 or fp16
  scales (``scale_fmt: "ue8m0"``: the same numbers, all powers of two). W = weight x scale, block by block.
- compressed-tensors ``float-quantized``: ``<m>.weight`` float8_e4m3fn and ``<m>.weight_scale``, per output
  channel (N, 1), per tensor (a scalar; the static scheme's ``input_scale`` is not needed to dequantize), or
  per block (``strategy: "block"``, ``block_structure``). W = weight x scale.

Every layout is a grid of (bn, bk) blocks: per channel is (1, K), per tensor (N, K). A rank's slice
[r0, r1) x [c0, c1) takes the scale rows its rows fall in (repeated per row: two ranks whose boundary cuts a
block both read that block's scale) and the scale columns of its columns, with ``k_offset = c0 mod bk``, so
any cut is exact: every tp size that splits the bf16 model splits the FP8 one.

Which tensors are FP8 is read from the file (dtype F8_E4M3), not guessed from module names: the modules in
``modules_to_not_convert`` / ``ignore`` are stored unquantized and are read as they are stored (their producers
match those lists in different ways; the file's dtype is the same fact, unambiguous). An FP8 tensor without
its scale is an incomplete checkpoint and raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import CheckpointError
from ..kernels.fp8 import dequantize

FP8_DTYPE = "F8_E4M3"  # safetensors' name of torch.float8_e4m3fn

SUPPORTED = ("quant_method 'fp8' (Transformers/DeepSeek block FP8, e.g. Qwen3-*-FP8, DeepSeek-V3) and "
             "'compressed-tensors' with format 'float-quantized' (FP8 per channel, per tensor or per block, "
             "e.g. *-FP8-dynamic)")


@dataclass(frozen=True)
class FP8Format:
    """How a checkpoint's FP8 weights are stored. ``block`` (bn, bk): None stands for "the whole dimension"
    (per channel: (1, None); per tensor: (None, None))."""

    method: str  # "fp8" | "compressed-tensors"
    scale_suffix: str  # the scale's key replaces the weight key's "weight": "weight_scale_inv" | "weight_scale"
    block: tuple[int | None, int | None]
    skip: tuple[str, ...] = ()  # modules_to_not_convert / ignore, as written (for messages; see above)
    ue8m0: bool = False

    def scale_key(self, weight_key: str) -> str:
        return weight_key[: -len("weight")] + self.scale_suffix

    def describe(self) -> str:
        bn, bk = self.block
        kind = ("per tensor" if bn is None else "per channel" if bn == 1 and bk is None else f"{bn}x{bk} blocks")
        return f"{self.method} FP8, {kind} scales{' (ue8m0)' if self.ue8m0 else ''}"


def _refuse(method, detail: str = "") -> CheckpointError:
    return CheckpointError(
        f"This checkpoint's config.json has quantization_config with quant_method={method!r}{detail}, which hf_tp "
        f"cannot read: tensor-parallel loading supports {SUPPORTED}. Use an unquantized (bf16/fp16/fp32) checkpoint "
        "or one of those FP8 formats, or load it unsplit with tp_size=None (plain Transformers)."
    )


def read_quantization(config) -> FP8Format | None:
    """The FP8 format of a checkpoint from its config's ``quantization_config`` (None: not quantized).
    Raises CheckpointError for any other quantization, before a rank reads a byte."""
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        quant = getattr(text, "quantization_config", None)
    if quant is None:
        return None
    if not isinstance(quant, dict):
        quant = quant.to_dict() if hasattr(quant, "to_dict") else vars(quant)
    method = quant.get("quant_method")
    if method == "fp8":
        block = quant.get("weight_block_size")
        if block is None:  # Transformers' FineGrainedFP8Config without blocks: one scale per tensor
            block = (None, None)
        elif len(block) != 2 or not all(isinstance(b, int) and b > 0 for b in block):
            raise CheckpointError(f"quantization_config.weight_block_size={block!r} is not two positive integers; "
                                  "the checkpoint's config.json is corrupt.")
        fmt = quant.get("fmt", "e4m3")
        if fmt not in ("e4m3", None):
            raise _refuse(method, f" and fmt={fmt!r} (only e4m3 is read)")
        return FP8Format("fp8", "weight_scale_inv", tuple(block), tuple(quant.get("modules_to_not_convert") or ()),
                         quant.get("scale_fmt") == "ue8m0")
    if method == "compressed-tensors":
        return _compressed_tensors(quant)
    raise _refuse(method)


def _compressed_tensors(quant: dict) -> FP8Format:
    fmt = quant.get("format")
    groups = quant.get("config_groups") or {}
    strategies = set()
    for name, group in groups.items():
        weights = group.get("weights") or {}
        group_fmt = group.get("format") or fmt
        if (group_fmt != "float-quantized" or weights.get("type") != "float" or weights.get("num_bits") != 8
                or weights.get("dynamic") or not weights.get("symmetric", True)):
            raise _refuse("compressed-tensors", f" and format={group_fmt!r}, weights "
                          f"{ {k: weights.get(k) for k in ('num_bits', 'type', 'strategy', 'symmetric', 'dynamic')} } "
                          f"in config group {name!r}")
        strategy = weights.get("strategy")
        if strategy == "block":
            strategies.add(tuple(weights.get("block_structure") or ()))
        elif strategy in ("channel", "tensor"):
            strategies.add(strategy)
        else:
            raise _refuse("compressed-tensors", f" and FP8 weights with strategy={strategy!r} (channel, tensor "
                          "and block are read)")
    if not groups:
        raise _refuse("compressed-tensors", f" and format={fmt!r} but no config_groups")
    if len(strategies) != 1:
        raise _refuse("compressed-tensors", f" and several weight strategies {sorted(map(str, strategies))}")
    strategy = strategies.pop()
    if isinstance(strategy, tuple):
        if len(strategy) != 2:
            raise CheckpointError(f"compressed-tensors block_structure={list(strategy)} is not [rows, columns].")
        block = strategy
    else:
        block = (1, None) if strategy == "channel" else (None, None)
    return FP8Format("compressed-tensors", "weight_scale", block, tuple(quant.get("ignore") or ()))


# ------------------------------------------------------------------------------------------------
# Reading slices
# ------------------------------------------------------------------------------------------------


@dataclass
class FP8Slice:
    """One rank's FP8 weight in the canonical form of hf_tp.kernels.fp8 (scale rows expanded per weight row;
    leading dims, for 3-D expert tensors, kept on both)."""

    weight: torch.Tensor  # float8_e4m3fn (..., N_local, K_local)
    scale: torch.Tensor  # float32 (..., N_local, G)
    group_k: int
    k_offset: int

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        if self.weight.dim() == 2:
            return dequantize(self.weight, self.scale, self.group_k, self.k_offset, dtype)
        flat_w = self.weight.reshape(-1, self.weight.shape[-1])
        flat_s = self.scale.reshape(-1, self.scale.shape[-1])
        return dequantize(flat_w, flat_s, self.group_k, self.k_offset, dtype).view(self.weight.shape)


def is_fp8(index, key: str) -> bool:
    """Whether the checkpoint stores ``key`` as FP8 (from the file header; nothing is read). A tensor of a quantized
    checkpoint that has a scale but another dtype would be read without it: refused."""
    if index.quantization is None:
        return False
    dtype = index.handle(key).get_slice(key).get_dtype()
    if dtype == FP8_DTYPE:
        return True
    if key.endswith("weight") and index.quantization.scale_key(key) in index:
        raise CheckpointError(f"{key} has a scale ({index.quantization.scale_key(key)}) but is stored as {dtype}, not "
                              f"float8_e4m3fn ({FP8_DTYPE}); hf_tp reads {SUPPORTED} only.")
    return False


def _scale_float(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype == torch.uint8:  # ue8m0 scales stored as their exponent byte: 2 ** (byte - 127)
        return (tensor.to(torch.float32) - 127.0).exp2()
    return tensor.to(torch.float32)


def read_fp8(index, key: str, dim: int | None = None, start: int = 0, stop: int | None = None) -> FP8Slice:
    """The slice [start, stop) along ``dim`` (None: the whole tensor) of the FP8 weight ``key`` and the matching
    scales, canonical. ``dim`` is one of the last two dims (rows N or columns K); leading dims are read whole."""
    fmt = index.quantization
    scale_key = fmt.scale_key(key)
    if scale_key not in index:
        raise CheckpointError(f"{key} is stored as FP8 in {index.files[key]} but the checkpoint has no {scale_key}; "
                              "the checkpoint is incomplete (re-download it).")
    view, scale_view = index.handle(key).get_slice(key), index.handle(scale_key).get_slice(scale_key)
    shape = list(view.get_shape())
    if len(shape) < 2:
        raise CheckpointError(f"{key} is FP8 but has shape {shape}; only matrices (and stacks of them) are read as FP8.")
    lead, (n, k) = shape[:-2], shape[-2:]
    bn, bk = fmt.block
    bn, bk = bn or n, bk or k
    grid = [math.ceil(n / bn), math.ceil(k / bk)]
    scale_shape = list(scale_view.get_shape())
    scalar = scale_shape in ([], [1]) and grid == [1, 1]  # one scale for the tensor
    if not scalar and scale_shape != lead + grid:
        raise CheckpointError(
            f"{scale_key} has shape {scale_shape} but {key} of shape {shape} with {fmt.describe()} needs "
            f"{lead + grid}; the checkpoint does not match its quantization_config."
        )
    rows, cols = (0, n), (0, k)
    if dim is not None:
        if dim % len(shape) == len(shape) - 2:
            rows = (start, n if stop is None else stop)
        elif dim % len(shape) == len(shape) - 1:
            cols = (start, k if stop is None else stop)
        else:
            raise CheckpointError(f"{key}: cannot split an FP8 tensor of shape {shape} along dim {dim}.")
    (r0, r1), (c0, c1) = rows, cols
    # The blocks the slice touches; a block cut by the slice's edge is read by the ranks on both sides.
    s_rows = (r0 // bn, (r1 - 1) // bn + 1) if r1 > r0 else (0, 0)
    s_cols = (c0 // bk, (c1 - 1) // bk + 1) if c1 > c0 else (0, 0)
    every = (slice(None),) * len(lead)
    try:
        weight = view[(*every, slice(r0, r1), slice(c0, c1))]
        if scalar:
            scale = index.handle(scale_key).get_tensor(scale_key).reshape(1, 1)[slice(*s_rows), slice(*s_cols)]
        else:
            scale = scale_view[(*every, slice(*s_rows), slice(*s_cols))]
    except Exception as exc:
        raise CheckpointError(f"could not read {key!r} or {scale_key!r} from {index.files[key]} ({exc}); "
                              "the file may be corrupt.") from exc
    scale = _scale_float(scale)
    row_of = torch.arange(r0, r1) // bn - s_rows[0]  # each weight row's block row
    scale = scale.index_select(-2, row_of).contiguous()
    if scale.shape[-1] == 1:  # one group spans the local columns: the per-channel form
        return FP8Slice(weight, scale, max(c1 - c0, 1), 0)
    return FP8Slice(weight, scale, bk, c0 % bk)


def quantize_blocks(weight: torch.Tensor, block: int = 128) -> FP8Slice:
    """A rank's unquantized (N, K) slice -> FP8 in ``block`` x ``block`` blocks of the slice (TPConfig.weights="fp8"):
    per block, scale = max|w| / 448 (float32) and weight = w / scale rounded to float8_e4m3fn. Canonical form,
    k_offset 0 (the blocks start at the slice's first row and column)."""
    w = weight.to(torch.float32)
    n, k = w.shape
    fp8_max = torch.finfo(torch.float8_e4m3fn).max
    rows, cols = math.ceil(n / block), math.ceil(k / block)
    padded = torch.zeros(rows * block, cols * block, dtype=torch.float32)
    padded[:n, :k] = w
    tiles = padded.view(rows, block, cols, block)
    scale = (tiles.abs().amax(dim=(1, 3)) / fp8_max).clamp(min=torch.finfo(torch.float32).tiny)  # (rows, cols)
    q = (tiles / scale[:, None, :, None]).clamp(-fp8_max, fp8_max).to(torch.float8_e4m3fn)
    q = q.view(rows * block, cols * block)[:n, :k].contiguous()
    return FP8Slice(q, scale.repeat_interleave(block, dim=0)[:n].contiguous(), block, 0)


def read_dequantized(index, key: str, dim: int | None, pieces, dtype: torch.dtype) -> torch.Tensor:
    """The rank's pieces of an FP8 weight along ``dim``, each dequantized to ``dtype`` (fp32 math, one
    rounding) and concatenated."""
    if dim is None:
        return read_fp8(index, key).dequantize(dtype)
    parts = [read_fp8(index, key, dim, a, b).dequantize(dtype) for a, b in pieces]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def read_canonical(index, key: str, dim: int | None, pieces) -> FP8Slice | None:
    """The rank's FP8 slice in one canonical form, or None when it has none: pieces along K (a column-packed
    fused tensor split by rows) would need two offsets. Pieces along N concatenate (K and offset shared)."""
    if dim is None:
        return read_fp8(index, key)
    slices = [read_fp8(index, key, dim, a, b) for a, b in pieces]
    if len(slices) == 1:
        return slices[0]
    if dim % slices[0].weight.dim() != slices[0].weight.dim() - 2:
        return None
    return FP8Slice(torch.cat([s.weight for s in slices], dim=dim), torch.cat([s.scale for s in slices], dim=dim),
                    slices[0].group_k, slices[0].k_offset)
