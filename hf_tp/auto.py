"""``from_pretrained``: decide the mode (plain Transformers, SPMD under a launcher, or the
single-controller orchestrator); the loading pipeline itself is assembly.py."""

from __future__ import annotations

import logging
import os
import warnings

# Re-exported: older scripts and tests import the pipeline from here.
from .assembly import load_parallel_model, resolve_config, resolve_tp_config  # noqa: F401 (re-exported)
from .launch import init_spmd_group, launcher_world_size, resolve_device  # noqa: F401
from .config import HANDLE_OPTIONS
from .policies.plan import validate_tp_size

logger = logging.getLogger("hf_tp")

# Arguments that place or quantize weights in ways that conflict with hf_tp's own split.
# from_pretrained arguments that cannot go with tp_size, each with why (the error names only the groups given)
_CONFLICTING = {
    **dict.fromkeys(("device_map", "tp_plan", "tp_size_hf", "max_memory"),
                    "hf_tp places every weight itself (device= picks the devices, tp_size their number)"),
    **dict.fromkeys(("quantization_config", "load_in_8bit", "load_in_4bit"),
                    "hf_tp reads a checkpoint's own quantization (FP8, docs/fp8.md) but does not quantize one (for "
                    "FP8 at load: tp_config=hf_tp.TPConfig(weights='fp8'))"),
    "gguf_file": "hf_tp reads safetensors only (convert the GGUF once with Transformers: from_pretrained(..., "
                 "gguf_file=...) then save_pretrained)",
}

# Set by `accelerate launch` in every process it starts, also when it starts only one (with --cpu, or
# --num_processes 1), where it sets no WORLD_SIZE.
_ACCELERATE_MARKERS = ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_CPU", "ACCELERATE_DYNAMO_BACKEND")
_warned_single_launch = False


def warn_single_process_launch(tp_size: int) -> None:
    """Once per process: a script started by `accelerate launch` as one process gets the single-controller
    mode, not the launcher mode its author probably meant. Say so, and how to get two ranks."""
    global _warned_single_launch
    if _warned_single_launch or not any(key in os.environ for key in _ACCELERATE_MARKERS):
        return
    _warned_single_launch = True
    warnings.warn(
        f"hf_tp: `accelerate launch` started this script as a single process (no WORLD_SIZE; accelerate's --cpu "
        f"always starts one), so hf_tp runs in single-controller mode: it starts and supervises tp_size={tp_size} "
        "worker processes itself and returns an hf_tp.TPModel handle, not the Transformers model. For launcher "
        f"(SPMD) mode, one rank per process, start it with `accelerate launch --multi_gpu --num_processes {tp_size}` "
        f"(on CPU too: hf_tp then uses gloo) or `torchrun --nproc-per-node {tp_size}`.",
        UserWarning, stacklevel=3)


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
        why = "; ".join(dict.fromkeys(_CONFLICTING[k] for k in conflicting))
        raise ValueError(
            f"{', '.join(conflicting)} cannot be combined with tp_size={tp_size}: {why}. Drop "
            f"{'that argument' if len(conflicting) == 1 else 'those arguments'}, or use tp_size=None for plain "
            "Transformers."
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

        Options of the single-controller handle (keywords; an error in the other modes, where no handle
        supervises workers): ``timeout_s`` (default 30: a rank that finishes no decoder layer, decode step
        or call for this long is taken for hung, and the call raises WorkerError), ``startup_timeout_s``
        (default 900: loading, and each compile), ``auto_restart`` (False), ``max_memory_per_gpu`` (bytes),
        ``kv_cache_tokens`` and ``collective_timeout_s`` (default 300: the process group's own timeout).
        """
        torch_dtype = hf_kwargs.pop("torch_dtype", None)  # Transformers' older name, still accepted there
        dtype = dtype if dtype is not None else torch_dtype
        if tp_size is not None:
            validate_tp_size(tp_size)
        handle_options = [k for k in HANDLE_OPTIONS if k in hf_kwargs]
        if handle_options and (tp_size is None or tp_size == 1 or launcher_world_size() is not None):
            mode = "under a launcher" if tp_size not in (None, 1) else f"with tp_size={tp_size}"
            raise ValueError(f"{', '.join(handle_options)} configure the single-controller handle (tp_size > 1 in a "
                             f"plain process), but {mode} there is none. Drop {', '.join(handle_options)}.")
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

        warn_single_process_launch(tp_size)
        return start_tp_model(name_or_path, tp_size=tp_size, dtype=dtype, device=device, tp_config=config, **hf_kwargs)
