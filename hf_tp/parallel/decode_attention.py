"""The decode path of attention: decode-shaped calls go through hf_tp's split-KV Triton kernel
(hf_tp/kernels/decode_attention.py), every other call to Transformers' sdpa attention function, unchanged.

Installed once at load (TPConfig.decode_attention == "triton") by naming ATTENTION_NAME as the text model's
attention implementation, which Transformers' attention layers look up at every call in its
``AttentionInterface``. Its mask function is Transformers' own sdpa mask function, registered under the same name
(masking_utils builds no mask at all for a name it does not know), so the masks are the ones sdpa would get:
the kernel reads them as SDPA does.

Called eagerly on CUDA outside hf_tp's decode loop (Transformers' generate on the parallel model), sdpa runs:
the kernel serves the loop and compiled or captured steps (``hf_tp.kernels.decode_gemm.launch_context_pays``).

The kernel applies to a call when (decided from shapes, dtypes and Python arguments: nothing read back from
the device, so the check costs nothing inside the compiled, captured step):
  - one query token per sequence (decode), no dropout, no softcapping, attention sinks, position bias or
    attention-weight output (a sliding window is fine: sdpa ignores the argument too, the window is in the mask
    the model builds, and the kernel reads only the slots that mask keeps: a sliding layer as long as the cache,
    as the decode loop gives it, then costs its window's reads, not the cache's);
  - fp32, fp16 or bf16 query, keys and values of one dtype, head dim at most MAX_HEAD_DIM, whole query groups;
  - no mask, or a boolean mask of shape (1 or batch, 1, 1, kv length), which is what sdpa's mask function
    builds for decode steps (a float mask, a per-head mask or another length goes to sdpa).
"""

from __future__ import annotations

import dataclasses

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ..kernels.decode_gemm import launch_context_pays

ATTENTION_NAME = "hf_tp_sdpa_decode"
MAX_HEAD_DIM = 256
MAX_GROUP = 64  # query heads per KV head: the M rows of the kernel's dot products
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Keyword arguments whose non-default value changes what attention computes in ways the kernel does not.
# (Not ``sliding_window``: Transformers' sdpa function ignores it, the sliding-window mask carries the window.)
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks", "position_bias", "head_mask")


def kernel_applies(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask, kwargs: dict) -> bool:
    """Whether hf_tp's decode kernel computes exactly what Transformers' sdpa function would for this call."""
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4 or query.shape[2] != 1:
        return False
    if kwargs.get("dropout", 0.0) or kwargs.get("output_attentions", False):
        return False
    if any(kwargs.get(name) is not None for name in _UNSUPPORTED_KWARGS):
        return False
    batch, q_heads, _, head_dim = query.shape
    kv_heads, slots = key.shape[1], key.shape[2]
    if not (query.dtype in _DTYPES and key.dtype == query.dtype and value.dtype == query.dtype):
        return False
    if (key.shape[0] != batch or value.shape[:3] != key.shape[:3] or key.shape[-1] != head_dim
            or value.shape[-1] != head_dim or head_dim > MAX_HEAD_DIM):
        return False
    if kv_heads == 0 or q_heads % kv_heads or q_heads // kv_heads > MAX_GROUP:
        return False
    if mask is None:
        return True
    return (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.dim() == 4
            and mask.shape[0] in (1, batch) and mask.shape[1] == 1 and mask.shape[2] == 1 and mask.shape[3] == slots)


def sdpa_decode_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """Transformers' attention-function signature (sdpa_attention_forward's): (output (B, q, Hq, D), None).
    Imports at module level, not here: an eager step outside the loop (Transformers' generate: beam search) is
    bound by host time, and two import statements per layer and step cost as much as the rest of this wrapper."""
    if not args and launch_context_pays(query) and kernel_applies(query, key, value, attention_mask, kwargs):
        from ..kernels.decode_attention import decode_attention

        scale = kwargs.get("scaling")
        scale = query.shape[-1] ** -0.5 if scale is None else float(scale)
        return decode_attention(query, key, value, attention_mask, scale), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)


def register() -> None:
    """ATTENTION_NAME in Transformers' attention and mask interfaces (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, sdpa_decode_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def install_decode_attention(model: torch.nn.Module, config, device: torch.device):
    """Switch the model's text attention from "sdpa" to ATTENTION_NAME when ``config.decode_attention`` is
    "triton"; returns the config with ``decode_attention`` as it applies: "sdpa" when the model runs another
    attention implementation (eager, flash: left alone) or the GPU is older than compute capability 8.0 (the
    kernel's bf16 dot products)."""
    from ..compat import attention_implementation, set_attention_implementation

    if config.decode_attention != "triton":
        return config
    text_config = model.config.get_text_config(decoder=True)
    applies = attention_implementation(text_config) in ("sdpa", ATTENTION_NAME)
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        applies = False
    if not applies:
        return dataclasses.replace(config, decode_attention="sdpa")
    register()
    set_attention_implementation(text_config, ATTENTION_NAME)
    if device.type == "cuda":  # the fused combine's counters, outside any CUDA graph (reserve_counters says why)
        from ..kernels.decode_attention import reserve_counters

        reserve_counters(device)
    return config
