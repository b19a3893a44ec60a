"""``from_pretrained``: decide the mode (plain Transformers, SPMD under a launcher, or the
single-controller orchestrator) and run the loading pipeline config -> policy -> plan -> shards."""

from __future__ import annotations

import atexit
import copy
import logging
import os
import warnings
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import CheckpointError
from .generation.spmd import make_tensor_parallel
from .loading import CheckpointIndex, load_shards, loading_info, make_stager, resolve_checkpoint
from .parallel.comm import TPGroup, fail_together
from .parallel.fused import fuse_shared_inputs
from .parallelize import build_skeleton, parallelize
from .policies import get_policy
from .policies.plan import build_plan, validate_tp_size

logger = logging.getLogger("hf_tp")

# Arguments that place or quantize weights in ways that conflict with hf_tp's own split.
_CONFLICTING = ("device_map", "tp_plan", "tp_size_hf", "quantization_config", "load_in_8bit", "load_in_4bit", "gguf_file", "max_memory")
# Arguments for locating files; everything else Transformers accepts goes to the config, as in Transformers.
_HUB_KWARGS = ("revision", "cache_dir", "local_files_only", "token", "force_download", "subfolder")
_MODEL_KWARGS = ("attn_implementation",)
# Loading options hf_tp carries out itself (see LoadOptions).
_LOAD_KWARGS = ("variant", "generation_config", "output_loading_info", "use_safetensors")
# Accepted and ignored, as Transformers 5's from_pretrained ignores them.
_IGNORED_KWARGS = ("low_cpu_mem_usage", "_fast_init", "mirror", "offload_state_dict", "from_tf", "from_flax")


def launcher_world_size() -> int | None:
    """WORLD_SIZE set by torchrun / accelerate launch, or None in a plain process."""
    value = os.environ.get("WORLD_SIZE")
    return int(value) if value else None


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


def resolve_device(device) -> torch.device:
    """'cuda' / 'cpu' / None (cuda when available) -> the device type this process uses."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {str(device)!r}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but CUDA is not available here; pass device='cpu' to run with gloo.")
    return device


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


def init_spmd_group(tp_size: int, device: torch.device, timeout_s: float | None = None) -> TPGroup:
    """The TP group of a launcher-started process: one rank per process, world == TP group."""
    world = launcher_world_size()
    if world != tp_size:
        raise ValueError(
            f"tp_size={tp_size} but the launcher started WORLD_SIZE={world} processes. hf_tp splits the model over "
            f"all of them: launch with --nproc-per-node {tp_size} (torchrun) or --num_processes {tp_size} "
            f"(accelerate launch), or pass tp_size={world}."
        )
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", tp_size))
        if torch.cuda.device_count() < local_world:
            raise ValueError(
                f"{local_world} ranks on this host need {local_world} GPUs but only {torch.cuda.device_count()} are "
                "visible; lower tp_size or make more GPUs visible (CUDA_VISIBLE_DEVICES)."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        extra = {"device_id": device} if device.type == "cuda" else {}
        if timeout_s:
            extra["timeout"] = timedelta(seconds=timeout_s)
        dist.init_process_group(backend=backend, **extra)
        # We created the group, so we tear it down, at exit, before the interpreter does: left to
        # interpreter teardown, a rank can still touch the rendezvous store after the host that
        # serves it (another node's launcher) is gone, and abort.
        atexit.register(_destroy_group)
    elif backend not in str(dist.get_backend()):
        raise ValueError(
            f"torch.distributed is already initialised with backend {dist.get_backend()!r}, which cannot run "
            f"{device.type} collectives; initialise it with {backend!r} or pass device={'cpu' if backend == 'gloo' else 'cuda'!r}."
        )
    return TPGroup(tp_rank=dist.get_rank(), tp_size=tp_size, device=device)


def _destroy_group() -> None:
    if not dist.is_initialized():
        return
    if dist.get_backend() == "gloo":
        # Leave together: a gloo rank that tore its group down while a peer was still finishing
        # aborted now and then at exit ("terminate called without an active exception", about 1 run
        # in 15 under torchrun on CPU). A rank that died or hangs must not keep the others here:
        # the bounded barrier raises after 10 s and we tear down anyway.
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=10))
        except Exception:  # noqa: BLE001 - a peer is gone; nothing left to agree on
            pass
    dist.destroy_process_group()


def _resolve_dtype(dtype, config, index: CheckpointIndex | None = None) -> torch.dtype:
    """None or "auto" -> the config's dtype, else the checkpoint's (the dtype of its first floating
    tensor), else fp32: Transformers 5's default. Strings name a torch dtype."""
    if dtype is None or dtype == "auto":
        dtype = (getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
                 or (index.float_dtype() if index is not None else None) or torch.float32)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return dtype


@dataclass
class LoadOptions:
    """What from_pretrained's keywords ask of the load, besides the files and the config."""

    model_kwargs: dict = field(default_factory=dict)  # for the model class (attn_implementation)
    variant: str | None = None  # weights named model.<variant>.safetensors
    generation_config: object = None  # replaces the checkpoint's generation_config.json
    output_loading_info: bool = False  # also return Transformers' loading-info dict


def resolve_config(name_or_path, hf_kwargs: dict):
    """(checkpoint folder, config, LoadOptions) from from_pretrained's keyword arguments, as
    Transformers reads them: hub arguments locate files; a ``config=`` object replaces the saved
    config (a copy: the caller's object is never edited) and then no keyword may edit a field; without
    one, every other keyword overrides a config field (unknown ones are a TypeError)."""
    from transformers import AutoConfig, PretrainedConfig

    kwargs = {k: v for k, v in hf_kwargs.items() if k not in _IGNORED_KWARGS}
    hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
    options = LoadOptions(model_kwargs={k: kwargs.pop(k) for k in _MODEL_KWARGS if k in kwargs},
                          **{k: kwargs.pop(k) for k in _LOAD_KWARGS if k in kwargs and k != "use_safetensors"})
    kwargs.pop("use_safetensors", None)  # True is what hf_tp does anyway; False is refused by check_arguments
    trust_remote_code = kwargs.pop("trust_remote_code", False)
    folder = resolve_checkpoint(name_or_path, **hub_kwargs)
    config = kwargs.pop("config", None)
    if isinstance(config, PretrainedConfig):
        if kwargs:
            # Transformers hands these to the model class's __init__, which takes none.
            raise TypeError(
                f"from_pretrained() got an unexpected keyword argument {next(iter(kwargs))!r}: with config= given, "
                "Transformers passes further keywords to the model class, not to the config. Set the field on the "
                "config object instead."
            )
        config = copy.deepcopy(config)
    else:  # Transformers' AutoModel reads the checkpoint's own config when config= is not a config object
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        for key, value in kwargs.items():
            if not hasattr(config, key):
                raise TypeError(f"from_pretrained() got an unexpected keyword argument {key!r}")
            setattr(config, key, value)
    config.name_or_path = str(name_or_path)  # as Transformers: the id or path asked for, not the snapshot folder
    return folder, config, options


def load_parallel_model(name_or_path, tp: TPGroup, dtype=None, progress: bool = True, **hf_kwargs):
    """Every rank: resolve files, build the meta skeleton and plan, read its shards. Errors on any
    rank are raised on all ranks (fail_together), so no rank is left waiting in a collective."""
    stager = make_stager(tp.device)  # pins its staging buffers while the skeleton is built
    try:
        with fail_together(tp, "finding the checkpoint"):
            folder, config, options = resolve_config(name_or_path, hf_kwargs)
            index = CheckpointIndex(folder, options.variant)
        with fail_together(tp, "planning the split"):
            policy = get_policy(config)
            dtype = _resolve_dtype(dtype, config, index)
            config.dtype = dtype  # as Transformers records the dtype it loaded in
            model = build_skeleton(config, dtype, **options.model_kwargs)
            info = loading_info(model, index) if options.output_loading_info else None
            plan = build_plan(model, config, policy, tp.tp_size, model_name=str(name_or_path))
            transposed = parallelize(model, plan, tp, policy=policy)
        with fail_together(tp, "loading the weights"):
            fuse_shared_inputs(model, dict(policy.same_input), tp.device)
            stats = load_shards(model, plan, index, tp.tp_rank, tp.device, transposed, progress=progress and tp.is_first,
                                stager=stager)
    except BaseException:
        if stager is not None:  # load_shards finishes it itself; an earlier failure must too
            stager.finish(quiet=True)
        raise
    model.generation_config = load_generation_config(folder, model.generation_config, options)
    model.eval()
    model.hf_tp_plan, model.hf_tp_load_stats, model.hf_tp_transposed = plan, stats, transposed
    model = make_tensor_parallel(model, tp)
    return (model, info) if options.output_loading_info else model


def load_generation_config(folder, default, options: LoadOptions):
    """A copy of the generation_config= argument, else the checkpoint's generation_config.json, else
    ``default`` (the one derived from the model config), as Transformers picks it."""
    from transformers import GenerationConfig

    if options.generation_config is not None:
        return GenerationConfig.from_dict(options.generation_config.to_dict())
    try:
        return GenerationConfig.from_pretrained(folder)
    except OSError:
        return default


class AutoModelForCausalLM:
    """Drop-in for ``transformers.AutoModelForCausalLM`` with a ``tp_size`` argument."""

    def __init__(self):
        raise EnvironmentError("Use hf_tp.AutoModelForCausalLM.from_pretrained(name_or_path, tp_size=...).")

    @classmethod
    def from_pretrained(cls, name_or_path, *model_args, tp_size=None, dtype=None, device=None, **hf_kwargs):
        """Load a causal LM split over ``tp_size`` devices.

        tp_size None or 1: exactly ``transformers.AutoModelForCausalLM.from_pretrained`` (``device``
        becomes its ``device_map``). Under torchrun / accelerate launch (WORLD_SIZE set): every rank
        calls this and gets the Transformers model object with parallel layers. Otherwise hf_tp
        starts and supervises tp_size worker processes and returns an ``hf_tp.TPModel`` handle.
        """
        torch_dtype = hf_kwargs.pop("torch_dtype", None)  # Transformers' older name, still accepted there
        dtype = dtype if dtype is not None else torch_dtype
        if tp_size is not None:
            validate_tp_size(tp_size)
        if tp_size is None or tp_size == 1:
            import transformers

            if device is not None and "device_map" not in hf_kwargs:
                hf_kwargs["device_map"] = str(device)
            return transformers.AutoModelForCausalLM.from_pretrained(name_or_path, *model_args, dtype=dtype, **hf_kwargs)
        if model_args:
            raise TypeError("hf_tp.AutoModelForCausalLM.from_pretrained takes model arguments as keywords only.")
        check_arguments(tp_size, hf_kwargs)
        device = resolve_device(device)
        if launcher_world_size() is not None:
            tp = init_spmd_group(tp_size, device)
            return load_parallel_model(name_or_path, tp, dtype=dtype, **hf_kwargs)
        from .orchestration import start_tp_model

        warn_single_process_launch(tp_size)
        return start_tp_model(name_or_path, tp_size=tp_size, dtype=dtype, device=device, **hf_kwargs)
