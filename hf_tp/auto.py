"""``from_pretrained``: decide the mode (plain Transformers, SPMD under a launcher, or the
single-controller orchestrator); the loading pipeline itself is assembly.py."""

from __future__ import annotations

import logging

# Re-exported: older scripts and tests import the pipeline from here.
from .assembly import load_parallel_model, resolve_config, resolve_tp_config  # noqa: F401 (re-exported)
from .launch import init_spmd_group, launcher_world_size, resolve_device  # noqa: F401
from .policies.plan import validate_tp_size

logger = logging.getLogger("hf_tp")

# Arguments that place or quantize weights in ways that conflict with hf_tp's own split.
_CONFLICTING = ("device_map", "tp_plan", "tp_size_hf", "quantization_config", "load_in_8bit", "load_in_4bit", "gguf_file", "max_memory")


def check_arguments(tp_size, hf_kwargs: dict) -> None:
    """Checks that need no process group, run identically on every rank before any collective."""
    validate_tp_size(tp_size)
    if hf_kwargs.get("use_safetensors") is False:
        raise ValueError(
            "use_safetensors=False asks for pickle (.bin) weights, but hf_tp reads safetensors only (unpickling can "
            "run arbitrary code and cannot read a slice). Drop use_safetensors=False, or use tp_size=None for plain "
            "Transformers."
        )
    conflicting = sorted(k for k in _CONFLICTING if hf_kwargs.get(k) is not None)
    if conflicting:
        raise ValueError(
            f"{', '.join(conflicting)} cannot be combined with tp_size={tp_size}: hf_tp places every weight itself "
            "and reads unquantized safetensors. Drop those arguments, or use tp_size=None for plain Transformers."
        )


class AutoModelForCausalLM:
    """Drop-in for ``transformers.AutoModelForCausalLM`` with a ``tp_size`` argument."""

    def __init__(self):
        raise EnvironmentError("Use hf_tp.AutoModelForCausalLM.from_pretrained(name_or_path, tp_size=...).")

    @classmethod
    def from_pretrained(cls, name_or_path, *model_args, tp_size=None, dtype=None, device=None, tp_config=None,
                        **hf_kwargs):
        """Load a causal LM split over ``tp_size`` devices.

        tp_size None or 1: exactly ``transformers.AutoModelForCausalLM.from_pretrained`` (``device``
        becomes its ``device_map``). Under torchrun / accelerate launch (WORLD_SIZE set): every rank
        calls this and gets the Transformers model object with parallel layers. Otherwise hf_tp
        starts and supervises tp_size worker processes and returns an ``hf_tp.TPModel`` handle.
        ``tp_config``: an ``hf_tp.TPConfig`` (speed and numerics options), resolved here once.
        """
        torch_dtype = hf_kwargs.pop("torch_dtype", None)  # Transformers' older name, still accepted there
        dtype = dtype if dtype is not None else torch_dtype
        if tp_size is not None:
            validate_tp_size(tp_size)
        if tp_size is None or tp_size == 1:
            import transformers

            if tp_config is not None:
                raise ValueError("tp_config applies to tensor-parallel models; with tp_size=None or 1 the model is "
                                 "plain Transformers. Drop tp_config, or pass tp_size > 1.")

            if device is not None and "device_map" not in hf_kwargs:
                hf_kwargs["device_map"] = str(device)
            return transformers.AutoModelForCausalLM.from_pretrained(name_or_path, *model_args, dtype=dtype, **hf_kwargs)
        if model_args:
            raise TypeError("hf_tp.AutoModelForCausalLM.from_pretrained takes model arguments as keywords only.")
        check_arguments(tp_size, hf_kwargs)
        device = resolve_device(device)
        config = resolve_tp_config(tp_config, device.type, tp_size)
        if launcher_world_size() is not None:
            tp = init_spmd_group(tp_size, device, worker_env=config.worker_env)
            return load_parallel_model(name_or_path, tp, dtype=dtype, tp_config=config, **hf_kwargs)
        from .orchestration import start_tp_model

        return start_tp_model(name_or_path, tp_size=tp_size, dtype=dtype, device=device, tp_config=config, **hf_kwargs)
