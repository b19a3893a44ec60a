"""The decode path of MoE experts modules: at most MOE_DECODE_MAX_TOKENS tokens per call go through
hf_tp's Triton kernels (hf_tp/kernels/moe_decode.py), which read only the chosen experts; larger calls
(prefill, large batches) keep Transformers' own experts forward (grouped GEMM on CUDA).

Chosen once at load (TPConfig.moe_decode, shown in ``model.hf_tp_config``; default "triton" on CUDA with
Triton, measured faster on an H200; "grouped" elsewhere): "triton" installs the switch on every experts module the kernels can compute, "grouped" leaves
Transformers' forward alone. Per module, the
check is made once here, not per call: fused [gate; up] 3-D weights with unit stride in their last dim, a
float dtype the kernels read (an FP8 or otherwise quantized experts module keeps its own forward), SiLU
gating, no biases."""

from __future__ import annotations

import types

import torch
import torch.nn as nn

from ..kernels.moe_decode import MOE_DECODE_MAX_TOKENS, moe_experts_decode

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _default_apply_gate():
    """Transformers' default [gate; up] gating (5.x); a class that overrides it computes something else. Imported
    when a model has experts: transformers.integrations.moe imports torch._dynamo (2 s on a CPU host)."""
    try:
        from transformers.integrations.moe import _default_apply_gate as default
    except ImportError:  # pragma: no cover - an older Transformers: only classes without _apply_gate qualify
        return None
    return default


def _has_default_gate(module: nn.Module) -> bool:
    default = _default_apply_gate()
    return getattr(type(module), "_apply_gate", default) is default


def kernel_supports(module: nn.Module) -> bool:
    """Whether the kernels compute exactly what this experts module's forward computes."""
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    if not (isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor)) or gate_up.dim() != 3 or down.dim() != 3:
        return False
    act = getattr(getattr(module, "config", None), "hidden_act", None)
    return (gate_up.dtype in _DTYPES and down.dtype == gate_up.dtype and gate_up.stride(-1) == 1 and down.stride(-1) == 1
            and getattr(module, "has_gate", False) and not getattr(module, "has_bias", True)
            and not getattr(module, "is_transposed", True) and getattr(module, "is_concatenated", False)
            # Transformers 5.17 has no post-expert norm and no such attribute; 5.24 sets it (False for these models).
            and not getattr(module, "has_post_expert_norm", False)
            and _has_default_gate(module) and act == "silu"
            and gate_up.shape[1] == 2 * down.shape[2] and gate_up.shape[0] == down.shape[0])


def _forward(self, hidden_states, top_k_index, top_k_weights):
    # A Python branch on a static shape: torch.compile specialises the decode step on it, nothing syncs.
    if hidden_states.shape[0] <= MOE_DECODE_MAX_TOKENS:
        return moe_experts_decode(hidden_states, self.gate_up_proj, self.down_proj, top_k_index, top_k_weights)
    return self._hf_tp_grouped_forward(hidden_states, top_k_index, top_k_weights)


def install_moe_decode(model: nn.Module, mode: str) -> int:
    """Give every experts module the kernels supports the decode switch (mode "triton"); returns how many."""
    if mode != "triton":
        return 0
    count = 0
    for module in model.modules():
        if kernel_supports(module) and not hasattr(module, "_hf_tp_grouped_forward"):
            module._hf_tp_grouped_forward = module.forward
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count
