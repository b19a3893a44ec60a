"""Policy registry: one declarative Policy per architecture family, looked up by config.model_type."""

from __future__ import annotations

from ..errors import PolicyError
from .llama import LLAMA
from .policy import STYLES, Policy

_REGISTRY: dict[str, Policy] = {}


def register_policy(model_type: str, policy: Policy) -> None:
    """Use ``policy`` for configs whose ``model_type`` is ``model_type`` (replaces any earlier one)."""
    if not isinstance(policy, Policy):
        raise TypeError(f"register_policy expects an hf_tp.policies.Policy, got {type(policy).__name__}")
    _REGISTRY[model_type] = policy


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def get_policy(config) -> Policy:
    """The policy for a Transformers config; PolicyError listing the supported types if none."""
    model_type = getattr(config, "model_type", None)
    if model_type in _REGISTRY:
        return _REGISTRY[model_type]
    raise PolicyError(
        f"hf_tp has no tensor-parallel policy for model_type={model_type!r}. "
        f"Supported model types: {', '.join(supported_model_types())}. "
        "Register one with hf_tp.policies.register_policy(model_type, Policy(...))."
    )


for _policy in (LLAMA,):
    for _model_type in _policy.model_types:
        register_policy(_model_type, _policy)

__all__ = ["Policy", "STYLES", "register_policy", "get_policy", "supported_model_types", "LLAMA"]
