"""Policy registry: one declarative Policy per architecture family, looked up by config.model_type;
configs without one fall back to the automatic policy built from their ``base_model_tp_plan``."""

from __future__ import annotations

from ..errors import PolicyError
from .auto import auto_policy
from .bloom import BLOOM
from .falcon import FALCON
from .gemma import GEMMA
from .gpt2 import GPT2
from .llama import LLAMA
from .moe import MOE
from .neox import GPT_NEOX
from .opt import OPT
from .phi3 import PHI3
from .policy import STYLES, Policy

_REGISTRY: dict[str, Policy] = {}


def register_policy(model_type: str, policy: Policy) -> None:
    """Use ``policy`` for configs whose ``model_type`` is ``model_type`` (replaces any earlier one)."""
    if not isinstance(policy, Policy):
        raise TypeError(f"register_policy expects an hf_tp.policies.Policy, got {type(policy).__name__}")
    _REGISTRY[model_type] = policy


def supported_model_types() -> list[str]:
    """Model types with a hand-written (or registered) policy."""
    return sorted(_REGISTRY)


def get_policy(config) -> Policy:
    """The policy for a Transformers config: the registered one, else the automatic one from the
    config's ``base_model_tp_plan``; PolicyError listing the supported types if neither exists."""
    model_type = getattr(config, "model_type", None)
    if model_type in _REGISTRY:
        return _REGISTRY[model_type]
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    towers = [name for name in ("vision_config", "audio_config") if getattr(config, name, None) is not None]
    if text_config is not config and towers:
        # A multimodal model: its text policy would be applied to the vision/audio tower's weights too.
        raise PolicyError(
            f"model_type={model_type!r} is a multimodal model ({', '.join(towers)}); hf_tp splits text-only causal "
            f"LMs. Load a text-only checkpoint of it (model_type={getattr(text_config, 'model_type', None)!r}), or "
            "use tp_size=None for plain Transformers."
        )
    policy = auto_policy(text_config)
    if policy is not None:
        return policy
    raise PolicyError(
        f"hf_tp has no tensor-parallel policy for model_type={model_type!r}, and its config has no "
        f"base_model_tp_plan to build one from. Supported model types: {', '.join(supported_model_types())} "
        "(plus any whose config carries a base_model_tp_plan). "
        "Register one with hf_tp.policies.register_policy(model_type, Policy(...))."
    )


for _policy in (LLAMA, GEMMA, PHI3, GPT2, GPT_NEOX, OPT, FALCON, BLOOM, MOE):
    for _model_type in _policy.model_types:
        register_policy(_model_type, _policy)

__all__ = ["Policy", "STYLES", "register_policy", "get_policy", "supported_model_types", "auto_policy",
           "LLAMA", "GEMMA", "PHI3", "GPT2", "GPT_NEOX", "OPT", "FALCON", "BLOOM", "MOE"]
