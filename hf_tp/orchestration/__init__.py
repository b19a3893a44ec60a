"""Single-controller mode: the driver starts, feeds and supervises tp_size worker processes."""

from __future__ import annotations

import torch

from ..config import HANDLE_OPTIONS
from ..errors import ShardingError
from .driver import TPModel
from .surface import architecture_name

__all__ = ["TPModel", "start_tp_model"]

# Orchestrator options accepted by from_pretrained in single-controller mode (listed in config.py, where
# TPConfig refuses them with a message that points here).
ORCHESTRATOR_KWARGS = HANDLE_OPTIONS


def _kept_fp8_names(planned, tp_config, device: torch.device, tp_size: int) -> frozenset:
    """The parameters the workers will keep in FP8 (TPConfig.fp8_weights, decided as the workers decide it): the
    checkpoint's FP8 linear weights, where every rank's GPU runs the FP8 kernel and the model is bf16/fp16. A
    bf16 checkpoint quantized at load (TPConfig.weights="fp8") is sized at its bf16 bytes: an upper bound."""
    from ..loading.keys import find_key
    from ..loading.quantization import is_fp8
    from ..parallel.fp8 import kernel_available

    index = planned.index
    if index.quantization is None or tp_config is None or tp_config.fp8_weights == "dequantize":
        return frozenset()
    if tp_config.fp8_weights == "auto" and not (
            planned.dtype in (torch.bfloat16, torch.float16) and device.type == "cuda"
            and all(kernel_available(torch.device("cuda", r)) for r in range(tp_size))):
        return frozenset()
    names = set()
    for name, param in planned.skeleton.named_parameters():
        key = find_key([name], index) if param.dim() == 2 else None
        if key is not None and is_fp8(index, key):
            names.add(name)
    return frozenset(names)


def _plan_memory(name_or_path, tp_size, dtype, hf_kwargs, kv_cache_tokens: int | None, tp_config=None,
                 device: torch.device | None = None):
    """Validate the split before any process starts (the workers' own plan_model), and size each rank's
    shard + KV-cache budget (``kv_cache_tokens`` tokens; None: one sequence of min(4096, context))."""
    from transformers import GenerationConfig

    from ..assembly import load_generation_config, plan_model
    from ..loading import loading_info
    from ..policies.plan import head_geometry
    from .memory import shard_bytes

    planned = plan_model(name_or_path, tp_size, dtype, hf_kwargs)
    config, plan, torch_dtype = planned.config, planned.plan, planned.dtype
    generation_config = load_generation_config(planned.folder, GenerationConfig.from_model_config(config),
                                               planned.options)
    info = loading_info(planned.skeleton, planned.index)
    text = config.get_text_config()
    if kv_cache_tokens is None:
        kv_cache_tokens = min(4096, getattr(text, "max_position_embeddings", 4096) or 4096)
    per_token = 0
    if plan.attention:
        _, _, head_dim = head_geometry(text, planned.policy)
        heads = next(iter(plan.attention.values()))
        per_token = [2 * text.num_hidden_layers * h.num_kv * head_dim * (torch.finfo(torch_dtype).bits // 8) for h in heads]
    fp8_names = _kept_fp8_names(planned, tp_config, device or torch.device("cpu"), tp_size)
    need = [shard_bytes(planned.skeleton, plan, r, torch_dtype, fp8_names)
            + (per_token[r] * kv_cache_tokens if per_token else 0) for r in range(tp_size)]
    return config, generation_config, need, info, plan


def start_tp_model(name_or_path, tp_size, dtype=None, device=None, tp_config=None, **kwargs) -> TPModel:
    """Check, plan and start the workers; returns the TPModel handle once every rank has loaded.
    ``tp_config``: the resolved TPConfig, sent to every worker (defaults resolved here when None)."""
    options = {k: kwargs.pop(k) for k in ORCHESTRATOR_KWARGS if k in kwargs}
    output_loading_info = kwargs.pop("output_loading_info", False)  # answered here; the workers return the model
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and torch.cuda.device_count() < tp_size:
        raise ValueError(f"tp_size={tp_size} needs {tp_size} GPUs but {torch.cuda.device_count()} are visible; "
                         f"use tp_size<={torch.cuda.device_count()} or device='cpu'.")
    kv_tokens = options.pop("kv_cache_tokens", None)
    if tp_config is None:
        from ..assembly import resolve_tp_config

        tp_config = resolve_tp_config(None, device.type, tp_size)
    config, generation_config, need, info, plan = _plan_memory(name_or_path, tp_size, dtype, kwargs, kv_tokens,
                                                               tp_config, device)
    cap = options.pop("max_memory_per_gpu", None)
    if cap is not None and max(need) > cap:
        rank = need.index(max(need))
        raise ShardingError(
            f"tp rank {rank} needs {need[rank] / 2**30:.2f} GiB (weights shard + KV-cache budget of "
            f"{kv_tokens or 'min(4096, context)'} tokens) but max_memory_per_gpu is {cap / 2**30:.2f} GiB; "
            "raise the cap, use a larger tp_size or a smaller dtype, or lower kv_cache_tokens."
        )
    if device.type == "cpu":
        from .memory import host_available_bytes

        available = host_available_bytes()
        if available and sum(need) > available:
            raise ShardingError(f"the {tp_size} CPU ranks need {sum(need) / 2**30:.2f} GiB together but the host has "
                                f"{available / 2**30:.2f} GiB available; free memory or use a smaller dtype.")
    # Collectives give up after this long (the process group's own timeout), a backstop behind
    # the driver's watchdog, which notices a stuck rank within timeout_s.
    collective_timeout_s = options.pop("collective_timeout_s", 300)
    spec = {"name_or_path": str(name_or_path), "tp_size": tp_size, "dtype": dtype, "device": device.type,
            "tp_config": tp_config,
            "collective_timeout_s": collective_timeout_s,
            "hf_kwargs": kwargs, "need_bytes": need, "max_memory_per_gpu": cap}
    # Named like the model a plain from_pretrained returns: transformers.pipeline logs an error for a
    # model class it does not know, and special-cases a few by name.
    handle_class = type(architecture_name(config), (TPModel,), {"__module__": TPModel.__module__})
    model = handle_class(spec, config, generation_config, plan=plan, **options)
    return (model, info) if output_loading_info else model
