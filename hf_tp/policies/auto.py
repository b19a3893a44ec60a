"""The automatic policy: a Transformers config's ``base_model_tp_plan`` translated onto hf_tp's
own layers, for architectures without a hand-written policy.

Transformers' style strings that have an hf_tp meaning are translated; any other string is
refused with a PolicyError rather than guessed. Styles whose result is a full tensor on every
rank (``colwise_gather_output``, ``rowwise_split_input``) become "replicate": the same numbers,
computed without splitting.
"""

from __future__ import annotations

from ..errors import PolicyError
from .policy import Policy

# Transformers' style -> hf_tp style (fused parts for packed ones).
_STYLES = {
    "colwise": "column",
    "rowwise": "row",
    "packed_colwise": "column",  # [gate | up] packed along the output features
    "embedding_rowwise": "vocab",
    "replicated_with_grad_allreduce": "replicate",
    "colwise_gather_output": "replicate",
    "rowwise_split_input": "replicate",
}
# Last name part of key/value projections, whose output is made of key/value heads.
_KV_NAMES = ("k_proj", "v_proj", "key", "value", "wk", "wv", "k", "v")


def auto_policy(config) -> Policy | None:
    """A Policy from ``config.base_model_tp_plan``, or None when the config has no plan."""
    plan = getattr(config, "base_model_tp_plan", None)
    if not plan:
        return None
    model_type = getattr(config, "model_type", "?")
    unknown = {k: v for k, v in plan.items() if v not in _STYLES}
    if unknown:
        raise PolicyError(
            f"model_type={model_type!r} has no hand-written hf_tp policy, and its base_model_tp_plan uses "
            f"Transformers split styles hf_tp does not translate: {unknown}. Known: {sorted(_STYLES)}. "
            "Register a policy with hf_tp.policies.register_policy(model_type, Policy(...))."
        )
    rules, heads, fused, attention = {}, {}, {}, ""
    for key, style in plan.items():
        glob = f"*.{key}"  # keys are relative to the base model (model.layers.*..., transformer.h.*...)
        rules[glob] = _STYLES[style]
        if style == "packed_colwise":
            fused[glob] = ("gate", "up")
        parent, _, leaf = glob.rpartition(".")
        if _STYLES[style] in ("column", "row") and ("attn" in parent or "attention" in parent):
            heads[glob] = "kv" if _STYLES[style] == "column" and leaf in _KV_NAMES else "q"
            if _STYLES[style] == "row":
                attention = attention or parent
    rules.setdefault("*.embed_tokens", "vocab")
    rules.setdefault("lm_head", "vocab")
    rules["*"] = "replicate"  # as in Transformers: what the plan does not name is replicated
    return Policy(
        name=f"auto:{model_type}",
        model_types=(model_type,),
        rules=rules,
        optional=("*.embed_tokens",),
        heads=heads,
        fused=fused,
        attention=attention,
    )


def auto_model_types() -> list[str]:
    """Causal-LM model types of the installed Transformers that the automatic policy serves: their config
    class carries a ``base_model_tp_plan`` whose styles all translate, and no hand-written or registered
    policy takes them first. Only granite, starcoder2 and olmo2 are checked against Transformers by the tests;
    the others are translated the same way but unverified. Imports every config module: about 3 s."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from . import supported_model_types  # here: the registry's module imports this one

    registered = set(supported_model_types())
    served = []
    for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        if model_type in registered:
            continue
        try:
            plan = getattr(CONFIG_MAPPING[model_type], "base_model_tp_plan", None)
        except Exception:  # noqa: BLE001 - a config module that cannot be imported here serves nothing
            continue
        if isinstance(plan, dict) and plan and all(style in _STYLES for style in plan.values()):
            served.append(model_type)
    return sorted(served)
