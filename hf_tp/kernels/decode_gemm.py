"""The dense layers' decode GEMM (TPConfig.decode_gemm="triton"): x @ W^T for at most DECODE_MAX_M rows of x,
by hf_tp's skinny-M Triton kernels (hf_tp/kernels/gemv_triton.py), as one torch custom op.

Why: at decode a GEMM reads its weight once per token. cuBLAS reads the narrow shards of a tp rank (and the
q/k/v, o and down projections at any width) below the bandwidth the large ones reach, and adds split-K reduce
kernels (issue 18; benchmarks/RESULTS.md). The kernels here take a config per shape measured on an H200.

``decode_linear_reference`` is what the op computes, in plain torch (cuBLAS on CUDA): the tests' yardstick and
the fallback where the kernel cannot run. The op is opaque to torch.compile (Inductor keeps it as one call in
the compiled decode step) and its launches are captured by the step's CUDA graph.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import torch.nn.functional as F

# Rows of x (tokens in the call) up to which the layers use the kernel: decode steps of up to 16 sequences.
# Larger calls (prefill) keep cuBLAS, which is compute-efficient there.
DECODE_MAX_M = 16

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def decode_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            fp32_out: bool) -> torch.Tensor:
    """x @ weight^T (+ bias), fp32 accumulate; ``fp32_out``: the fp32 sum unrounded (+ bias in fp32), else
    rounded to x's dtype (F.linear)."""
    if not fp32_out:
        return F.linear(x, weight, bias)
    if x.is_cuda:  # cuBLAS writes the fp32 accumulator directly (torch >= 2.8)
        y = torch.mm(x.reshape(-1, x.shape[-1]), weight.t(), out_dtype=torch.float32)
        y = y.view(*x.shape[:-1], weight.shape[0])
    else:
        y = F.linear(x.float(), weight.float())
    return y if bias is None else y + bias.float()


@functools.cache
def _cuda_ok(index: int) -> bool:
    if torch.cuda.get_device_capability(index) < (8, 0):  # Triton's bf16 and tl.dot need Ampere or later
        return False
    try:
        from hf_tp.kernels import gemv_triton  # noqa: F401
    except Exception:  # Triton missing or broken: cuBLAS stays
        return False
    return True


def decode_kernel_available(device) -> bool:
    """Whether the kernel runs on ``device``: CUDA with compute capability 8.0+ and Triton, or the CPU under
    Triton's interpreter (TRITON_INTERPRET=1, for tests). Decided once per device."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        return _cuda_ok(device.index if device.index is not None else torch.cuda.current_device())
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "") == "1":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return False


_LOOP_DEPTH = 0  # > 0 while hf_tp's decode loop runs a request (decode_loop_calls)


@contextlib.contextmanager
def decode_loop_calls():
    """Marks the calls hf_tp's decode loop makes (its prefill and steps, eager or captured)."""
    global _LOOP_DEPTH
    _LOOP_DEPTH += 1
    try:
        yield
    finally:
        _LOOP_DEPTH -= 1


def launch_context_pays(x: torch.Tensor) -> bool:
    """Whether a decode-sized call on ``x`` runs hf_tp's Triton kernels (the dense GEMMs, decode attention): in
    hf_tp's decode loop (eager or captured: the same kernels with or without graphs), wherever torch.compile
    traces it or a CUDA graph records it, and off CUDA (Triton's interpreter, for tests). Called eagerly on CUDA
    outside the loop (Transformers' generate on the parallel model: beam search and the other fallbacks), each
    launch through a custom op and Triton's launcher costs more host time than cuBLAS's or SDPA's, and such a
    step is bound by host time, not by the weights' bandwidth: num_beams=4 on a 1B model went from 33.2 to 64.3
    tok/s on an H200 (benchmarks/RESULTS.md, 2026-12-04). Python state only: a compiled graph holds the choice
    made when it was traced. The MoE experts' and FP8 layers' kernels are not gated (they have no cuBLAS form of
    the same cost)."""
    return (not x.is_cuda or torch.compiler.is_compiling() or _LOOP_DEPTH > 0
            or torch.cuda.is_current_stream_capturing())


def supports(weight: torch.Tensor) -> bool:
    """Whether a layer's weight can go through the kernel: a float dtype it reads, unit stride along K."""
    return weight.dim() == 2 and weight.dtype in DTYPES and weight.stride(1) == 1 and decode_kernel_available(
        weight.device)


@torch.library.custom_op("hf_tp::decode_linear", mutates_args=())
def _decode_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      fp32_out: bool) -> torch.Tensor:
    from hf_tp.kernels import gemv_triton

    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] == 0:
        return x.new_empty(*x.shape[:-1], weight.shape[0], dtype=torch.float32 if fp32_out else x.dtype)
    out = gemv_triton.launch(x2.contiguous(), weight, None, 0, 0, None if bias is None else bias.contiguous(),
                             out_dtype=torch.float32 if fp32_out else x.dtype)
    return out.view(*x.shape[:-1], weight.shape[0])


@_decode_linear_op.register_fake
def _(x, weight, bias, fp32_out):
    return x.new_empty(*x.shape[:-1], weight.shape[0], dtype=torch.float32 if fp32_out else x.dtype)


def glu_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of [gate | up] along the last dim, in its dtype, rounded as eager torch rounds it (silu's
    result, then the product): the activation of Llama-style MLPs between the fused gate/up GEMM and down_proj."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@torch.library.custom_op("hf_tp::decode_linear_glu", mutates_args=())
def _decode_linear_glu_op(gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          fp32_out: bool) -> torch.Tensor:
    from hf_tp.kernels import gemv_triton

    x2 = gate_up.reshape(-1, gate_up.shape[-1])
    if x2.shape[0] == 0:
        return gate_up.new_empty(*gate_up.shape[:-1], weight.shape[0],
                                 dtype=torch.float32 if fp32_out else gate_up.dtype)
    out = gemv_triton.launch(x2.contiguous(), weight, None, 0, 0, None if bias is None else bias.contiguous(),
                             out_dtype=torch.float32 if fp32_out else gate_up.dtype, glu=True)
    return out.view(*gate_up.shape[:-1], weight.shape[0])


@_decode_linear_glu_op.register_fake
def _(gate_up, weight, bias, fp32_out):
    return gate_up.new_empty(*gate_up.shape[:-1], weight.shape[0], dtype=torch.float32 if fp32_out else gate_up.dtype)


def decode_linear_glu(gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      fp32_out: bool = False) -> torch.Tensor:
    """``decode_linear(glu_reference(gate_up), weight, bias, fp32_out)`` in one kernel: the GEMM makes
    silu(gate) * up while it loads x, so no kernel before it writes the activation (TPConfig.gemm_prologues;
    the step's compiled graph is rewritten to it by hf_tp.kernels.prologue_pass)."""
    return _decode_linear_glu_op(gate_up, weight, bias, bool(fp32_out))


@torch.library.custom_op("hf_tp::decode_linear_glu_out", mutates_args=())
def _decode_linear_glu_out_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              fp32_out: bool) -> torch.Tensor:
    from hf_tp.kernels import gemv_triton

    x2 = x.reshape(-1, x.shape[-1])
    dtype = torch.float32 if fp32_out else x.dtype
    if x2.shape[0] == 0:
        return x.new_empty(*x.shape[:-1], weight.shape[0] // 2, dtype=dtype)
    out = gemv_triton.launch(x2.contiguous(), weight, None, 0, 0, None if bias is None else bias.contiguous(),
                             out_dtype=dtype, glu_out=True)
    return out.view(*x.shape[:-1], weight.shape[0] // 2)


@_decode_linear_glu_out_op.register_fake
def _(x, weight, bias, fp32_out):
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2, dtype=torch.float32 if fp32_out else x.dtype)


def decode_linear_glu_out(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                          fp32_out: bool = False) -> torch.Tensor:
    """``glu_reference(decode_linear(x, weight, bias, fp32_out))`` in one kernel, for a [gate | up] ``weight``
    (2I, K): the GEMM makes silu(gate) * up in its epilogue, so no kernel after it reads [gate | up] back
    (TPConfig.gemm_epilogues; the step's compiled graph is rewritten to it by hf_tp.kernels.prologue_pass)."""
    return _decode_linear_glu_out_op(x, weight, bias, bool(fp32_out))


def norm_reference(h: torch.Tensor, norm_weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as Llama-style models compute it (Transformers' LlamaRMSNorm, Qwen2/3, Mistral, ...): h in fp32
    times 1 / sqrt(mean(h^2) + eps), rounded to h's dtype, times the weight in that dtype."""
    h32 = h.float()
    return norm_weight * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)


def decode_linear_norm_reference(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor,
                                 eps: float, weight: torch.Tensor, bias: torch.Tensor | None, fp32_out: bool,
                                 glu_out: bool, keep_x: bool = False
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What ``decode_linear_norm`` computes, unfused: h = x (+ residual), the GEMM of RMSNorm(h) (then
    silu(gate) * up with ``glu_out``), h (empty without a residual) and, with ``keep_x``, RMSNorm(h) (else
    empty)."""
    h = x if residual is None else x + residual
    normed = norm_reference(h, norm_weight, eps)
    y = decode_linear_reference(normed, weight, bias, fp32_out)
    return ((glu_reference(y) if glu_out else y), (h if residual is not None else x.new_empty(0)),
            (normed if keep_x else x.new_empty(0)))


@torch.library.custom_op("hf_tp::decode_linear_norm", mutates_args=())
def _decode_linear_norm_op(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                           weight: torch.Tensor, bias: torch.Tensor | None, fp32_out: bool, glu_out: bool,
                           keep_x: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from hf_tp.kernels import gemv_triton

    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"hf_tp::decode_linear_norm: the residual's shape {tuple(residual.shape)} must be x's "
                         f"{tuple(x.shape)} (no broadcasting)")
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    n = weight.shape[0] // 2 if glu_out else weight.shape[0]
    dtype = torch.float32 if fp32_out else x.dtype
    h = torch.empty_like(x2) if residual is not None else x.new_empty(0)
    normed = torch.empty_like(x2) if keep_x else x.new_empty(0)
    if x2.shape[0] > 0:
        out = gemv_triton.launch(x2, weight, None, 0, 0, None if bias is None else bias.contiguous(),
                                 out_dtype=dtype, glu_out=glu_out, norm_weight=norm_weight.contiguous(), eps=eps,
                                 residual=None if residual is None else residual.reshape(x2.shape).contiguous(),
                                 h_out=h if residual is not None else None, x_out=normed if keep_x else None)
    else:
        out = x2.new_empty(0, n, dtype=dtype)
    return (out.view(*x.shape[:-1], n), h.view(x.shape) if residual is not None else h,
            normed.view(x.shape) if keep_x else normed)


@_decode_linear_norm_op.register_fake
def _(x, residual, norm_weight, eps, weight, bias, fp32_out, glu_out, keep_x):
    n = weight.shape[0] // 2 if glu_out else weight.shape[0]
    y = x.new_empty(*x.shape[:-1], n, dtype=torch.float32 if fp32_out else x.dtype)
    like_x = lambda wanted: torch.empty_like(x, memory_format=torch.contiguous_format) if wanted else x.new_empty(0)
    return y, like_x(residual is not None), like_x(keep_x)


def decode_linear_norm(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                       weight: torch.Tensor, bias: torch.Tensor | None = None, fp32_out: bool = False,
                       glu_out: bool = False, keep_x: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``decode_linear_norm_reference`` in one kernel (TPConfig.gemm_norms; the step's compiled graph is rewritten
    to it by hf_tp.kernels.prologue_pass): every program of the GEMM computes the RMSNorm statistic of its rows
    of h = x (+ residual) itself, from L2, and normalizes x as it loads it, so no norm kernel runs between the
    GEMM and the one before it; with a residual, one program per row block also writes h (the next residual),
    and with ``keep_x`` the first row block writes the normalized x (for its other readers: an MoE block's
    experts beside its router, projections not fused into one GEMM). Returns (the product, h, the normalized x);
    h and the normalized x are empty where not asked for."""
    return _decode_linear_norm_op(x, residual, norm_weight, float(eps), weight, bias, bool(fp32_out),
                                  bool(glu_out), bool(keep_x))


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  fp32_out: bool = False) -> torch.Tensor:
    """``decode_linear_reference`` by the Triton kernel: for x of at most DECODE_MAX_M rows and a weight that
    ``supports`` accepts (the layers check both; this does not). fp32 accumulate in any case; the bias is added
    to the fp32 sum before the one rounding (F.linear on CUDA rounds the same way)."""
    return _decode_linear_op(x, weight, bias, bool(fp32_out))
