"""The one assembly path of a tensor-parallel model, used by from_pretrained, the handle's pre-flight, the
workers, the bench and the GPU tests:

  plan_model(name_or_path, tp_size, ...)   pure: files, config, policy, dtype, meta skeleton, sharding plan;
                                           no process group, so the driver can check a split before spawning
  build_rank_model(planned, tp, config)    one rank: parallel layers, fusion, its slices read onto its device
  load_parallel_model(name_or_path, tp)    both, on every rank of a group, failing together
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from .config import TPConfig
from .generation.spmd import make_tensor_parallel
from .loading import CheckpointIndex, load_shards, loading_info, make_stager, resolve_checkpoint
from .loading.quantization import read_quantization
from .parallel.fp8 import install_fp8_activations, keep_fp8_layers, resolve_fp8_weights
from .agreement import fail_together
from .parallel.comm import TPGroup, min_int
from .parallel.fused import fuse_fp8_shared_inputs, fuse_shared_inputs
from .parallel.decode_attention import install_decode_attention
from .parallel.decode_gemm import install_decode_gemm, resolve_decode_gemm
from .kernels.pdl import resolve_pdl
from .parallel.moe_decode import install_moe_decode
from .parallel.moe_routing import install_moe_routing
from .parallelize import build_skeleton, parallelize
from .policies import Policy, get_policy
from .policies.plan import ShardingPlan, build_plan

# Arguments for locating files; everything else Transformers accepts goes to the config, as in Transformers.
_HUB_KWARGS = ("revision", "cache_dir", "local_files_only", "token", "force_download", "subfolder")
_MODEL_KWARGS = ("attn_implementation",)
# Loading options hf_tp carries out itself (see LoadOptions).
_LOAD_KWARGS = ("variant", "generation_config", "output_loading_info", "use_safetensors")
# Accepted and ignored, as Transformers 5's from_pretrained ignores them.
_IGNORED_KWARGS = ("low_cpu_mem_usage", "_fast_init", "mirror", "offload_state_dict", "from_tf", "from_flax")


def resolve_dtype(dtype, config, index: CheckpointIndex | None = None) -> torch.dtype:
    """None or "auto" -> the config's dtype, else the checkpoint's (the dtype of its first floating
    tensor), else fp32: Transformers 5's default. Strings name a torch dtype."""
    if dtype is None or dtype == "auto":
        dtype = (getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
                 or (index.float_dtype() if index is not None else None) or torch.float32)
    if isinstance(dtype, str):
        named = getattr(torch, dtype, None)
        if not isinstance(named, torch.dtype):
            raise ValueError(f"dtype={dtype!r} names no torch dtype: pass torch.bfloat16, torch.float16, "
                             "torch.float32 (or their names), or 'auto' for the checkpoint's.")
        dtype = named
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype: pass torch.bfloat16, torch.float16, torch.float32 "
                         "(or their names), or 'auto' for the checkpoint's.")
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
        from pathlib import Path

        if not (Path(folder) / "config.json").is_file():  # Transformers would say "Unrecognized model"
            from .errors import CheckpointError

            raise CheckpointError(f"{folder} has no config.json, so it is not a Transformers checkpoint folder (one "
                                  "holds config.json and *.safetensors files, as save_pretrained writes them). Pass "
                                  "the folder that holds them, or a hub id.")
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        for key, value in kwargs.items():
            if not hasattr(config, key):
                raise TypeError(f"from_pretrained() got an unexpected keyword argument {key!r}")
            setattr(config, key, value)
    config.name_or_path = str(name_or_path)  # as Transformers: the id or path asked for, not the snapshot folder
    return folder, config, options


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



@dataclass
class PlannedModel:
    """What plan_model decided; ``skeleton`` is the meta-device Transformers model the plan was built from."""

    name_or_path: str
    folder: object
    config: object
    options: LoadOptions
    index: CheckpointIndex
    policy: Policy
    dtype: torch.dtype
    skeleton: torch.nn.Module
    plan: ShardingPlan
    info: dict | None = None  # Transformers' loading info, when output_loading_info was asked for


def plan_model(name_or_path, tp_size: int, dtype=None, hf_kwargs: dict | None = None) -> PlannedModel:
    """Files, config, policy, dtype, meta skeleton and sharding plan for ``tp_size`` ranks. Pure (no process
    group, no weights read): raises what a rank would raise, before any rank starts."""
    folder, config, options = resolve_config(name_or_path, dict(hf_kwargs or {}))
    # The checkpoint's own quantization_config: FP8 formats are read with their scales, any other is refused here,
    # before a worker starts (never read as if unquantized).
    quantization = read_quantization(config)
    index = CheckpointIndex(folder, options.variant, quantization)  # also refuses missing shards
    policy = get_policy(config)
    torch_dtype = resolve_dtype(dtype, config, index)
    config.dtype = torch_dtype  # as Transformers records the dtype it loaded in
    skeleton = build_skeleton(config, torch_dtype, **options.model_kwargs)
    info = loading_info(skeleton, index) if options.output_loading_info else None
    plan = build_plan(skeleton, config, policy, tp_size, model_name=str(name_or_path))
    return PlannedModel(str(name_or_path), folder, config, options, index, policy, torch_dtype, skeleton, plan, info)


def build_rank_model(planned: PlannedModel, tp: TPGroup, config: TPConfig, progress: bool = True, stager=None):
    """This rank's model from ``planned`` (whose skeleton it takes over): parallel layers, fused groups, its
    slices of the checkpoint on ``tp.device``. No collective runs here; ``config`` must be resolved."""
    model = planned.skeleton
    start = time.perf_counter()
    config = resolve_fp8_weights(config, tp.device, planned.index.quantization, planned.dtype)
    config = resolve_decode_gemm(config, tp.device)
    transposed = parallelize(model, planned.plan, tp, policy=planned.policy, config=config)
    kept = 0
    if (config.fp8_weights == "keep" and planned.index.quantization is not None) or config.weights == "fp8":
        # Before fusion: the layers that keep FP8 are grouped after loading (fuse_fp8_shared_inputs).
        kept = keep_fp8_layers(model, planned.plan, planned.index, tp.tp_rank, transposed,
                               quantize=config.weights == "fp8")
    fuse_shared_inputs(model, dict(planned.policy.same_input), tp.device, enabled=config.fuse)
    build_s = time.perf_counter() - start
    stats = load_shards(model, planned.plan, planned.index, tp.tp_rank, tp.device, transposed,
                        progress=progress and tp.is_first, stager=stager, threads=config.load_threads)
    read_done = time.perf_counter()
    fp8_groups = fuse_fp8_shared_inputs(model, dict(planned.policy.same_input), enabled=config.fuse) if kept else 0
    if fp8_groups and tp.device.type == "cuda":
        torch.cuda.empty_cache()  # the members' separate weights, freed group by group, are not left reserved
    moe_kernel_modules = install_moe_decode(model, config.moe_decode)  # after loading: the experts' real dtypes, strides
    config = resolve_pdl(config, tp.device, moe_kernel_modules, tp.tp_size, fp8_layers=kept)
    config = install_decode_attention(model, config, tp.device)  # "sdpa" where the kernel does not apply
    model.hf_tp_moe_routing = install_moe_routing(model, config.moe_decode)  # which routers got the kernel
    install_decode_gemm(model, config.decode_gemm)  # likewise, the linear layers'
    config = install_fp8_activations(model, config, tp.device)  # False where no layer kept FP8 takes it
    if tp.device.type == "cuda" and (config.decode_gemm == "triton" or kept):
        # the decode GEMMs' counters for a split of K summed in the GEMM (gemv_triton.FOLD_SPLIT), reserved here,
        # outside any CUDA graph (reserve_counters says why); 256 KB
        from .kernels.gemv_triton import reserve_counters, use_device_table

        reserve_counters(tp.device)
        use_device_table(tp.device)  # this GPU model's measured configs (gemv_table.DEVICE_TABLES), before tracing
    kernels_done = time.perf_counter()
    model.generation_config = load_generation_config(planned.folder, model.generation_config, planned.options)
    if planned.index.quantization is not None and not kept and hasattr(model.config, "quantization_config"):
        # Dequantized at load: the model is no longer quantized, and save_pretrained must not say it is (as
        # Transformers removes it when it dequantizes an FP8 checkpoint).
        del model.config.quantization_config
    model.eval()
    # after the read: FP8 grouping and the decode kernels' installation (kernels_s), then the rest (finish_s)
    stats.phases.update(build_s=round(build_s, 4), read_s=round(stats.seconds, 4),
                        kernels_s=round(kernels_done - read_done, 4),
                        finish_s=round(time.perf_counter() - kernels_done, 4))
    model.hf_tp_plan, model.hf_tp_load_stats, model.hf_tp_transposed = planned.plan, stats, transposed
    return make_tensor_parallel(model, tp, config)


def load_parallel_model(name_or_path, tp: TPGroup, dtype=None, progress: bool = True, tp_config: TPConfig | None = None,
                        **hf_kwargs):
    """Every rank: plan and build its model. Errors on any rank are raised on all ranks (fail_together), so
    no rank is left waiting in a collective. ``tp_config``: resolved for this device here when it is not."""
    config = resolve_tp_config(tp_config, tp.device.type, tp.tp_size)
    stager = make_stager(tp.device, config.pinned_load, config.load_chunk_mb, config.load_buffers)
    try:
        start = time.perf_counter()
        with fail_together(tp, "planning the model"):  # pins its staging buffers meanwhile
            planned = plan_model(name_or_path, tp.tp_size, dtype, hf_kwargs)
        plan_s = time.perf_counter() - start  # includes the agreement's all-gather: the ranks' slowest plan
        with fail_together(tp, "loading the weights"):
            # FP8 kept or dequantized: decided here, the same on every rank (build_rank_model runs no collective).
            config = resolve_fp8_weights(config, tp.device, planned.index.quantization, planned.dtype,
                                         agree=lambda keep: min_int(keep, tp))
            model = build_rank_model(planned, tp, config, progress=progress, stager=stager)
        model.hf_tp_load_stats.phases.update(plan_s=round(plan_s, 4), total_s=round(time.perf_counter() - start, 4))
    except BaseException:
        if stager is not None:  # load_shards finishes it itself; an earlier failure must too
            stager.finish(quiet=True)
        raise
    return (model, planned.info) if planned.options.output_loading_info else model


def resolve_tp_config(tp_config, device_type: str, tp_size: int) -> TPConfig:
    """A resolved TPConfig: ``tp_config`` (or the defaults) with environment overrides and device defaults.
    Resolving a resolved config gives it back unchanged (the workers inherit the driver's environment)."""
    if tp_config is None:
        tp_config = TPConfig()
    if not isinstance(tp_config, TPConfig):
        raise TypeError(f"tp_config must be an hf_tp.TPConfig, got {type(tp_config).__name__}.")
    return tp_config.resolve(device_type, tp_size)
