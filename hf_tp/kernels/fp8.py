"""FP8 weights in one canonical per-rank form, whatever the checkpoint's format.

A rank's FP8 linear weight is three things:

  weight   float8_e4m3fn, (N_local, K_local)      the rank's slice, as read from the file
  scale    float32, (N_local, G)                  one scale per output row and K-group
  group_k, k_offset (ints)                        local column k belongs to group (k + k_offset) // group_k

so that W[n, k] = weight[n, k] * scale[n, (k + k_offset) // group_k].

- Transformers/DeepSeek block FP8 (128 x 128 blocks): the block scales' rows are repeated per output row of
  the slice (a row-split slice may start inside a block: row n takes its block's scale), group_k = 128 and
  k_offset = the slice's first column modulo 128 (a column-split slice may start inside a block too).
- compressed-tensors per-channel: scale (N_local, 1), group_k = K_local, k_offset = 0.
- compressed-tensors static per-tensor: the scalar repeated to (N_local, 1), as per-channel.

Expanding block scales per row costs N_local * G * 4 bytes: 1/32 of the FP8 bytes at 128 x 128 blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def group_index(k_local: int, group_k: int, k_offset: int, device=None) -> torch.Tensor:
    """For every local column, the index of its scale group."""
    return (torch.arange(k_local, device=device) + k_offset) // group_k


def dequantize(weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
               dtype: torch.dtype) -> torch.Tensor:
    """The reference: W = weight * scale per group, computed in float32 and rounded once to ``dtype``."""
    groups = group_index(weight.shape[1], group_k, k_offset, device=weight.device)
    return (weight.to(torch.float32) * scale.to(torch.float32)[:, groups]).to(dtype)


def fp8_linear_reference(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int,
                         k_offset: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W^T (+ bias) with W dequantized to x's dtype first: what a kernel must match."""
    return F.linear(x, dequantize(weight, scale, group_k, k_offset, x.dtype), bias)


# ---------------------------------------------------------------------------------------------------------------
# The FP8-weight GEMM: a Triton kernel on CUDA with compute capability 8.9+ (hf_tp/kernels/fp8_triton.py), the
# reference elsewhere. It is a torch custom op, so that Inductor keeps it as one opaque call inside the compiled
# decode step and the CUDA graph captures its launch.

_AVAILABLE: dict[int | torch.device, bool] = {}  # by device index, and by torch.device where it names one
_DOT_MAX_M = 64  # fp8_triton.DOT_MAX_M (tests check they agree), here so that tracing imports no Triton


def fp8_kernel_available(device) -> bool:
    """Whether ``fp8_linear`` runs the Triton kernel on ``device``: CUDA, compute capability >= 8.9 (FP8
    conversions in hardware), Triton importable. Decided once per device; the loader keeps weights FP8 only when
    this holds, and dequantizes them at load otherwise."""
    hit = _AVAILABLE.get(device)  # a CUDA tensor's device (with its index): the eager prefill's per-call check
    if hit is not None:
        return hit
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _AVAILABLE:
        ok = torch.cuda.get_device_capability(index) >= (8, 9)
        if ok:
            try:
                from hf_tp.kernels import fp8_triton  # noqa: F401
            except Exception:  # Triton missing or broken: the reference path still works
                ok = False
        _AVAILABLE[index] = ok
    if device.index is not None:
        _AVAILABLE[device] = _AVAILABLE[index]
    return _AVAILABLE[index]


def _check(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
           bias: torch.Tensor | None) -> None:
    if weight.dim() != 2 or scale.dim() != 2 or scale.shape[0] != weight.shape[0]:
        raise ValueError(f"fp8_linear: weight must be (N, K) and scale (N, G); got {tuple(weight.shape)} and "
                         f"{tuple(scale.shape)}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"fp8_linear: x has {x.shape[-1]} features but the weight has K = {weight.shape[1]}")
    if group_k <= 0 or k_offset < 0:
        raise ValueError(f"fp8_linear: group_k must be > 0 and k_offset >= 0; got {group_k}, {k_offset}")
    need = (weight.shape[1] - 1 + k_offset) // group_k + 1
    if scale.shape[1] < need:
        raise ValueError(f"fp8_linear: scale has {scale.shape[1]} groups per row, the weight needs {need} "
                         f"(K = {weight.shape[1]}, group_k = {group_k}, k_offset = {k_offset})")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"fp8_linear: bias must be ({weight.shape[0]},); got {tuple(bias.shape)}")


def _use_kernel(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int) -> bool:
    return (x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == torch.float8_e4m3fn
            and fp8_kernel_available(x.device) and weight.stride(1) == 1
            # a K-step of tl.dot is at least 16 columns, and must not span more than two scale groups
            and (scale.shape[1] == 1 or group_k >= 16))


# An eager prefill is host-bound (benchmarks/RESULTS.md: on one H100, 128 tokens of the Llama-3-8B shape took 20.6
# ms of host time for 9.9 ms of GPU work in bf16), so each FP8 layer's Python before its launch is the forward's
# time. A weight keeps, under this attribute, the bound launch of each prompt shape its prefill kernel ran at
# (``fp8_triton.bind_prefill``): a repeat call (the next prompt of that length, the same layer) skips the checks,
# the path choice and the launch cache's key. The key holds no tensor, so nothing is kept alive by it.
_PREFILL_LANES = "_hf_tp_prefill_lanes"
MAX_PREFILL_LANES = 64  # prompt shapes kept per weight; past it the weight's lanes start again
PREFILL_LANES = True  # benchmarks flip it (benchmarks/prefill_profile.py --no-lanes) to measure the full path


def _lane_key(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
              bias: torch.Tensor | None, act_fp8: bool) -> tuple:
    """Everything a bound prefill launch depends on besides the tensors' addresses: x's shape, dtype, device,
    layout and 16-byte alignment, the weight's, scale's and bias's storage, the groups and the path's switch."""
    return (x.shape, x.dtype, x.get_device(), x.is_contiguous(), x.data_ptr() % 16 == 0, weight.data_ptr(),
            scale.data_ptr(), None if bias is None else bias.data_ptr(), group_k, k_offset, act_fp8)


def _fp8_linear_impl(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
                     bias: torch.Tensor | None, x16: torch.Tensor | None = None,
                     act_fp8: bool = False) -> torch.Tensor:
    """The op's body: eager calls run it directly (the custom op's dispatch is host time that an eager prefill,
    host-bound, pays on every layer); traced calls go through ``_fp8_linear_op``, which Inductor keeps opaque."""
    if not _use_kernel(x, weight, scale, group_k):
        return fp8_linear_reference(x, weight, scale, group_k, k_offset, bias)
    from hf_tp.kernels import fp8_triton

    x2 = x.reshape(-1, x.shape[-1])
    if x2.numel() == 0:
        return x.new_empty(*x.shape[:-1], weight.shape[0])
    x2, scale32 = x2.contiguous(), scale.float().contiguous()
    bias_c = None if bias is None else bias.contiguous()
    if (PREFILL_LANES and x16 is None and x.is_contiguous() and scale32 is scale and bias_c is bias
            and fp8_triton.choose_path(x2.shape[0], x2.shape[1], scale.shape[1], group_k, k_offset, act_fp8) == "prefill"):
        key = _lane_key(x, weight, scale, group_k, k_offset, bias, act_fp8)  # before the call: x's layout as passed
        out, lane = fp8_triton.bind_prefill(x2, weight, scale, group_k, k_offset, bias,
                                            out_shape=(*x.shape[:-1], weight.shape[0]))
        if lane is not None:
            lanes = getattr(weight, _PREFILL_LANES, None)
            if lanes is None or len(lanes) >= MAX_PREFILL_LANES:
                lanes = {}
                setattr(weight, _PREFILL_LANES, lanes)
            lanes[key] = lane
        return out  # already in x's leading shape
    out = fp8_triton.launch(x2, weight, scale32, group_k, k_offset, bias_c,
                            x16=None if x16 is None else x16.reshape(-1, x.shape[-1]).contiguous(),
                            act_fp8=act_fp8)
    return out.reshape(*x.shape[:-1], weight.shape[0])


_fp8_linear_op = torch.library.custom_op("hf_tp::fp8_linear", mutates_args=())(_fp8_linear_impl)


@_fp8_linear_op.register_fake
def _(x, weight, scale, group_k, k_offset, bias, x16=None, act_fp8=False):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def fp8_linear_norm_reference(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                              weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
                              bias: torch.Tensor | None, keep_x: bool = False
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What ``fp8_linear_norm`` computes, unfused: h = x (+ residual), fp8_linear_reference of RMSNorm(h), h (empty
    without a residual) and, with ``keep_x``, RMSNorm(h) (else empty)."""
    from .decode_gemm import norm_reference

    h = x if residual is None else x + residual
    normed = norm_reference(h, norm_weight, eps)
    return (fp8_linear_reference(normed, weight, scale, group_k, k_offset, bias),
            h if residual is not None else x.new_empty(0), normed if keep_x else x.new_empty(0))


@torch.library.custom_op("hf_tp::fp8_linear_norm", mutates_args=())
def _fp8_linear_norm_op(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                        weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
                        bias: torch.Tensor | None, keep_x: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"hf_tp::fp8_linear_norm: the residual's shape {tuple(residual.shape)} must be x's "
                         f"{tuple(x.shape)} (no broadcasting)")
    x2 = x.reshape(-1, x.shape[-1])
    if not _use_kernel(x, weight, scale, group_k) or x2.shape[0] == 0 or x2.shape[0] > _DOT_MAX_M:
        return fp8_linear_norm_reference(x, residual, norm_weight, eps, weight, scale, group_k, k_offset, bias,
                                         keep_x)
    from hf_tp.kernels import fp8_triton

    x2 = x2.contiguous()
    h = torch.empty_like(x2) if residual is not None else x.new_empty(0)
    normed = torch.empty_like(x2) if keep_x else x.new_empty(0)
    out = fp8_triton.launch(x2, weight, scale.float().contiguous(), group_k, k_offset,
                            None if bias is None else bias.contiguous(),
                            norm=dict(norm_weight=norm_weight.contiguous(), eps=eps,
                                      residual=None if residual is None else residual.reshape(x2.shape).contiguous(),
                                      h_out=h if residual is not None else None, x_out=normed if keep_x else None))
    return (out.reshape(*x.shape[:-1], weight.shape[0]), h.view(x.shape) if residual is not None else h,
            normed.view(x.shape) if keep_x else normed)


@_fp8_linear_norm_op.register_fake
def _(x, residual, norm_weight, eps, weight, scale, group_k, k_offset, bias, keep_x):
    like_x = lambda wanted: torch.empty_like(x, memory_format=torch.contiguous_format) if wanted else x.new_empty(0)
    return x.new_empty(*x.shape[:-1], weight.shape[0]), like_x(residual is not None), like_x(keep_x)


def fp8_linear_norm(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                    weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
                    bias: torch.Tensor | None = None, keep_x: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fp8_linear_norm_reference`` in one kernel where ``fp8_linear`` runs one (TPConfig.gemm_norms; the step's
    compiled graph is rewritten to it by hf_tp.kernels.prologue_pass): as ``decode_gemm.decode_linear_norm``,
    for FP8 weights in the canonical form. Returns (the product, h, the normalized x)."""
    return _fp8_linear_norm_op(x, residual, norm_weight, float(eps), weight, scale, int(group_k), int(k_offset),
                               bias, bool(keep_x))


def fp8_linear_glu_out_reference(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int,
                                 k_offset: int, bias: torch.Tensor | None, f16: bool = False
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``fp8_linear_glu_out`` computes, unfused: silu(gate) * up of ``fp8_linear_reference``'s [gate | up]
    (``glu_reference``: rounded as the unfused step rounds), and with ``f16`` its fp16 copy (else empty)."""
    from .decode_gemm import glu_reference

    act = glu_reference(fp8_linear_reference(x, weight, scale, group_k, k_offset, bias))
    return act, act.to(torch.float16) if f16 else x.new_empty(0)


@torch.library.custom_op("hf_tp::fp8_linear_glu_out", mutates_args=())
def _fp8_linear_glu_out_op(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
                           bias: torch.Tensor | None, x16: torch.Tensor | None, act_fp8: bool,
                           f16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """silu(gate) * up of the FP8 [gate | up] GEMM, made in its epilogue (prologue_pass.FP8_GLU_EPILOGUE rewrites
    the decode step's compiled graph to this op): the arguments are ``fp8_linear``'s (``x16`` its fp16 x, where
    its config multiplies in fp16), ``f16`` asks for the activation's fp16 copy too, the x of an FP8 down
    projection's fp16 form. Returns (the activation, its fp16 copy or an empty tensor). Where the kernel does not
    run (CPU, more than DOT_MAX_M rows) it is ``fp8_linear`` followed by the activation."""
    x2 = x.reshape(-1, x.shape[-1])
    if not _use_kernel(x, weight, scale, group_k) or x2.shape[0] == 0 or x2.shape[0] > _DOT_MAX_M:
        from .decode_gemm import glu_reference

        act = glu_reference(_fp8_linear_impl(x, weight, scale, group_k, k_offset, bias, x16, act_fp8))
        return act, act.to(torch.float16) if f16 else x.new_empty(0)
    from hf_tp.kernels import fp8_triton

    half = weight.shape[0] // 2
    out16 = torch.empty((x2.shape[0], half), device=x.device, dtype=torch.float16) if f16 else None
    act = fp8_triton.launch(x2.contiguous(), weight, scale.float().contiguous(), group_k, k_offset,
                            None if bias is None else bias.contiguous(),
                            x16=None if x16 is None else x16.reshape(x2.shape).contiguous(), glu_out=True,
                            out16=out16)
    return (act.view(*x.shape[:-1], half),
            out16.view(*x.shape[:-1], half) if out16 is not None else x.new_empty(0))


@_fp8_linear_glu_out_op.register_fake
def _(x, weight, scale, group_k, k_offset, bias, x16, act_fp8, f16):
    half = weight.shape[0] // 2
    return (x.new_empty(*x.shape[:-1], half),
            x.new_empty(*x.shape[:-1], half, dtype=torch.float16) if f16 else x.new_empty(0))


def _fp16_copy_wanted(device_index: int, N: int, K: int, G: int, group_k: int, k_offset: int) -> tuple[bool, bool]:
    """Whether a call of one row, and one of 2..DOT_MAX_M rows, runs the fp16 form on this weight. Decided once
    per weight shape while tracing (a constant of the compiled step); it takes no row count, so that a
    dynamic-shape trace has no symbolic argument here."""
    if not fp8_kernel_available(torch.device("cuda", device_index)) or K == 0 or (G != 1 and group_k < 16):
        return False, False
    from hf_tp.kernels import fp8_triton, gemv_triton

    gemv_triton.use_device_table(torch.device("cuda", device_index))  # its entries decide the form too
    return (fp8_triton.takes_fp16(1, N, K, G, group_k, k_offset),
            fp8_triton.takes_fp16(2, N, K, G, group_k, k_offset))


# torch.compiler.assume_constant_result(_fp16_copy_wanted), without its import of torch._dynamo (2 s of `import
# hf_tp` on a CPU host): the decorator only sets this attribute on the function (torch 2.11-2.14;
# tests/test_fp8_kernel.py checks that it still does).
_fp16_copy_wanted._dynamo_marked_constant = True


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, group_k: int, k_offset: int,
               bias: torch.Tensor | None = None, act_fp8: bool = False) -> torch.Tensor:
    """x @ W^T (+ bias) with W in the canonical FP8 form, output in x's dtype.

    On CUDA with compute capability >= 8.9 (``fp8_kernel_available``) and bf16/fp16 x, a Triton kernel reads the
    FP8 weight once (half the bytes of bf16), applies the scales per K-group in fp32 and accumulates in fp32;
    above ``fp8_triton.DOT_MAX_M`` rows (prefill) a kernel reads the FP8 weight once up to
    ``fp8_triton.PREFILL_MAX_M`` rows, and larger calls dequantize it once and call cuBLAS (per-channel weights
    up to ``fp8_triton.PREFILL_TWO_TERM_MAX_M`` rows: x as two FP8 terms, as accurate as bf16); with ``act_fp8``
    (TPConfig.fp8_activations) prefill-size calls quantize x to FP8 per row and weight group and multiply on the
    FP8 tensor cores instead (``fp8_triton.launch_prefill_fp8``). Elsewhere it is ``fp8_linear_reference``.
    Works under torch.compile and CUDA-graph capture (a custom op).

    Where the measured config multiplies bf16 activations in fp16 (FP8 widens to fp16 cheaply; see
    hf_tp/kernels/gemv_triton.py, "X16"), a compiled caller makes the activations' fp16 copy here, so that
    Inductor fuses it into the kernel that produced them (the RMSNorm, silu * mul); eagerly the kernel's
    launcher makes it. Inductor may round that copy from the producer's fp32 value rather than from the bf16 x it
    also stores (it does not round fused intermediates to bf16): the compiled product can then be a little more
    precise than the eager one, never of another range."""
    if not torch.compiler.is_compiling():
        lanes = getattr(weight, _PREFILL_LANES, None) if PREFILL_LANES else None  # a prompt shape run before
        lane = lanes.get(_lane_key(x, weight, scale, group_k, k_offset, bias, act_fp8)) if lanes else None
        if lane is not None:
            return lane(x, weight, scale, bias)  # x as passed, out in x's leading shape: no views
        _check(x, weight, scale, group_k, k_offset, bias)
        return _fp8_linear_impl(x, weight, scale, int(group_k), int(k_offset), bias, None, bool(act_fp8))
    _check(x, weight, scale, group_k, k_offset, bias)
    x16 = None
    # Traced from here on. Under a dynamic-shape trace the decision needs the weight's shape and group_k as
    # constants: a module's parameters and int attributes are (hf_tp's layers); plain tensors and ints captured by
    # a closure are not.
    if x.is_cuda and x.dtype == torch.bfloat16 and weight.dtype == torch.float8_e4m3fn and weight.stride(1) == 1:
        at_one, at_few = _fp16_copy_wanted(x.device.index, weight.shape[0], weight.shape[1], scale.shape[1],
                                           int(group_k), int(k_offset))
        rows = x.numel() // max(1, x.shape[-1])
        if (at_one and rows == 1) or (at_few and 2 <= rows <= _DOT_MAX_M):
            x16 = x.to(torch.float16)
    return _fp8_linear_op(x, weight, scale, int(group_k), int(k_offset), bias, x16, bool(act_fp8))
