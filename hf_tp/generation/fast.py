"""Which decode path a generate() call takes.

1. hf_tp's own loop (decode_loop.py: static cache, compiled step + selection captured in one CUDA
   graph, no per-token host work) when the request allows;
2. otherwise Transformers' generate on the parallel model, with its static cache and automatic
   compilation (``cache_implementation="static"``) where that applies;
3. otherwise Transformers' default generate.
Every fallback says why once in the log.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("hf_tp")

# generate() arguments that bring their own cache or decoding loop: the static path does not apply.
_UNSUPPORTED = ("assistant_model", "prompt_lookup_num_tokens", "past_key_values", "cache", "cache_implementation")
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args) -> None:
    """Once per process, and only on the first rank: every rank decides the same for the same request, and one
    terminal (the handle's workers, torchrun's ranks) should not show the line once per rank."""
    import torch.distributed as dist

    if key not in _warned:
        _warned.add(key)
        if not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
            logger.warning(message, *args)


def plan_fast_decode(model, args: tuple, kwargs: dict, fast_decode: bool):
    """A DecodeRequest for hf_tp's own loop, or None (reason logged once) to use generate().
    ``fast_decode``: the model's resolved TPConfig.fast_decode (its docstring gives the defaults)."""
    if not fast_decode:
        return None
    from .decode_loop import plan_request

    request, reason = plan_request(model, args, kwargs)
    if request is None:
        _warn_once(f"loop:{reason}", "hf_tp: generate(%s) is not handled by hf_tp's decode loop; using "
                   "Transformers' generate on the parallel model.", reason)
    return request


def with_fast_path(device_type: str, kwargs: dict, fast_decode: bool) -> dict:
    """``kwargs`` for Transformers' generate, switched to its static-cache compiled path when it applies."""
    if device_type != "cuda" or not fast_decode:
        return kwargs
    reasons = [k for k in _UNSUPPORTED if kwargs.get(k) is not None]
    generation_config = kwargs.get("generation_config")
    num_beams = kwargs.get("num_beams") or getattr(generation_config, "num_beams", 1) or 1
    if num_beams > 1:
        reasons.append(f"num_beams={num_beams}")
    if reasons:
        key = ",".join(reasons)
        _warn_once(key, "hf_tp: generate(%s) is not supported by the fast decode path; using Transformers' "
                   "default generate on the parallel model.", key)
        return kwargs
    return {**kwargs, "cache_implementation": "static"}
