"""Turn a meta-device Transformers skeleton into a tensor-parallel one, following a ShardingPlan.

Only module swaps and attribute rewrites; weights are filled afterwards by hf_tp.loading.
"""

from __future__ import annotations

import torch
from accelerate import init_empty_weights
from torch import nn

from .compat import init_weights, no_init_weights
from .config import TPConfig
from .parallel.comm import TPGroup, all_gather_uneven, all_reduce
from .parallel.layers import ColumnParallelLinear, ParallelLMHead, RowParallelLinear, VocabParallelEmbedding
from .policies import Policy, get_policy
from .policies.plan import ModuleShard, ShardingPlan


def build_skeleton(config, dtype: torch.dtype, **model_kwargs) -> nn.Module:
    """The Transformers model for ``config`` with parameters on meta and (small) buffers real on CPU,
    so rotary tables and the like are computed as Transformers computes them.

    Weight initialisation is skipped (Transformers' own ``no_init_weights``, as its from_pretrained
    does): on meta tensors it only costs time (0.1 s of 0.12 s for the 13B shape's skeleton on the 2-core dev machine). Modules
    that own buffers still get the model's ``_init_weights``, since some models fill buffers there."""
    import transformers

    with init_empty_weights(include_buffers=False):
        with no_init_weights():
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, **model_kwargs)
        with torch.no_grad():
            _init_buffer_owners(model, model)
    # from_config leaves tying to from_pretrained; tie now so shared weights are read once and stay shared.
    model.tie_weights()
    return model


def _init_buffer_owners(module: nn.Module, owner) -> None:
    """``_init_weights`` of the nearest enclosing PreTrainedModel (as Transformers' own
    initialize_weights picks it) for every module that owns buffers."""
    from transformers import PreTrainedModel

    if isinstance(module, PreTrainedModel):
        owner = module
    if next(module.buffers(recurse=False), None) is not None:
        init_weights(owner, module)
    for child in module.children():
        _init_buffer_owners(child, owner)


def _parallel_module(old: nn.Module, shard: ModuleShard, tp: TPGroup, config: TPConfig) -> nn.Module:
    weight = old.weight
    local = shard.params["weight"].local_size[tp.tp_rank]
    has_bias = getattr(old, "bias", None) is not None
    kw = dict(tp=tp, dtype=weight.dtype, device="meta")
    # (out, in) for nn.Linear; (in, out) for Conv1D
    out_full, in_full = (weight.shape[1], weight.shape[0]) if shard.layout == "conv1d" else tuple(weight.shape[:2])
    if shard.style == "vocab" and shard.layout == "embedding":
        (start, stop), = shard.params["weight"].pieces[tp.tp_rank]
        return VocabParallelEmbedding(old.num_embeddings, (start, stop), local, old.embedding_dim,
                                      padding_idx=old.padding_idx, embed_scale=getattr(old, "embed_scale", None), **kw)
    if shard.style == "vocab":
        return ParallelLMHead(in_full, out_full, local, has_bias, fp32_logits=config.fp32_logits, **kw)
    if shard.style == "column":
        return ColumnParallelLinear(in_full, local, has_bias, **kw)
    return RowParallelLinear(local, out_full, has_bias, reduce_fp32=config.reduce_fp32, **kw)


def _resize_in_place(module: nn.Module, shard: ModuleShard, tp: TPGroup) -> None:
    """Kept modules (MoE experts): give each split parameter its local shape (still on meta).

    A module with row-split parameters computes a partial sum of its output (each rank holds
    a slice of every expert's intermediate features), so its output is all-reduced."""
    for local, pshard in shard.params.items():
        old = module._parameters[local]
        shape = list(old.shape)
        shape[pshard.dim] = pshard.local_size[tp.tp_rank]
        module._parameters[local] = nn.Parameter(torch.empty(shape, dtype=old.dtype, device="meta"), requires_grad=False)
    if shard.style == "row" and tp.tp_size > 1:
        module.register_forward_hook(lambda _module, _args, output: all_reduce(output, tp))


def parallelize(model: nn.Module, plan: ShardingPlan, tp: TPGroup, policy: Policy | None = None,
                config: TPConfig | None = None) -> frozenset[str]:
    """Swap every planned module for its parallel layer, keep ties, rewrite per-rank head counts,
    then run the policy's ``adapt`` hook if it has one (``policy`` defaults to the config's).
    ``config``: the layers' numerics (TPConfig.reduce_fp32, fp32_logits); defaults when None.

    Returns the parameter names whose checkpoint layout is transposed relative to the new layer.
    """
    tied = {}  # id(original param) -> first new module that took its place
    for name, param in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(param), []).append(name)
    transposed = set()
    replaced: dict[str, nn.Module] = {}
    for name, shard in plan.modules.items():
        old = model.get_submodule(name)
        if shard.layout == "experts":
            _resize_in_place(old, shard, tp)
            continue
        new = _parallel_module(old, shard, tp, config or TPConfig())
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        replaced[name] = new
        if shard.layout == "conv1d":
            transposed.add(f"{name}.weight")
    # Tied weights (input embedding == LM head): make the new layers share one Parameter again.
    for names in tied.values():
        if len(names) > 1:
            owners = [n.rpartition(".") for n in names]
            first = model.get_submodule(owners[0][0])
            for owner, _, attr in owners[1:]:
                setattr(model.get_submodule(owner), attr, getattr(first, owners[0][2]))
    for name, shards in plan.attention.items():
        module = model.get_submodule(name)
        _set_local_heads(module, shards[tp.tp_rank])
        for attr, values in plan.attention_attrs.items():
            setattr(module, attr, values[tp.tp_rank])
    if plan.attention and tp.tp_size > 1:
        _gather_attention_weights(model, plan, tp)
    policy = policy if policy is not None else get_policy(model.config)
    if policy.adapt is not None:
        policy.adapt(model, plan, tp)
    return frozenset(transposed)


def _gather_attention_weights(model: nn.Module, plan: ShardingPlan, tp: TPGroup) -> None:
    """Hooks that give ``output_attentions`` every head, as the unsplit model returns them.

    Transformers' attention modules return (output, weights), weights (batch, local heads, q, k) with
    eager attention. Each rank computes its own query heads, contiguous and in rank order, so a gather
    along the head dim rebuilds the full tensor. Eager attention returns the weights on every call,
    asked for or not, so they are gathered only when the call asked for them (the ``output_attentions``
    argument, else the config's, as Transformers decides), read by a pre-hook on every PreTrainedModel
    (the top-level model and the base model it calls, which users call too). Prepended, so
    Transformers' own output-recording hooks (installed at the first call) see the gathered weights.
    Every rank takes the same branches: the ranks' inputs agree."""
    from transformers import PreTrainedModel

    wanted = [False]

    def request(module, _args, kwargs):
        if not torch.compiler.is_compiling():
            flag = kwargs.get("output_attentions")
            wanted[0] = bool(getattr(module.config, "output_attentions", False) if flag is None else flag)

    def gather(q_heads):
        def hook(_module, _args, output):
            # is_compiling first: a compiled step never gathers, and does not guard on wanted[0].
            if (not torch.compiler.is_compiling() and wanted[0] and isinstance(output, tuple) and len(output) > 1
                    and torch.is_tensor(output[1]) and output[1].dim() == 4):
                return (output[0], all_gather_uneven(output[1], q_heads, 1, tp), *output[2:])
            return None

        return hook

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.register_forward_pre_hook(request, with_kwargs=True)
    for name, shards in plan.attention.items():
        model.get_submodule(name).register_forward_hook(gather(tuple(h.num_q for h in shards)), prepend=True)


# Attribute names Transformers attention modules use for head counts; whichever exist are rewritten.
_Q_ATTRS = ("num_heads", "num_attention_heads", "n_head", "num_q_heads")
_KV_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")


def _set_local_heads(module: nn.Module, heads) -> None:
    for attr in _Q_ATTRS:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, heads.num_q)
    for attr in _KV_ATTRS:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, heads.num_kv)
    if hasattr(module, "num_key_value_groups"):
        # With replicated KV heads a rank holds fewer query heads per KV head than the model does.
        module.num_key_value_groups = heads.num_q // heads.num_kv
