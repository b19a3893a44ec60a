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
from ..parallel.sharding import HeadShard, Range, head_rows, head_shards, padded_shard_range, shard_range
from .policy import Policy

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
    layout: str  # linear (weight is (out, in)) | conv1d (weight is (in, out)) | embedding
    params: Mapping[str, ParamShard]  # local param name ("weight", "bias") -> shard; absent: replicated


@dataclass(frozen=True)
class ShardingPlan:
    model_type: str
    tp_size: int
    modules: Mapping[str, ModuleShard]
    attention: Mapping[str, tuple[HeadShard, ...]] = field(default_factory=dict)

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


def _split_dims(layout: str, style: str) -> tuple[int, int]:
    """(weight dim that is split, size-defining dim) for a layout and style."""
    if style == "row":
        return (0 if layout == "conv1d" else 1), 0
    return (1 if layout == "conv1d" else 0), 0


def head_geometry(config, policy: Policy) -> tuple[int, int, int]:
    """(num query heads, num key/value heads, head_dim) from the config fields the policy names."""
    num_q = getattr(config, policy.num_heads)
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
    _check_rules_match(policy, modules)

    heads = None
    if policy.heads or policy.attention:
        num_q, num_kv, head_dim = head_geometry(text_config, policy)
        heads = head_shards(num_q, num_kv, tp_size, model_name)

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
        planned[name] = _module_shard(name, module, style, layout, head_kind, heads, head_dim if heads else 0, tp_size)
    if unmatched:
        raise PolicyError(
            f"Policy {policy.name!r} does not say how to split {len(unmatched)} linear layer(s) of {model_name}, "
            f"e.g. {unmatched[:3]}. Add a rule for them (\"replicate\" keeps a full copy on every rank)."
        )
    attention = {}
    if policy.attention:
        attention = {name: tuple(heads) for name in modules if fnmatch.fnmatchcase(name, policy.attention)}
    return ShardingPlan(model_type=getattr(config, "model_type", "?"), tp_size=tp_size, modules=planned, attention=attention)


def _check_rules_match(policy: Policy, modules) -> None:
    names = list(modules)
    generic = [".".join("*" if p.isdigit() else p for p in n.split(".")) for n in names]
    for glob in [*policy.rules, *([policy.attention] if policy.attention else [])]:
        if not any(fnmatch.fnmatchcase(n, glob) for n in names):
            close = difflib.get_close_matches(glob, sorted(set(generic)), n=1)
            hint = f" Closest: {close[0]!r}." if close else ""
            raise PolicyError(f"Policy {policy.name!r}: rule {glob!r} matched no module of the model.{hint}")


def _module_shard(name, module, style, layout, head_kind, heads, head_dim, tp_size) -> ModuleShard:
    weight = module.weight
    dim, _ = _split_dims(layout, style)
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

    if head_kind is not None:
        ranges = [head_rows(h.q_heads if head_kind == "q" else h.kv_heads, head_dim) for h in heads]
        expected = max(b for _, b in ranges)
        if size != expected:
            raise ShardingError(
                f"{name}: the split dimension has {size} entries but the config's head geometry gives {expected} "
                f"({'query' if head_kind == 'q' else 'key/value'} heads x head_dim={head_dim}); check the policy's head fields."
            )
    else:
        ranges = [shard_range(size, tp_size, r) for r in range(tp_size)]
        if min(b - a for a, b in ranges) == 0:
            raise ShardingError(f"{name}: dimension of size {size} cannot be split over tp_size={tp_size}")
    shard = ParamShard(dim=dim, pieces=tuple((r,) for r in ranges), local_size=tuple(b - a for a, b in ranges))
    params = {"weight": shard}
    if style == "column" and getattr(module, "bias", None) is not None:
        params["bias"] = ParamShard(dim=0, pieces=shard.pieces, local_size=shard.local_size)
    return ModuleShard(name, style, layout, params)
