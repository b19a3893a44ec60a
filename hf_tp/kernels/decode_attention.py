"""Decode attention for the compiled decode step: PyTorch's flex_attention, meant to be lowered by Inductor for one
query token to its split-KV decoding kernel (the KV length cut across thread blocks, partial softmaxes combined).
Opt-in (TPConfig.decode_attention="flex"): on one H200 with torch 2.11 it measured slower than the SDPA path it
replaces (178 against 54 us per layer at 4352 KV slots, benchmarks/flex_decode_probe.py).

Why: with a mask, Transformers' SDPA path repeats K and V for grouped-query attention (``repeat_kv``: every
layer copies the whole cache, 4x for Llama-3), and a 4096-token context ran about 10x off its KV-read time
(issue 18). Flex decoding reads each KV head once
(``enable_gqa``) and applies the mask as a score modification read from the small (batch, kv) boolean mask,
with nothing materialised per layer.

Registered with Transformers' ``AttentionInterface`` (and its mask interface, as SDPA's mask) under
``hf_tp_flex_decode``; only the compiled step's one-token queries take flex. Everything else (prefill, eager
steps, where flex would run its unfused reference, and what flex does not cover) goes to Transformers'
own ``sdpa_attention_forward``, unchanged. Chosen once at load: ``TPConfig.decode_attention``.
"""

from __future__ import annotations

import logging

import torch

NAME = "hf_tp_flex_decode"


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def flex_decode(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                scaling: float | None) -> torch.Tensor:
    """softmax(q k^T * scaling, masked) v for query (b, hq, q, d), key/value (b, hkv, kv, d), hq a multiple of
    hkv; ``mask`` boolean, broadcastable to (b, 1, q, kv), True = attend. Returns (b, hq, q, d)."""
    from torch.nn.attention.flex_attention import flex_attention

    score_mod = None
    if mask is not None:
        batch, q_len, kv_len = query.shape[0], query.shape[2], key.shape[2]
        keep = mask[:, 0, :, :kv_len].expand(batch, q_len, kv_len)

        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.where(keep[b, q_idx, kv_idx], score, -float("inf"))

    return flex_attention(query, key, value, score_mod=score_mod, scale=scaling,
                          enable_gqa=query.shape[1] != key.shape[1])


def _flex_applies(query, key, value, attention_mask, dropout, kwargs) -> bool:
    head_dim = query.shape[-1]
    return (torch.compiler.is_compiling()  # eager flex is an unfused reference: slower than SDPA
            and query.shape[2] == 1 and dropout == 0.0
            and kwargs.get("softcap") is None and kwargs.get("position_bias") is None
            and not kwargs.get("output_attentions", False)
            and (attention_mask is None or attention_mask.dtype == torch.bool)
            and key.shape[-1] == value.shape[-1] == head_dim
            and 16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0  # the decoding kernel's head sizes
            and query.shape[1] % key.shape[1] == 0)


def decode_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                             is_causal=None, **kwargs):
    """Transformers' attention-function signature: returns (output (b, q, heads, d), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if module.training or not _flex_applies(query, key, value, attention_mask, dropout, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = flex_decode(query, key, value, attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``NAME`` a Transformers attention implementation, with SDPA's mask (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, decode_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def apply_decode_attention(model, choice: str) -> str:
    """Switch ``model`` to flex decode attention when ``choice`` is "flex" and the model runs Transformers'
    SDPA attention (a user's explicit eager / flash choice is kept). Returns "flex" when the model now uses it,
    else "off" (the model's own attention implementation)."""
    config = model.config
    if choice != "flex" or not flex_available() or getattr(config, "_attn_implementation", None) != "sdpa":
        return "off"
    try:
        register()
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(NAME)
        else:  # pragma: no cover - older Transformers
            config._attn_implementation = NAME
    except Exception as exc:  # noqa: BLE001 - a Transformers without these interfaces: keep its SDPA
        logging.getLogger("hf_tp").warning("hf_tp: flex decode attention unavailable (%s: %s); using SDPA",
                                           type(exc).__name__, exc)
        return "off"
    return "flex" if getattr(model.config, "_attn_implementation", None) == NAME else "off"
