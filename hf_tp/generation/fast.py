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
import os

logger = logging.getLogger("hf_tp")

# generate() arguments that bring their own cache or decoding loop: the static path does not apply.
_UNSUPPORTED = ("assistant_model", "prompt_lookup_num_tokens", "past_key_values", "cache", "cache_implementation")
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def fast_path_enabled(tp_size: int, device_type: str = "cuda") -> bool:
    """HF_TP_FAST_DECODE=1 forces the fast path on (also on CPU, where the loop runs without graphs:
    that is how the tests check it), =0 off. Unset: on for CUDA with a TP group of one.

    tp_size > 1 stays opt-in until the 2-GPU measurement in benchmarks/RESULTS.md shows the captured
    step correct and faster there: Transformers' own compiled path did not finish at tp 2 on
    2 x H200 (2026-11-24).
    """
    setting = os.environ.get("HF_TP_FAST_DECODE")
    if setting in ("0", "1"):
        return setting == "1"
    return device_type == "cuda" and tp_size == 1


def plan_fast_decode(model, args: tuple, kwargs: dict, device_type: str, tp_size: int):
    """A DecodeRequest for hf_tp's own loop, or None (reason logged once) to use generate()."""
    if not fast_path_enabled(tp_size, device_type):
        return None
    from .decode_loop import plan_request

    request, reason = plan_request(model, args, kwargs)
    if request is None:
        _warn_once(f"loop:{reason}", "hf_tp: generate(%s) is not handled by hf_tp's decode loop; using "
                   "Transformers' generate on the parallel model.", reason)
    return request


def with_fast_path(device_type: str, kwargs: dict, tp_size: int = 1) -> dict:
    """``kwargs`` for Transformers' generate, switched to its static-cache compiled path when it applies."""
    if device_type != "cuda" or not fast_path_enabled(tp_size, device_type):
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
