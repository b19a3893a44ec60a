"""config + policy + tp_size -> sharding plan: for every split tensor, its dim and each rank's slice.

The plan is plain data computed from a meta-device skeleton (no weights, no process group),
so it can be printed, diffed and tested. ``validate`` runs here: a policy that does not fit the
model raises before any process is started or any byte is read.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Mapping

from torch import nn

from ..errors import PolicyError, ShardingError
from ..parallel.sharding import (HeadShard, Range, aligned_shard_range, grouped_qkv_ranges, head_rows, head_shards,
                                 packed_ranges, padded_shard_range)
from .policy import HEAD_PARTS, Policy

try:  # GPT-2 style (in, out) linear layers
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - present in every supported transformers
    Conv1D = ()


@dataclass(frozen=True)
class ParamShard:
    """How one checkpoint tensor is cut. ``pieces[r]`` are [start, stop) ranges along ``dim``
    that rank r concatenates (several pieces for fused tensors); ``local_size[r]`` is the
    length after zero padding (vocab shards are padded to equal length)."""

    dim: int
    pieces: tuple[tuple[Range, ...], ...]
    local_size: tuple[int, ...]


@dataclass(frozen=True)
class ModuleShard:
    name: str
    style: str  # column | row | vocab
    # linear (weight is (out, in)) | conv1d (weight is (in, out)) | embedding
    # | experts (module kept; 3-D (experts, out, in) parameters resized in place)
    layout: str
    params: Mapping[str, ParamShard]  # local param name ("weight", "bias") -> shard; absent: replicated


@dataclass(frozen=True)
class ShardingPlan:
    model_type: str
    tp_size: int
    modules: Mapping[str, ModuleShard]
    attention: Mapping[str, tuple[HeadShard, ...]] = field(default_factory=dict)
    attention_attrs: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # policy.local_attrs, per rank

    def param_shard(self, param_name: str) -> ParamShard | None:
        """The shard of a full parameter name, or None when it is replicated."""
        module_name, _, local = param_name.rpartition(".")
        module = self.modules.get(module_name)
        return None if module is None else module.params.get(local)

    def describe(self, tp_rank: int | None = None) -> str:
        """A readable table: one line per split tensor (collapsed over layers), each rank's slices."""
        ranks = range(self.tp_size) if tp_rank is None else [tp_rank]
        lines, seen = [f"ShardingPlan(model_type={self.model_type!r}, tp_size={self.tp_size})"], set()
        for name, module in self.modules.items():
            for pname, shard in module.params.items():
                pattern = ".".join("*" if part.isdigit() else part for part in f"{name}.{pname}".split("."))
                if pattern in seen:
                    continue
                seen.add(pattern)
                slices = "  ".join(f"r{r}:{list(shard.pieces[r])}" for r in ranks)
                lines.append(f"  {pattern:<48} {module.style:<7} dim={shard.dim}  {slices}")
        for name, shards in list(self.attention.items())[:1]:
            heads = "  ".join(f"r{r}:q{shards[r].q_heads} kv{shards[r].kv_heads}" for r in ranks)
            lines.append(f"  heads ({name.split('.')[-1]})  {heads}")
        return "\n".join(lines)


def _match(name: str, globs) -> str | None:
    for glob in globs:
        if fnmatch.fnmatchcase(name, glob):
            return glob
    return None


def _layout(module: nn.Module) -> str:
    if isinstance(module, nn.Embedding):
        return "embedding"
    if Conv1D and isinstance(module, Conv1D):
        return "conv1d"
    if isinstance(module, nn.Linear):
        return "linear"
    raise PolicyError(f"cannot split a {type(module).__name__}: only nn.Linear, Conv1D and nn.Embedding are splittable")


def _split_dim(layout: str, style: str) -> int:
    """The weight dim that is split, for a layout and style."""
    if layout == "experts":  # (experts, out, in)
        return 2 if style == "row" else 1
    if style == "row":
        return 0 if layout == "conv1d" else 1
    return 1 if layout == "conv1d" else 0


def head_geometry(config, policy: Policy) -> tuple[int, int, int]:
    """(num query heads, num key/value heads, head_dim) from the config fields the policy names."""
    num_q = getattr(config, policy.num_heads)
    if callable(policy.num_kv_heads):
        num_kv = policy.num_kv_heads(config)
    else:
        num_kv = getattr(config, policy.num_kv_heads, None) or num_q
    head_dim = getattr(config, policy.head_dim, None) or config.hidden_size // num_q
    return num_q, num_kv, head_dim


def validate_tp_size(tp_size) -> None:
    if not isinstance(tp_size, int) or isinstance(tp_size, bool) or tp_size < 1:
        raise ValueError(f"tp_size must be a positive integer, got {tp_size!r}. Use tp_size=2 to split over 2 devices.")


def build_plan(model: nn.Module, config, policy: Policy, tp_size: int, model_name: str = "this model") -> ShardingPlan:
    """Compute the plan for ``model`` (a meta-device skeleton is enough). Raises, never warns."""
    validate_tp_size(tp_size)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    modules = dict(model.named_modules())
    parameters = dict(model.named_parameters())
    _check_rules_match(policy, modules, parameters)

    geometry = None
    if policy.heads or policy.attention or any(p in HEAD_PARTS for parts in policy.fused.values() for p in parts):
        num_q, num_kv, head_dim = head_geometry(text_config, policy)
        geometry = (head_shards(num_q, num_kv, tp_size, model_name), num_q, num_kv, head_dim)

    planned: dict[str, ModuleShard] = {}
    unmatched = []
    for name, module in modules.items():
        glob = _match(name, policy.rules)
        if glob is None:
            if isinstance(module, nn.Linear) or (Conv1D and isinstance(module, Conv1D)):
                unmatched.append(name)
            continue
        style = policy.rules[glob]
        if style == "replicate":
            continue
        layout = _layout(module)
        head_kind = policy.heads.get(_match(name, policy.heads) or "", None)
        parts = policy.fused.get(_match(name, policy.fused) or "", ())
        planned[name] = _module_shard(name, module, style, layout, head_kind, parts, geometry, tp_size)
    if unmatched:
        raise PolicyError(
            f"Policy {policy.name!r} does not say how to split {len(unmatched)} linear layer(s) of {model_name}, "
            f"e.g. {unmatched[:3]}. Add a rule for them (\"replicate\" keeps a full copy on every rank)."
        )
    for module_name, shard in _param_shards(policy, parameters, geometry, tp_size).items():
        if module_name in planned:
            raise PolicyError(f"Policy {policy.name!r}: {module_name} is matched by both rules and params; use one.")
        planned[module_name] = shard
    attention, attrs = {}, {}
    if policy.attention:
        attention = {name: tuple(geometry[0]) for name in modules if fnmatch.fnmatchcase(name, policy.attention)}
    if policy.local_attrs:
        attrs = {attr: _local_attr(kind, geometry) for attr, kind in policy.local_attrs.items()}
    return ShardingPlan(model_type=getattr(config, "model_type", "?"), tp_size=tp_size, modules=planned,
                        attention=attention, attention_attrs=attrs)


def _local_attr(kind: str, geometry) -> tuple[int, ...]:
    heads, _, _, head_dim = geometry
    counts = [h.num_q if kind.startswith("q") else h.num_kv for h in heads]
    return tuple(c * head_dim for c in counts) if kind.endswith("_width") else tuple(counts)


def _param_shards(policy: Policy, parameters, geometry, tp_size: int) -> dict[str, ModuleShard]:
    """ModuleShards for parameters split in place (3-D MoE expert tensors), grouped by module."""
    by_module: dict[str, dict[str, ParamShard]] = {}
    styles: dict[str, set[str]] = {}
    for name, param in parameters.items():
        glob = _match(name, policy.params)
        if glob is None:
            continue
        if param.dim() != 3:
            raise PolicyError(f"Policy {policy.name!r}: params rule {glob!r} matched {name} of shape "
                              f"{tuple(param.shape)}; params rules are for 3-D (experts, out, in) tensors.")
        style = policy.params[glob]
        dim = _split_dim("experts", style)
        parts = policy.fused.get(_match(name, policy.fused) or "", ())
        # Transformers' grouped_mm expert kernels need 16-byte-aligned strides: cut the intermediate
        # features in multiples of 8 elements (16 bytes in bf16/fp16, 32 in fp32) where the size allows.
        pieces = _pieces(name, param.shape[dim], None, parts, geometry, tp_size, granule=8)
        module_name, _, local = name.rpartition(".")
        by_module.setdefault(module_name, {})[local] = ParamShard(dim, pieces, tuple(_length(p) for p in pieces))
        styles.setdefault(module_name, set()).add(style)
    return {m: ModuleShard(m, "row" if "row" in styles[m] else "column", "experts", params)
            for m, params in by_module.items()}


def _length(ranges) -> int:
    return sum(b - a for a, b in ranges)


def _pieces(name, size, head_kind, parts, geometry, tp_size, granule=1) -> tuple[tuple[Range, ...], ...]:
    """Per rank, the ranges of a dimension of ``size`` it owns (several for packed tensors)."""
    if (head_kind or any(p in HEAD_PARTS for p in parts)) and geometry is None:
        raise PolicyError(f"{name}: split on attention heads but the policy names no head geometry.")
    if geometry is not None:
        heads, num_q, num_kv, head_dim = geometry
    if parts:
        head_sizes = {"q": num_q * head_dim, "k": num_kv * head_dim, "v": num_kv * head_dim} if geometry else {}
        others = [p for p in parts if p not in HEAD_PARTS]
        rest = size - sum(head_sizes[p] for p in parts if p in HEAD_PARTS)
        each = rest // len(others) if others else 0
        if rest < 0 or (others and (rest % len(others) or each < tp_size)) or (not others and rest):
            raise ShardingError(
                f"{name}: the split dimension has {size} entries, which cannot hold the fused parts {parts} "
                f"(query heads x head_dim={head_sizes.get('q')}, key/value heads x head_dim={head_sizes.get('k')}, "
                f"other parts equal and at least tp_size={tp_size}); check the policy's fused and head fields."
            )
        per_rank = []
        for r in range(tp_size):
            spec = []
            for p in parts:
                if p == "q":
                    spec.append((head_sizes["q"], head_rows(heads[r].q_heads, head_dim)))
                elif p in HEAD_PARTS:
                    spec.append((head_sizes[p], head_rows(heads[r].kv_heads, head_dim)))
                else:
                    spec.append((each, aligned_shard_range(each, tp_size, r, granule)))
            per_rank.append(packed_ranges(spec))
        return tuple(per_rank)
    if head_kind == "qkv_grouped":
        expected = (num_q + 2 * num_kv) * head_dim
        if num_q % num_kv or size != expected:
            raise ShardingError(
                f"{name}: the packed QKV dimension has {size} entries but {num_q} query and {num_kv} key/value "
                f"heads x head_dim={head_dim} give {expected}; check the policy's head fields."
            )
        return tuple(grouped_qkv_ranges(h, num_q // num_kv, head_dim) for h in heads)
    if head_kind is not None:
        ranges = [head_rows(h.q_heads if head_kind == "q" else h.kv_heads, head_dim) for h in heads]
        expected = max(b for _, b in ranges)
        if size != expected:
            raise ShardingError(
                f"{name}: the split dimension has {size} entries but the config's head geometry gives {expected} "
                f"({'query' if head_kind == 'q' else 'key/value'} heads x head_dim={head_dim}); check the policy's head fields."
            )
        return tuple((r,) for r in ranges)
    ranges = [aligned_shard_range(size, tp_size, r, granule) for r in range(tp_size)]
    if min(b - a for a, b in ranges) == 0:
        raise ShardingError(f"{name}: dimension of size {size} cannot be split over tp_size={tp_size}")
    return tuple((r,) for r in ranges)


def _check_rules_match(policy: Policy, modules, parameters) -> None:
    for globs, names, what in ((policy.rules, modules, "module"), (policy.params, parameters, "parameter"),
                               ([policy.attention] if policy.attention else [], modules, "module"),
                               (policy.fused, [*modules, *parameters], "module or parameter")):
        generic = sorted({".".join("*" if p.isdigit() else p for p in n.split(".")) for n in names})
        for glob in globs:
            if glob in policy.optional:
                continue
            if not any(fnmatch.fnmatchcase(n, glob) for n in names):
                close = difflib.get_close_matches(glob, generic, n=1)
                hint = f" Closest: {close[0]!r}." if close else ""
                raise PolicyError(f"Policy {policy.name!r}: rule {glob!r} matched no {what} of the model.{hint}")


def _module_shard(name, module, style, layout, head_kind, parts, geometry, tp_size) -> ModuleShard:
    weight = module.weight
    dim = _split_dim(layout, style)
    size = weight.shape[dim]
    if style == "vocab":
        if layout != "embedding" and dim != 0:
            raise PolicyError(f"{name}: vocab split needs an (vocab, hidden) weight")
        pieces, local = [], []
        for r in range(tp_size):
            rng, length = padded_shard_range(size, tp_size, r)
            pieces.append((rng,))
            local.append(length)
        shard = ParamShard(dim=0, pieces=tuple(pieces), local_size=tuple(local))
        params = {"weight": shard}
        if getattr(module, "bias", None) is not None:
            params["bias"] = shard  # (vocab,) bias rows follow the weight rows
        return ModuleShard(name, style, layout, params)

    pieces = _pieces(name, size, head_kind, parts, geometry, tp_size)
    shard = ParamShard(dim=dim, pieces=pieces, local_size=tuple(_length(p) for p in pieces))
    params = {"weight": shard}
    if style == "column" and getattr(module, "bias", None) is not None:
        params["bias"] = ParamShard(dim=0, pieces=shard.pieces, local_size=shard.local_size)
    return ModuleShard(name, style, layout, params)
