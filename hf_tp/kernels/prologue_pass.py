"""Inductor graph passes for the decode loop's compiled step: the activation of a Llama-style MLP, silu(gate) * up
of the fused gate/up GEMM's output, made inside a GEMM instead of by a kernel of its own between the two.

- TPConfig.gemm_epilogues: in the gate/up GEMM's epilogue (``hf_tp::decode_linear_glu_out``,
  ``fuse_glu_into_gate_up`` below): each program computes the gate and the up rows of its outputs.
- TPConfig.gemm_prologues: in the down projection's GEMM, as it loads x (``hf_tp::decode_linear_glu``), the
  rest of this docstring. Measured slower (every program re-reads [gate | up]; benchmarks/RESULTS.md).

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


def _is(node, target, nargs: tuple[int, ...] | None = None) -> bool:
    """``node`` calls ``target`` with positional arguments only (``nargs`` of them, when given): a keyword (an
    add's ``alpha``, a slice's ``step``) would mean another computation than the one matched."""
    return (isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target == target
            and not node.kwargs and (nargs is None or len(node.args) in nargs))


def _last_dim(node, dim) -> bool:
    value = node.meta.get("val")
    return value is not None and isinstance(dim, int) and dim in (-1, value.dim() - 1)


def _halves(gate, up):
    """(the (..., 2I) tensor whose first half is ``gate`` and second half ``up``, the nodes that cut it), or
    None."""
    if _is(gate, operator.getitem, (2,)) and _is(up, operator.getitem, (2,)) and gate.args[0] is up.args[0]:
        split = gate.args[0]
        if (gate.args[1], up.args[1]) != (0, 1):
            return None
        if _is(split, aten.split_with_sizes.default, (2, 3)):  # split([I, I], -1)
            sizes, dim = split.args[1], split.args[2] if len(split.args) > 2 else 0
            halves = len(sizes) == 2 and sizes[0] == sizes[1]
        elif _is(split, aten.split.Tensor, (2, 3)):  # chunk(2, -1), split(I, -1)
            size, dim = split.args[1], split.args[2] if len(split.args) > 2 else 0
            value = split.args[0].meta.get("val") if isinstance(split.args[0], torch.fx.Node) else None
            halves = value is not None and isinstance(size, int) and 2 * size == value.shape[-1]
        else:
            return None
        if halves and _last_dim(split.args[0], dim):
            return split.args[0], [gate, up, split]
        return None
    if _is(gate, aten.slice.Tensor, (1, 2, 3, 4, 5)) and _is(up, aten.slice.Tensor, (1, 2, 3, 4, 5)) \
            and gate.args[0] is up.args[0]:
        source = gate.args[0]
        value = source.meta.get("val")
        dims = [s.args[1] if len(s.args) > 1 else 0 for s in (gate, up)]
        if value is None or not all(_last_dim(source, d) for d in dims):
            return None
        if any(len(s.args) > 4 and s.args[4] != 1 for s in (gate, up)):  # a step
            return None
        width = value.shape[-1]
        # a slice's start and end as given (None, or an end past the dim such as sys.maxsize for ``[..., I:]``)
        bounds = [(s.args[2] if len(s.args) > 2 and s.args[2] is not None else 0,
                   min(s.args[3], width) if len(s.args) > 3 and s.args[3] is not None else width)
                  for s in (gate, up)]
        if width % 2 == 0 and bounds == [(0, width // 2), (width // 2, width)]:
            return source, [gate, up]
    return None


def _silu_input(node):
    """(x, the nodes computing silu from x, users first) if ``node`` is silu(x) in x's dtype (aten.silu, or
    Inductor's decomposition: x in fp32 divided by 1 + exp(-x), rounded back to x's dtype), else None."""
    if _is(node, aten.silu.default, (1,)):
        return node.args[0], [node]
    chain = [node]
    rounded = node
    if _is(node, prims.convert_element_type.default, (2,)):
        node = node.args[0]
        chain.append(node)
    if not _is(node, aten.div.Tensor, (2,)):
        return None
    x32, denominator = node.args
    if not (_is(denominator, aten.add.Tensor, (2,)) and denominator.args[1] == 1):
        return None
    exp = denominator.args[0]
    neg = exp.args[0] if _is(exp, aten.exp.default, (1,)) else None
    if not (_is(neg, aten.neg.default, (1,)) and neg.args[0] is x32):
        return None
    chain += [denominator, exp, neg]
    x = x32
    if _is(x32, prims.convert_element_type.default, (2,)):
        x = x32.args[0]
        chain.append(x32)
    expected = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
    produced = rounded.meta.get("val")
    if expected is None or produced is None or expected.dtype != produced.dtype:
        return None
    return x, chain


def fuse_glu_into_decode_linear(graph: torch.fx.Graph) -> int:
    """Rewrite every ``decode_linear(silu(gate) * up)`` of ``graph`` (see the module docstring); returns how many."""
    fused = 0
    for node in list(graph.nodes):
        if not _is(node, torch.ops.hf_tp.decode_linear.default):
            continue
        product = node.args[0]
        if not _is(product, aten.mul.Tensor, (2,)) or len(product.users) != 1:
            continue
        for act, up in (product.args, product.args[::-1]):
            silu = _silu_input(act) if isinstance(act, torch.fx.Node) and len(act.users) == 1 else None
            halves = _halves(silu[0], up) if silu is not None else None
            if halves is not None and halves[0].meta["val"].dtype == product.meta["val"].dtype:
                break
        else:
            continue
        source = halves[0]
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
        # the nodes the rewrite left unused, users before what they use (no other dead code is touched)
        for dead in [product, *silu[1], *halves[1]]:
            if not dead.users and dead.graph is graph:
                graph.erase_node(dead)
        fused += 1
    return fused


def _only_used_within(nodes, pattern) -> bool:
    return all(user in pattern for node in nodes for user in node.users)


def _splits_k(x, weight) -> bool:
    """Whether the decode GEMM of ``x`` (fake value) by ``weight`` (N, K) would split K (its config's SPLIT):
    then its sums are not whole in one program, and the epilogue form would have to drop the split."""
    from . import gemv_triton

    shape, (n, k) = x.shape, weight.shape
    if not all(isinstance(d, int) for d in (*shape, n, k)):
        return True  # symbolic: no config to look up
    rows = 1
    for d in shape[:-1]:
        rows *= d
    _, cfg = gemv_triton.choose(max(rows, 1), n, k, weight.element_size(), gemv_triton.sm_count(x.device))
    return int(cfg.get("SPLIT", 1)) > 1


def fuse_glu_into_gate_up(graph: torch.fx.Graph) -> int:
    """Rewrite every ``silu(gate) * up`` whose [gate | up] is a ``decode_linear`` that nothing else uses into
    ``hf_tp::decode_linear_glu_out`` (TPConfig.gemm_epilogues: the activation made in the gate/up GEMM's
    epilogue, hf_tp/kernels/gemv_triton.py ``_glu_store``), where that GEMM's config does not split K; returns
    how many. Each program computes both halves of its outputs, so nothing is read twice (unlike the prologue
    form above, where every program of the down projection re-reads [gate | up])."""
    fused = 0
    for node in list(graph.nodes):
        if not _is(node, aten.mul.Tensor, (2,)):
            continue
        for act, up in (node.args, node.args[::-1]):
            silu = _silu_input(act) if isinstance(act, torch.fx.Node) else None
            halves = _halves(silu[0], up) if silu is not None else None
            if halves is not None:
                break
        else:
            continue
        source, cut = halves
        if not _is(source, torch.ops.hf_tp.decode_linear.default, (4,)):
            continue
        if source.meta["val"].dtype != node.meta["val"].dtype:
            continue
        pattern = {node, *silu[1], *cut}
        if not _only_used_within([source, *silu[1], *cut], pattern):
            continue
        x, weight = source.args[0], source.args[1]
        if _splits_k(x.meta["val"], weight.meta["val"]):
            continue
        with graph.inserting_before(node):
            replacement = graph.call_function(torch.ops.hf_tp.decode_linear_glu_out.default, tuple(source.args))
        replacement.meta["val"] = node.meta["val"]  # only the output's fake value (as in the prologue form)
        for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
            if key in node.meta:
                replacement.meta[key] = node.meta[key]
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        for dead in [*silu[1], *cut, source]:  # users before what they use
            if not dead.users and dead.graph is graph:
                graph.erase_node(dead)
        fused += 1
    return fused


class GemmFusions(CustomGraphPass):
    """The rewrites as Inductor's ``post_grad_custom_post_pass`` (the epilogue form first: where it applies, the
    prologue form finds nothing left); the decode loop sets it around its generate calls."""

    def __init__(self, prologues: bool = True, epilogues: bool = False):
        self.prologues, self.epilogues = prologues, epilogues

    def __call__(self, graph: torch.fx.Graph) -> None:
        if self.epilogues:
            fuse_glu_into_gate_up(graph)
        if self.prologues:
            fuse_glu_into_decode_linear(graph)

    def uuid(self):
        if get_hash_for_files is None:
            return None
        return (get_hash_for_files((__file__,)), self.prologues, self.epilogues)


def inductor_options(prologues: bool, epilogues: bool = False) -> dict:
    """The Inductor options that install the rewrites asked for (none when neither is, or this torch has no
    custom passes)."""
    if not (prologues or epilogues) or get_hash_for_files is None:
        return {}
    return {"post_grad_custom_post_pass": GemmFusions(prologues, epilogues)}
