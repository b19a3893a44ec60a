"""The fast decode path: a static KV cache preallocated per rank and the decode step compiled
(Inductor, "reduce-overhead" = CUDA graphs, the all-reduces traced as functional collectives).

It is Transformers' own machinery (``cache_implementation="static"`` triggers generate's automatic
compilation of the decode forward on CUDA); hf_tp's part is choosing it whenever the request
allows and keeping the parallel layers traceable. Other requests keep Transformers' default path,
and say so once in the log.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("hf_tp")

# generate() arguments that bring their own cache or decoding loop: the static path does not apply.
_UNSUPPORTED = ("assistant_model", "prompt_lookup_num_tokens", "past_key_values", "cache", "cache_implementation")
_warned: set[str] = set()


def fast_path_enabled(tp_size: int) -> bool:
    """HF_TP_FAST_DECODE=1 forces the fast path on, =0 off. Unset: on for a TP group of one only.

    At tp_size 2 on 2 x H200 (2026-11-24) the compiled decode did not finish within 160 s (see
    benchmarks/RESULTS.md), so it stays opt-in for tp_size > 1 until that is understood; the CPU test
    (tests/test_fast_path_cpu.py) shows the graph itself is right at tp 2.
    """
    setting = os.environ.get("HF_TP_FAST_DECODE")
    return setting == "1" if setting in ("0", "1") else tp_size == 1


def with_fast_path(device_type: str, kwargs: dict, tp_size: int = 1) -> dict:
    """``kwargs`` for generate, switched to the static-cache compiled path when it applies."""
    if device_type != "cuda" or not fast_path_enabled(tp_size):
        return kwargs
    reasons = [k for k in _UNSUPPORTED if kwargs.get(k) is not None]
    generation_config = kwargs.get("generation_config")
    num_beams = kwargs.get("num_beams") or getattr(generation_config, "num_beams", 1) or 1
    if num_beams > 1:
        reasons.append(f"num_beams={num_beams}")
    if reasons:
        key = ",".join(reasons)
        if key not in _warned:
            _warned.add(key)
            logger.warning("hf_tp: generate(%s) is not supported by the fast decode path; using Transformers' "
                           "default generate on the parallel model.", key)
        return kwargs
    return {**kwargs, "cache_implementation": "static"}
