"""An Inductor graph pass for the decode loop's compiled step (TPConfig.gemm_prologues): the activation of a
Llama-style MLP, silu(gate) * up of the fused gate/up GEMM's output, is made inside the down projection's GEMM
(``hf_tp::decode_linear_glu``) instead of by a kernel of its own before it.

Why: at decode that kernel is short (about 1.1 µs per layer at the rank of tp 2 of the Llama-3-8B shape) but it
is one more launch, and its gap, in a chain of about ten kernels per layer whose fixed cost is what keeps a rank's
step from its bandwidth floor (issue 18). The down projection's GEMM reads the [gate | up] row itself and applies
the activation to each tile of x it loads (hf_tp/kernels/gemv_triton.py, ``_load_x``).

The pass rewrites only what it recognises exactly, after Inductor's decompositions (post-grad graph)::

    gate_up = hf_tp.decode_linear(x, W_gate_up, ...)        # or any other producer of the (..., 2I) tensor
    gate, up = split_with_sizes(gate_up, [I, I], -1)        # or two slices of the last dim
    act = silu(gate)                                        # aten.silu, or its decomposition in fp32 rounded back
    h = act * up                                            # h used by nothing but the GEMM below
    out = hf_tp.decode_linear(h, W_down, bias, fp32_out)
 -> out = hf_tp.decode_linear_glu(gate_up, W_down, bias, fp32_out)

Anything else (another activation, a scale, an extra user of h) stays as it was. The values are the unfused
step's up to the rounding of silu's exp (the GEMM's own exp against Inductor's), which can move a bf16 value of
the activation by one unit in the last place.
"""

from __future__ import annotations

import operator

import torch

try:  # torch >= 2.6: a pass with a cache key, so Inductor's FX-graph cache tells graphs with and without it apart
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
except ImportError:  # pragma: no cover - older torch: no pass, no fusion
    CustomGraphPass, get_hash_for_files = object, None

aten = torch.ops.aten
prims = torch.ops.prims


def _is(node, target) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target == target


def _last_dim(node, dim) -> bool:
    value = node.meta.get("val")
    return value is not None and dim in (-1, value.dim() - 1)


def _halves(gate, up):
    """The (..., 2I) tensor whose first half is ``gate`` and second half ``up``, or None."""
    if _is(gate, operator.getitem) and _is(up, operator.getitem) and gate.args[0] is up.args[0]:
        split = gate.args[0]
        if (_is(split, aten.split_with_sizes.default) and (gate.args[1], up.args[1]) == (0, 1)
                and len(split.args[1]) == 2 and split.args[1][0] == split.args[1][1]
                and _last_dim(split.args[0], split.args[2] if len(split.args) > 2 else 0)):
            return split.args[0]
        return None
    if _is(gate, aten.slice.Tensor) and _is(up, aten.slice.Tensor) and gate.args[0] is up.args[0]:
        source = gate.args[0]
        value = source.meta.get("val")
        if value is None or not _last_dim(source, gate.args[1]) or not _last_dim(source, up.args[1]):
            return None
        width = value.shape[-1]
        # a slice's start and end as given (None, or an end past the dim such as sys.maxsize for ``[..., I:]``)
        bounds = [(s.args[2] if len(s.args) > 2 and s.args[2] is not None else 0,
                   min(s.args[3], width) if len(s.args) > 3 and s.args[3] is not None else width)
                  for s in (gate, up)]
        if any(len(s.args) > 4 and s.args[4] != 1 for s in (gate, up)):  # a step
            return None
        if width % 2 == 0 and bounds == [(0, width // 2), (width // 2, width)]:
            return source
    return None


def _silu_input(node):
    """x if ``node`` is silu(x) in x's dtype (aten.silu, or Inductor's decomposition: x in fp32 divided by
    1 + exp(-x), rounded back to x's dtype), else None."""
    if _is(node, aten.silu.default):
        return node.args[0]
    rounded = node
    if _is(node, prims.convert_element_type.default):
        node = node.args[0]
    if not _is(node, aten.div.Tensor):
        return None
    x32, denominator = node.args
    if not (_is(denominator, aten.add.Tensor) and denominator.args[1] == 1 and _is(denominator.args[0], aten.exp.default)
            and _is(denominator.args[0].args[0], aten.neg.default) and denominator.args[0].args[0].args[0] is x32):
        return None
    x = x32.args[0] if _is(x32, prims.convert_element_type.default) else x32
    expected = x.meta.get("val")
    produced = rounded.meta.get("val")
    if expected is None or produced is None or expected.dtype != produced.dtype:
        return None
    return x


def fuse_glu_into_decode_linear(graph: torch.fx.Graph) -> int:
    """Rewrite every ``decode_linear(silu(gate) * up)`` of ``graph`` (see the module docstring); returns how many."""
    fused = 0
    for node in list(graph.nodes):
        if not _is(node, torch.ops.hf_tp.decode_linear.default):
            continue
        product = node.args[0]
        if not _is(product, aten.mul.Tensor) or len(product.users) != 1:
            continue
        for act, up in (product.args, product.args[::-1]):
            gate = _silu_input(act) if isinstance(act, torch.fx.Node) and len(act.users) == 1 else None
            source = _halves(gate, up) if gate is not None else None
            if source is not None and source.meta["val"].dtype == product.meta["val"].dtype:
                break
        else:
            continue
        with graph.inserting_before(node):
            replacement = graph.call_function(torch.ops.hf_tp.decode_linear_glu.default, (source, *node.args[1:]))
        # Only the output's fake value: the old node's other metadata describes its own inputs (Inductor's
        # "eager_input_vals" would make it lay [gate | up] out with the strides of the old (..., I) input).
        replacement.meta["val"] = node.meta["val"]
        for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
            if key in node.meta:
                replacement.meta[key] = node.meta[key]
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        fused += 1
    if fused:
        graph.eliminate_dead_code()
    return fused


class GemmPrologues(CustomGraphPass):
    """The pass as Inductor's ``post_grad_custom_post_pass``; the decode loop sets it around its generate calls."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        fuse_glu_into_decode_linear(graph)

    def uuid(self):
        return get_hash_for_files((__file__,)) if get_hash_for_files is not None else None


def inductor_options(enabled: bool) -> dict:
    """The Inductor options that install the pass (none when not ``enabled`` or this torch has no custom passes)."""
    if not enabled or get_hash_for_files is None:
        return {}
    return {"post_grad_custom_post_pass": GemmPrologues()}
