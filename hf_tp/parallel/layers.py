"""Parallel layers: forward pass plus the one collective each needs. Inference only.

  ColumnParallelLinear   weight (out_local, in)   output stays split (feeds heads or a RowParallelLinear)
  RowParallelLinear      weight (out, in_local)   partial sums all-reduced, bias added once after
  VocabParallelEmbedding weight (vocab_local, h)  rows outside this rank's range give zeros, then all-reduce
  ParallelLMHead         weight (vocab_local, h)  local logits all-gathered, padding cut off

Weights are created empty at their local shape and filled by the loader. Layers store
weights as nn.Linear does, (out, in); GPT-2's Conv1D (in, out) layout is transposed by
the loader, so one layer class serves both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.decode_gemm import DECODE_MAX_M, decode_linear, launch_context_pays
from .comm import TPGroup, all_gather_last_dim, all_reduce
from .fp8 import fp8_linear


def _linear_fp32_out(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T with the fp32 accumulator returned unrounded."""
    if x.is_cuda:  # cuBLAS writes the fp32 accumulator directly (torch >= 2.8)
        flat = torch.mm(x.reshape(-1, x.shape[-1]), weight.t(), out_dtype=torch.float32)
        return flat.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x.float(), weight.float())  # CPU has no such kernel; same result, slower


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, fp32_out: bool,
                 decode: bool) -> torch.Tensor:
    """x @ weight.T (+ bias): the dense layers' one GEMM. ``decode`` (TPConfig.decode_gemm="triton", set at
    load by parallel.decode_gemm): calls of at most DECODE_MAX_M tokens go to hf_tp's Triton kernel when compiled
    or captured (``launch_context_pays``); the branch is on a static shape, so a compiled step holds one or the
    other. ``fp32_out``: the fp32 accumulator
    returned unrounded, with the bias added in fp32."""
    if decode and x.shape[-1] > 0 and x.numel() // x.shape[-1] <= DECODE_MAX_M and launch_context_pays(x):
        return decode_linear(x, weight, bias, fp32_out)
    if fp32_out:
        y = _linear_fp32_out(x, weight)
        return y if bias is None else y + bias.float()
    return F.linear(x, weight, bias)


def _fp8_attrs(layer: nn.Module) -> None:
    """Set by the loader when the layer keeps its FP8 slice (parallel.fp8): scale buffer and group geometry."""
    layer.register_buffer("fp8_scale", None, persistent=False)
    layer.fp8_group_k, layer.fp8_k_offset = 0, 0


def _empty(shape, dtype, device) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)


class ColumnParallelLinear(nn.Module):
    """y_local = x @ W_local^T + b_local; each rank computes its own slice of the output features."""

    def __init__(self, in_features, out_features_local, bias, tp: TPGroup, dtype=None, device=None):
        super().__init__()
        self.tp = tp
        self.in_features, self.out_features = in_features, out_features_local
        self.weight = _empty((out_features_local, in_features), dtype, device)  # (out, in)
        self.bias = _empty((out_features_local,), dtype, device) if bias else None
        _fp8_attrs(self)

    shared_input = None  # a fused.SharedInputGroup when this layer's GEMM is computed with its siblings'
    shared_index = 0
    decode_gemm = False  # set at load by parallel.decode_gemm (TPConfig.decode_gemm="triton")
    fp8_activations = False  # set at load by parallel.fp8.install_fp8_activations (TPConfig.fp8_activations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared_input is not None:
            return self.shared_input.output(self.shared_index, x)
        if self.fp8_scale is not None:
            return fp8_linear(x, self.weight, self.fp8_scale, self.fp8_group_k, self.fp8_k_offset, self.bias,
                              self.fp8_activations)
        return dense_linear(x, self.weight, self.bias, False, self.decode_gemm)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features_local={self.out_features}, tp={self.tp.tp_rank}/{self.tp.tp_size}"


class RowParallelLinear(nn.Module):
    """y = sum_r(x_r @ W_r^T) + b; the input arrives split, the output is full on every rank."""

    decode_gemm = False  # set at load by parallel.decode_gemm (TPConfig.decode_gemm="triton")
    fp8_activations = False  # set at load by parallel.fp8.install_fp8_activations (TPConfig.fp8_activations)

    def __init__(self, in_features_local, out_features, bias, tp: TPGroup, dtype=None, device=None,
                 reduce_fp32: bool = True):
        super().__init__()
        self.tp = tp
        self.in_features, self.out_features = in_features_local, out_features
        self.weight = _empty((out_features, in_features_local), dtype, device)  # (out, in)
        # The bias is replicated and added after the all-reduce: adding it on every rank
        # before the sum would count it tp_size times.
        self.bias = _empty((out_features,), dtype, device) if bias else None

        # bf16/fp16 partial sums are summed in fp32 and rounded once, as one GPU's GEMM does
        # (fp32 accumulator, one rounding): rounding every rank's part first adds error the
        # unsplit model does not have (measured in benchmarks/RESULTS.md). Costs twice the
        # all-reduce bytes, which at decode sizes is latency, not bandwidth. (TPConfig.reduce_fp32)
        self.reduce_fp32 = tp.tp_size > 1 and reduce_fp32
        _fp8_attrs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8_scale is not None:
            y = fp8_linear(x, self.weight, self.fp8_scale, self.fp8_group_k, self.fp8_k_offset,
                           act_fp8=self.fp8_activations)
            if self.reduce_fp32 and x.dtype in (torch.bfloat16, torch.float16):  # partials summed in fp32
                y = all_reduce(y.float(), self.tp)
                return (y if self.bias is None else y + self.bias).to(x.dtype)
            y = all_reduce(y, self.tp)
            return y if self.bias is None else y + self.bias
        if self.reduce_fp32 and x.dtype in (torch.bfloat16, torch.float16):
            y = all_reduce(dense_linear(x, self.weight, None, True, self.decode_gemm), self.tp)
            y = y if self.bias is None else y + self.bias
            return y.to(x.dtype)
        y = all_reduce(dense_linear(x, self.weight, None, False, self.decode_gemm), self.tp)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features_local={self.in_features}, out_features={self.out_features}, tp={self.tp.tp_rank}/{self.tp.tp_size}"


class VocabParallelEmbedding(nn.Module):
    """Embedding whose rows [vocab_start, vocab_end) live on this rank.

    An id outside the vocabulary would find no owner and silently embed as zeros (nn.Embedding raises
    IndexError), so ids are validated, on every rank together, by hf_tp.agreement: once per model call,
    and by a pre-hook (``guard_embedding``) for calls that bypass the model while ``check_ids`` is on.
    """

    check_ids = True  # turned off by the model adapter while a call it already validated runs

    def __init__(self, num_embeddings, vocab_range, local_rows, embedding_dim, tp: TPGroup,
                 padding_idx=None, embed_scale=None, dtype=None, device=None):
        super().__init__()
        self.tp = tp
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.vocab_start, self.vocab_end = vocab_range
        self.padding_idx = padding_idx
        # Gemma-style scaled embeddings multiply the looked-up rows; kept as the original did.
        self.embed_scale = embed_scale
        self.weight = _empty((local_rows, embedding_dim), dtype, device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.tp_size == 1:
            out = F.embedding(input_ids, self.weight)
        else:
            outside = (input_ids < self.vocab_start) | (input_ids >= self.vocab_end)
            local_ids = (input_ids - self.vocab_start).masked_fill(outside, 0)
            out = F.embedding(local_ids, self.weight).masked_fill(outside.unsqueeze(-1), 0)
            out = all_reduce(out, self.tp)
        if self.embed_scale is not None:
            out = out * self.embed_scale.to(out.dtype) if torch.is_tensor(self.embed_scale) else out * self.embed_scale
        return out

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, rows=[{self.vocab_start}, {self.vocab_end}), "
                f"tp={self.tp.tp_rank}/{self.tp.tp_size}")


class ParallelLMHead(nn.Module):
    """Logits over the whole vocabulary, on every rank: local logits, all-gather, cut the padding.

    Every rank holds ceil(vocab / tp_size) rows (the last ranks zero-padded) so the gather is one
    equally sized collective; the padded columns are dropped before anyone sees them.

    bf16/fp16 models get float32 logits: the GEMM's fp32 accumulator, not rounded to the model's
    dtype. Rounded, two tokens less than one bf16 step apart (0.125 at a logit of 25) tie, argmax
    takes the lower token id, and which way the rounding falls depends on the GEMM's shape: with
    logits_to_keep=1 (generate's prefill) SmolLM2 at tp 2 on an H200 tied "The" (fp32 logit 25.33)
    with "L" (25.24) and answered "L'Étoile, ..." (benchmarks/RESULTS.md, 2026-12-01). Transformers'
    generate casts the logits to float32 anyway; ``fp32_logits=False`` keeps the model's dtype.
    """

    decode_gemm = False  # set at load by parallel.decode_gemm (TPConfig.decode_gemm="triton")

    def __init__(self, in_features, vocab_size, local_rows, bias, tp: TPGroup, dtype=None, device=None,
                 fp32_logits: bool = True):
        super().__init__()
        self.tp = tp
        self.in_features, self.vocab_size = in_features, vocab_size
        self.weight = _empty((local_rows, in_features), dtype, device)  # (vocab_local, hidden)
        self.bias = _empty((local_rows,), dtype, device) if bias else None
        self.fp32_logits = fp32_logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fp32_out = self.fp32_logits and x.dtype in (torch.bfloat16, torch.float16)
        local = dense_linear(x, self.weight, self.bias, fp32_out, self.decode_gemm)
        logits = all_gather_last_dim(local, self.tp)
        return logits[..., : self.vocab_size]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, vocab_size={self.vocab_size}, tp={self.tp.tp_rank}/{self.tp.tp_size}, "
                f"fp32_logits={self.fp32_logits}")
