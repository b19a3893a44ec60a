"""Sibling column-parallel layers that read the same input, computed as one GEMM.

Llama's attention calls q_proj(x), k_proj(x), v_proj(x) one after the other, and its MLP calls
gate_proj(x) and up_proj(x). At decode each is a matrix-vector product bound by reading its weight;
small ones (k and v at tp 2 are 4 MB each for an 8B model) run below the memory bandwidth, and each
is one more kernel. After loading, the members' weights are moved into one buffer (each member's
weight becomes a view of its rows, so no memory is added), and the first member called computes
the whole product; the others take their columns of it. The model's own code is not changed.

The buffer is allocated before loading and the loader writes each member's slice straight into
its view, so no rank ever holds the separate tensors and the fused copy at once.

A member reuses the pending product only for the very same input tensor object, and each part is
handed out once, so a member called on another input (or twice) computes its own product.
Plain Python state, so torch.compile traces it into a single matmul (the pending state is back to
empty at the end of every attention / MLP call, leaving nothing for the graph to carry).
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from .layers import dense_linear


class SharedInputGroup:
    decode_gemm = False  # set at load by parallel.decode_gemm (TPConfig.decode_gemm="triton")

    def __init__(self, members: list[nn.Module], device: torch.device):
        """``members``' parameters are still on the meta device (before loading)."""
        weights = [m.weight for m in members]
        self.sizes = [w.shape[0] for w in weights]
        self.weight = torch.empty(sum(self.sizes), weights[0].shape[1], dtype=weights[0].dtype, device=device)
        biases = [m.bias for m in members]
        self.bias = (torch.empty(sum(self.sizes), dtype=biases[0].dtype, device=device)
                     if all(b is not None for b in biases) else None)
        start = 0
        for index, (member, size) in enumerate(zip(members, self.sizes)):
            # Views into the shared buffer; the loader fills them in place.
            member.weight = nn.Parameter(self.weight[start:start + size], requires_grad=False)
            if self.bias is not None:
                member.bias = nn.Parameter(self.bias[start:start + size], requires_grad=False)
            member.shared_input, member.shared_index = self, index
            start += size
        self.members = members
        self.pending = None  # (input, [part or None per member]) of the last product not fully handed out

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        pending = self.pending
        if pending is None or pending[0] is not x or pending[1][index] is None:
            product = dense_linear(x, self.weight, self.bias, False, self.decode_gemm)
            pending = (x, list(product.split(self.sizes, dim=-1)))
        parts = pending[1]
        result = parts[index]
        parts = [None if i == index else part for i, part in enumerate(parts)]
        self.pending = None if all(part is None for part in parts) else (x, parts)
        return result


    def rebind(self) -> bool:
        """After ``model.to(dtype)`` / ``.half()`` (nn.Module._apply gives each member's weight new storage):
        rebuild the shared buffer from the members' converted weights and make them views of it again.
        Returns whether anything changed."""
        current = [m.weight for m in self.members]
        if all(w.untyped_storage().data_ptr() == self.weight.untyped_storage().data_ptr() for w in current):
            return False
        self.weight = torch.cat([w.detach() for w in current])
        if self.bias is not None:
            self.bias = torch.cat([m.bias.detach() for m in self.members])
        start = 0
        for member, size in zip(self.members, self.sizes):
            member.weight.data = self.weight[start:start + size]
            if self.bias is not None:
                member.bias.data = self.bias[start:start + size]
            start += size
        self.pending = None
        return True


def rebind_shared_inputs(model: nn.Module) -> int:
    """``SharedInputGroup.rebind`` for every group in ``model``; returns how many were rebuilt."""
    groups = {id(m.shared_input): m.shared_input for m in model.modules() if getattr(m, "shared_input", None) is not None}
    return sum(group.rebind() for group in groups.values())


def fuse_shared_inputs(model: nn.Module, same_input: dict[str, tuple[str, ...]], device: torch.device,
                       enabled: bool = True) -> int:
    """Group the children named by a policy's ``same_input`` (before loading); returns how many groups.
    ``enabled``: TPConfig.fuse (on for CUDA, off on CPU by default; its docstring says why).

    Only hf_tp's ColumnParallelLinear children are grouped (other kinds keep their own forward), and
    only when all of a group's weights (and biases) agree in dtype and presence, and are not kept FP8 (their
    scales differ per member; parallel.fp8)."""
    from .layers import ColumnParallelLinear

    if not same_input or not enabled:
        return 0
    groups = 0
    for name, module in model.named_modules():
        for glob, children in same_input.items():
            if not fnmatch.fnmatchcase(name, glob):
                continue
            members = [getattr(module, child, None) for child in children]
            if (all(isinstance(m, ColumnParallelLinear) for m in members)
                    and len({m.weight.dtype for m in members}) == 1
                    and members[0].weight.dtype != torch.float8_e4m3fn and len({m.bias is None for m in members}) == 1):
                SharedInputGroup(members, device)
                groups += 1
    return groups
