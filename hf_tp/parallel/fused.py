"""Sibling column-parallel layers that read the same input, computed as one GEMM.

Llama's attention calls q_proj(x), k_proj(x), v_proj(x) one after the other, and its MLP calls
gate_proj(x) and up_proj(x). At decode each is a matrix-vector product bound by reading its weight;
small ones (k and v at tp 2 are 4 MB each for an 8B model) run below the memory bandwidth, and each
is one more kernel. After loading, the members' weights are moved into one buffer (each member's
weight becomes a view of its rows, so no memory is added), and the first member called computes
the whole product; the others take their columns of it. The model's own code is not changed.

The buffer is allocated before loading and the loader writes each member's slice straight into
its view, so no rank ever holds the separate tensors and the fused copy at once. Layers that keep
their FP8 checkpoint slices (parallel.fp8) are grouped after loading instead, when their scales'
shapes are known: one group's weights are copied at a time (``SharedInputGroup.from_fp8``).

A member reuses the pending product only for the very same input tensor object, and each part is
handed out once, so a member called on another input (or twice) computes its own product.
Plain Python state, so torch.compile traces it into a single matmul (the pending state is back to
empty at the end of every attention / MLP call, leaving nothing for the graph to carry).
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from .fp8 import fp8_linear
from .layers import dense_linear


class SharedInputGroup:
    decode_gemm = False  # set at load by parallel.decode_gemm (TPConfig.decode_gemm="triton")

    scale = None  # FP8 groups (from_fp8): the members' canonical scales, concatenated like their weights
    fp8_activations = False  # set at load by parallel.fp8.install_fp8_activations (TPConfig.fp8_activations)
    group_k = k_offset = 0

    def __init__(self, members: list[nn.Module], device: torch.device):
        """``members``' parameters are still on the meta device (before loading)."""
        weights = [m.weight for m in members]
        self.sizes = [w.shape[0] for w in weights]
        self.weight = torch.empty(sum(self.sizes), weights[0].shape[1], dtype=weights[0].dtype, device=device)
        biases = [m.bias for m in members]
        self.bias = (torch.empty(sum(self.sizes), dtype=biases[0].dtype, device=device)
                     if all(b is not None for b in biases) else None)
        self._bind(members)  # views into the shared buffers; the loader fills them in place
        self.pending = None  # (input, [part or None per member]) of the last product not fully handed out

    @classmethod
    def from_fp8(cls, members: list[nn.Module]) -> "SharedInputGroup":
        """After loading: members that kept their FP8 slices (parallel.fp8), with the same K-group geometry.
        Their weights and scales are concatenated along the output rows (the canonical scale is per row, so a
        member's rows keep their own scales) and become views of the copies; the separate tensors are freed
        as the members let go of them, one group at a time (the transient cost is one group's weights)."""
        group = cls.__new__(cls)
        group.sizes = [m.weight.shape[0] for m in members]
        group.weight = torch.cat([m.weight.detach() for m in members])
        group.scale = torch.cat([m.fp8_scale for m in members])
        group.bias = torch.cat([m.bias.detach() for m in members]) if members[0].bias is not None else None
        group.group_k, group.k_offset = members[0].fp8_group_k, members[0].fp8_k_offset
        group._bind(members)
        group.pending = None
        return group

    def _bind(self, members: list[nn.Module]) -> None:
        """Make each member's weight (bias, FP8 scale) a view of its rows of the shared buffers."""
        start = 0
        for index, (member, size) in enumerate(zip(members, self.sizes)):
            member.weight = nn.Parameter(self.weight[start:start + size], requires_grad=False)
            if self.bias is not None:
                member.bias = nn.Parameter(self.bias[start:start + size], requires_grad=False)
            if self.scale is not None:
                member.fp8_scale = self.scale[start:start + size]
            member.shared_input, member.shared_index = self, index
            start += size
        self.members = members
        self.everyone = (1 << len(members)) - 1  # output's mask once every member has its part

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        # pending: (input, parts, bit mask of the members handed their part). Ints and a tuple, no list rebuilt
        # per call: an eager step outside the loop (Transformers' generate: beam search) is bound by host time,
        # and this runs for every q/k/v and gate/up call.
        pending, bit = self.pending, 1 << index
        if pending is not None and pending[0] is x and not pending[2] & bit:
            parts, handed = pending[1], pending[2] | bit
        else:
            if self.scale is not None:
                product = fp8_linear(x, self.weight, self.scale, self.group_k, self.k_offset, self.bias,
                                     self.fp8_activations)
            else:
                product = dense_linear(x, self.weight, self.bias, False, self.decode_gemm)
            # split_with_sizes: Tensor.split's Python wrapper picks this for a list of sizes anyway
            parts, handed = product.split_with_sizes(self.sizes, -1), bit
        self.pending = None if handed == self.everyone else (x, parts, handed)
        return parts[index]

    def rebind(self) -> bool:
        """After ``model.to(dtype)`` / ``.half()`` (nn.Module._apply gives each member's weight new storage):
        rebuild the shared buffer from the members' converted weights and make them views of it again.
        Returns whether anything changed."""
        def shared(tensors, buffer):
            return all(t.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr() for t in tensors)

        current = [m.weight for m in self.members]
        # FP8 groups keep their weights and scales through a conversion (spmd's _apply) but not their biases
        if (shared(current, self.weight) and (self.bias is None or shared([m.bias for m in self.members], self.bias))
                and (self.scale is None or shared([m.fp8_scale for m in self.members], self.scale))):
            return False
        self.weight = torch.cat([w.detach() for w in current])
        if self.bias is not None:
            self.bias = torch.cat([m.bias.detach() for m in self.members])
        if self.scale is not None:
            self.scale = torch.cat([m.fp8_scale for m in self.members])
        start = 0
        for member, size in zip(self.members, self.sizes):
            member.weight.data = self.weight[start:start + size]
            if self.bias is not None:
                member.bias.data = self.bias[start:start + size]
            if self.scale is not None:
                member.fp8_scale = self.scale[start:start + size]
            start += size
        self.pending = None
        return True


def rebind_shared_inputs(model: nn.Module) -> int:
    """``SharedInputGroup.rebind`` for every group in ``model``; returns how many were rebuilt."""
    groups = {id(m.shared_input): m.shared_input for m in model.modules() if getattr(m, "shared_input", None) is not None}
    return sum(group.rebind() for group in groups.values())


def _same_input_members(model: nn.Module, same_input: dict[str, tuple[str, ...]]):
    """Each policy group's members (hf_tp's ColumnParallelLinear children of a module the glob names), not yet
    in a group."""
    from .layers import ColumnParallelLinear

    for name, module in model.named_modules():
        for glob, children in same_input.items():
            if not fnmatch.fnmatchcase(name, glob):
                continue
            members = [getattr(module, child, None) for child in children]
            if all(isinstance(m, ColumnParallelLinear) and m.shared_input is None for m in members):
                yield members


def fuse_shared_inputs(model: nn.Module, same_input: dict[str, tuple[str, ...]], device: torch.device,
                       enabled: bool = True) -> int:
    """Group the children named by a policy's ``same_input`` (before loading); returns how many groups.
    ``enabled``: TPConfig.fuse (on for CUDA, off on CPU by default; its docstring says why).

    Only hf_tp's ColumnParallelLinear children are grouped (other kinds keep their own forward), and
    only when all of a group's weights (and biases) agree in dtype and presence. Layers that keep FP8 weights
    are grouped after loading instead (``fuse_fp8_shared_inputs``: their scales' shapes are known then)."""
    if not same_input or not enabled:
        return 0
    groups = 0
    for members in _same_input_members(model, same_input):
        if (len({m.weight.dtype for m in members}) == 1 and members[0].weight.dtype != torch.float8_e4m3fn
                and len({m.bias is None for m in members}) == 1):
            SharedInputGroup(members, device)
            groups += 1
    return groups


def fuse_fp8_shared_inputs(model: nn.Module, same_input: dict[str, tuple[str, ...]], enabled: bool = True) -> int:
    """After loading: the same groups for layers that kept their FP8 slices (TPConfig.fp8_weights="keep"), one
    FP8 GEMM per group (``SharedInputGroup.from_fp8``). At decode the members' separate GEMMs are each one more
    launch and read their narrow weights below the bandwidth (k and v at tp 2 are 512 rows); fused, the FP8
    kernel reads one (N, K) weight. Grouped only when the members agree on K, their scales' K-groups (group_k,
    k_offset, groups per row) and the presence of a bias; returns how many groups."""
    if not same_input or not enabled:
        return 0
    groups = 0
    for members in _same_input_members(model, same_input):
        first = members[0]
        if (all(m.fp8_scale is not None and m.weight.dtype == torch.float8_e4m3fn for m in members)
                and len({(m.weight.shape[1], m.fp8_group_k, m.fp8_k_offset, m.fp8_scale.shape[1], m.fp8_scale.dtype,
                          m.bias is None) for m in members}) == 1
                and (first.bias is None or len({m.bias.dtype for m in members}) == 1)):
            SharedInputGroup.from_fp8(members)
            groups += 1
    return groups
