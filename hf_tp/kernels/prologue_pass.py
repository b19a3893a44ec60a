"""Inductor graph passes for the decode loop's compiled step: work between two GEMMs made inside one of them
instead of by a kernel of its own. The activation of a Llama-style MLP, silu(gate) * up of the fused gate/up
GEMM's output:

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

And the residual add + RMSNorm before the q/k/v and gate/up GEMMs (TPConfig.gemm_norms,
``fuse_rmsnorm_into_decode_linear``, ``hf_tp::decode_linear_norm``): every program of the GEMM computes its rows'
statistic and normalizes x as it loads it; one writes the residual sum.
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


def _keep_provenance(old: torch.fx.Node, new: torch.fx.Node) -> None:
    """The source location metadata of the node a rewrite replaces, for the new node (profiles and errors name
    the model's line); not its other metadata, which describes the old node's own inputs."""
    for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
        if key in old.meta:
            new.meta[key] = old.meta[key]


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
        _keep_provenance(node, replacement)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        # the nodes the rewrite left unused, users before what they use (no other dead code is touched)
        for dead in [product, *silu[1], *halves[1]]:
            if not dead.users and dead.graph is graph:
                graph.erase_node(dead)
        fused += 1
    return fused


def _rms_norm_input(x):
    """(h, the norm weight, eps, the nodes computing the norm from h, users first) if ``x`` is
    ``decode_gemm.norm_reference(h, weight, eps)`` after Inductor's decompositions, else None::

        h32 = convert_element_type(h, float32)       # absent when h is fp32
        rstd = rsqrt(mean(pow(h32, 2), [-1], True) + eps)
        n = convert_element_type(h32 * rstd, h.dtype)  # absent when h is fp32
        x = weight * n                                 # weight (K,) in h's dtype

    Every node of the chain is used only within it (h and the weight may have other users)."""
    if not _is(x, aten.mul.Tensor, (2,)):
        return None
    x_val = x.meta.get("val")
    if x_val is None:
        return None
    for weight, rounded in (x.args, x.args[::-1]):
        chain, n = [x], rounded
        if _is(rounded, prims.convert_element_type.default, (2,)):
            chain.append(rounded)
            n = rounded.args[0]
        if not _is(n, aten.mul.Tensor, (2,)):
            continue
        for h32, rstd in (n.args, n.args[::-1]):
            if not _is(rstd, aten.rsqrt.default, (1,)):
                continue
            plus_eps = rstd.args[0]
            if not (_is(plus_eps, aten.add.Tensor, (2,)) and isinstance(plus_eps.args[1], (int, float))
                    and not isinstance(plus_eps.args[1], bool)):
                continue
            mean = plus_eps.args[0]
            if not (_is(mean, aten.mean.dim, (3,)) and mean.args[2] is True and len(mean.args[1]) == 1
                    and _last_dim(mean.args[0], mean.args[1][0])):
                continue
            square = mean.args[0]
            if not (_is(square, aten.pow.Tensor_Scalar, (2,)) and square.args[0] is h32 and square.args[1] == 2):
                continue
            nodes = [*chain, n, rstd, plus_eps, mean, square]
            h = h32
            if _is(h32, prims.convert_element_type.default, (2,)):
                h = h32.args[0]
                nodes.append(h32)
            vals = [getattr(t, "meta", {}).get("val") for t in (h, h32, n, rounded, weight)]
            if any(v is None for v in vals):
                continue
            h_val, h32_val, n_val, rounded_val, w_val = vals
            if not (h32_val.dtype == n_val.dtype == torch.float32 and h_val.dtype == rounded_val.dtype == x_val.dtype
                    == w_val.dtype and w_val.dim() == 1 and w_val.shape[0] == h_val.shape[-1]
                    and x_val.shape == h_val.shape):
                continue
            if not _only_used_within(nodes[1:], set(nodes)):
                continue
            return h, weight, float(plus_eps.args[1]), nodes
    return None


def _fake_call(op, args):
    """``op`` on the fake values of ``args`` (its registered fake implementation): the new node's meta value."""
    vals = [a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args]
    fake_mode = next(v.fake_mode for v in vals if isinstance(v, torch.Tensor) and hasattr(v, "fake_mode"))
    with fake_mode:
        return op(*vals)


def _views_keeping_last_dim(node):
    """(x, the reshape) if ``node`` reshapes x keeping its last dim (an MoE block flattening its tokens for the
    router: (B, S, H) -> (B * S, H)), else (node, None)."""
    if _is(node, aten.reshape.default, (2,)) or _is(node, aten.view.default, (2,)):
        source = node.args[0]
        src_val = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
        val = node.meta.get("val")
        if src_val is not None and val is not None and src_val.dim() >= 1 and val.dim() >= 1 and \
                src_val.shape[-1] == val.shape[-1]:
            return source, node
    return node, None


def fuse_rmsnorm_into_decode_linear(graph: torch.fx.Graph) -> int:
    """Rewrite every ``decode_linear`` (or ``decode_linear_glu_out``) whose x is an RMSNorm of h (``_rms_norm_input``;
    possibly through a reshape that keeps the last dim) into ``hf_tp::decode_linear_norm`` (TPConfig.gemm_norms:
    each program of the GEMM computes the statistic of its rows itself and normalizes x as it loads it):
    - where h is the residual add a + b, the op takes a and b and writes h, and h's other users (the next residual
      add) read it from there;
    - where the normalized x has other users (an MoE block's experts beside its router, q/k/v projections not
      fused into one GEMM), the op also writes it (``keep_x``) and they read it from there.
    FP8 layers (``hf_tp::fp8_linear``) become ``hf_tp::fp8_linear_norm`` the same way; the fp16 copy of x that
    their fp16 form reads, made beside the call, is then made from the normalized h in the kernel.
    Returns how many."""
    from . import decode_gemm, fp8  # noqa: F401 - the ops below are registered by these modules

    ops = torch.ops.hf_tp
    dense = (ops.decode_linear.default, ops.decode_linear_glu_out.default)
    fused = 0
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in dense and _is(node, node.target, (4,)):
            op, glu_out, x16 = ops.decode_linear_norm.default, node.target is ops.decode_linear_glu_out.default, None
        elif node.target is ops.fp8_linear.default and _is(node, node.target, (6, 7)):
            op, glu_out, x16 = ops.fp8_linear_norm.default, False, (node.args[6] if len(node.args) > 6 else None)
        else:
            continue
        if not isinstance(node.args[0], torch.fx.Node):
            continue
        if x16 is node.args[0]:  # x already fp16: its "copy" is x itself
            x16 = None
        if x16 is not None and not (_is(x16, prims.convert_element_type.default, (2,)) and x16.args[0] is
                                    node.args[0] and x16.args[1] == torch.float16 and set(x16.users) == {node}):
            continue  # an fp16 copy of something else than this x: not a form this rewrite knows
        x, view = _views_keeping_last_dim(node.args[0])
        match = _rms_norm_input(x)
        if match is None:
            continue
        h, norm_weight, eps, chain = match
        h_val = h.meta["val"]
        adds = _is(h, aten.add.Tensor, (2,)) and all(
            isinstance(t, torch.fx.Node) and t.meta.get("val") is not None and t.meta["val"].shape == h_val.shape
            and t.meta["val"].dtype == h_val.dtype for t in h.args)
        a, b = h.args if adds else (h, None)
        x_others = [u for u in x.users if u is not view and u is not node and u is not x16]
        view_others = [u for u in view.users if u is not node and u is not x16] if view is not None else []
        keep_x = bool(x_others or view_others)
        order = {n: i for i, n in enumerate(graph.nodes)}
        h_others = [u for u in h.users if u not in chain] if adds else []
        first = min([node, *h_others, *x_others, *view_others], key=order.__getitem__)
        if op is ops.fp8_linear_norm.default:  # (x, weight, scale, group_k, k_offset, bias[, x16])
            args = (a, b, norm_weight, eps, *node.args[1:6], keep_x)
        else:  # (x, weight, bias, fp32_out)
            args = (a, b, norm_weight, eps, *node.args[1:4], glu_out, keep_x)
        inputs = [t for t in args if isinstance(t, torch.fx.Node)]
        if any(order[t] >= order[first] for t in inputs):
            continue
        with graph.inserting_before(first):
            call = graph.call_function(op, args)
            call.meta["val"] = _fake_call(op, args)
            product = graph.call_function(operator.getitem, (call, 0))
            product.meta["val"] = call.meta["val"][0]
            if product.meta["val"].shape != node.meta["val"].shape:  # the GEMM read x through the reshape
                product = graph.call_function(aten.reshape.default, (product, list(node.meta["val"].shape)))
                product.meta["val"] = node.meta["val"]
            if adds:
                new_h = graph.call_function(operator.getitem, (call, 1))
                new_h.meta["val"] = call.meta["val"][1]
            if keep_x:
                new_x = graph.call_function(operator.getitem, (call, 2))
                new_x.meta["val"] = call.meta["val"][2]
                if view_others:
                    new_view = graph.call_function(view.target, (new_x, view.args[1]))
                    new_view.meta["val"] = view.meta["val"]
        _keep_provenance(node, call)
        node.replace_all_uses_with(product)
        graph.erase_node(node)
        if x16 is not None:
            graph.erase_node(x16)
        for user in x_others:
            user.replace_input_with(x, new_x)
        for user in view_others:
            user.replace_input_with(view, new_view)
        for dead in ([view] if view is not None else []) + chain:  # users before what they use
            if not dead.users and dead.graph is graph:
                graph.erase_node(dead)
        if adds:
            h.replace_all_uses_with(new_h)
            graph.erase_node(h)
        fused += 1
    return fused


def _only_used_within(nodes, pattern) -> bool:
    return all(user in pattern for node in nodes for user in node.users)


def _splits_k(x, weight, scales: str = "") -> bool:
    """Whether the decode GEMM of ``x`` (fake value) by ``weight`` (N, K; FP8 with scales of layout ``scales``)
    would split K (its config's SPLIT): then its sums are not whole in one program, and the epilogue form would
    have to drop the split."""
    from . import gemv_triton

    shape, (n, k) = x.shape, weight.shape
    if not all(isinstance(d, int) for d in (*shape, n, k)):
        return True  # symbolic: no config to look up
    rows = 1
    for d in shape[:-1]:
        rows *= d
    _, cfg = gemv_triton.choose(max(rows, 1), n, k, weight.element_size(), gemv_triton.sm_count(x.device),
                                scales=scales)
    return int(cfg.get("SPLIT", 1)) > 1


# FP8 gate/up GEMMs (``hf_tp::fp8_linear``) take the epilogue form too (``fuse_glu_into_gate_up``), with the fp16
# copy of the activation that an FP8 down projection's fp16 form reads written beside it: one Inductor kernel less
# per layer (silu * mul and the copy). Off: not measured faster on one H100 (FP8 rank of tp 2 +0.4 % and +0.9 %,
# tp 1 -0.4 %: benchmarks/RESULTS.md, 2026-12-06, twenty-second session); benchmarks flip it.
FP8_GLU_EPILOGUE = False


def _fp8_glu_out_applies(x, weight, scale) -> bool:
    """Whether the FP8 GEMM of ``x`` by ``weight`` (fake values) runs a decode kernel whose config keeps K whole
    (the epilogue needs each whole sum): at most DOT_MAX_M rows, not as two FP8 terms (per-channel scales up to
    fp8_triton.DECODE_TWO_TERM_MAX_M rows), no split of K."""
    from . import fp8_triton

    shape = x.shape
    if not all(isinstance(d, int) for d in (*shape, *weight.shape, *scale.shape)):
        return False
    rows = 1
    for d in shape[:-1]:
        rows *= d
    if not 1 <= rows <= fp8_triton.DOT_MAX_M or (scale.shape[1] == 1 and rows <= fp8_triton.DECODE_TWO_TERM_MAX_M):
        return False
    return not _splits_k(x, weight, "channel" if scale.shape[1] == 1 else "block")


def fuse_glu_into_gate_up(graph: torch.fx.Graph) -> int:
    """Rewrite every ``silu(gate) * up`` whose [gate | up] is a ``decode_linear`` that nothing else uses into
    ``hf_tp::decode_linear_glu_out`` (TPConfig.gemm_epilogues: the activation made in the gate/up GEMM's
    epilogue, hf_tp/kernels/gemv_triton.py ``_glu_store``), where that GEMM's config does not split K; returns
    how many. Each program computes both halves of its outputs, so nothing is read twice (unlike the prologue
    form above, where every program of the down projection re-reads [gate | up]).
    With FP8_GLU_EPILOGUE, an ``fp8_linear`` [gate | up] the same way (``hf_tp::fp8_linear_glu_out``); where the
    activation's users include its fp16 copy (``convert_element_type(h, float16)``, the x16 of an FP8 down
    projection), the op writes that copy too and the copy's users read it from there."""
    from . import fp8  # noqa: F401 - registers hf_tp::fp8_linear_glu_out

    ops = torch.ops.hf_tp
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
        dense = _is(source, ops.decode_linear.default, (4,))
        if not dense and not (FP8_GLU_EPILOGUE and _is(source, ops.fp8_linear.default, (6, 7, 8))):
            continue
        if source.meta["val"].dtype != node.meta["val"].dtype:
            continue
        pattern = {node, *silu[1], *cut}
        if not _only_used_within([source, *silu[1], *cut], pattern):
            continue
        x, weight = source.args[0], source.args[1]
        if dense and _splits_k(x.meta["val"], weight.meta["val"]):
            continue
        if not dense and not _fp8_glu_out_applies(x.meta["val"], weight.meta["val"], source.args[2].meta["val"]):
            continue
        copies = [u for u in node.users if _is(u, prims.convert_element_type.default, (2,))
                  and u.args[1] == torch.float16] if not dense else []
        with graph.inserting_before(node):
            if dense:
                replacement = graph.call_function(ops.decode_linear_glu_out.default, tuple(source.args))
                replacement.meta["val"] = node.meta["val"]  # only the output's fake value (as in the prologue form)
                call = replacement
            else:  # (x, weight, scale, group_k, k_offset, bias[, x16[, act_fp8]]) + the fp16 copy's flag
                args = tuple(source.args) + (None, False)[len(source.args) - 6:] + (bool(copies),)
                call = graph.call_function(ops.fp8_linear_glu_out.default, args)
                call.meta["val"] = _fake_call(ops.fp8_linear_glu_out.default, args)
                replacement = graph.call_function(operator.getitem, (call, 0))
                replacement.meta["val"] = call.meta["val"][0]
                if copies:
                    copy = graph.call_function(operator.getitem, (call, 1))
                    copy.meta["val"] = call.meta["val"][1]
        _keep_provenance(node, call)
        for old_copy in copies:
            old_copy.replace_all_uses_with(copy)
            graph.erase_node(old_copy)
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

    def __init__(self, prologues: bool = True, epilogues: bool = False, norms: bool = False):
        self.prologues, self.epilogues, self.norms = prologues, epilogues, norms

    def __call__(self, graph: torch.fx.Graph) -> None:
        if self.epilogues:
            fuse_glu_into_gate_up(graph)
        if self.norms:  # after the epilogue form: the gate/up GEMM it made takes the post-attention norm too
            fuse_rmsnorm_into_decode_linear(graph)
        if self.prologues:
            fuse_glu_into_decode_linear(graph)

    def uuid(self):
        if get_hash_for_files is None:
            return None
        # the ops' schemas are in decode_gemm.py and fp8.py: a cached graph must not call an older argument list;
        # the pass reads the configs' splits of K (gemv_triton.TABLE, with this GPU's own entries): a cached graph
        # must not keep a rewrite that another table would not make
        from . import decode_gemm, fp8

        try:
            from . import gemv_triton

            table = repr(sorted(gemv_triton.TABLE.items()))
        except Exception:  # no usable Triton: the kernels (and their table) are not in the graph either
            table = None
        return (get_hash_for_files((__file__, decode_gemm.__file__, fp8.__file__)), self.prologues, self.epilogues,
                self.norms, FP8_GLU_EPILOGUE, table)


def inductor_options(prologues: bool, epilogues: bool = False, norms: bool = False) -> dict:
    """The Inductor options that install the rewrites asked for (none when none is, or this torch has no
    custom passes)."""
    if not (prologues or epilogues or norms) or get_hash_for_files is None:
        return {}
    return {"post_grad_custom_post_pass": GemmFusions(prologues, epilogues, norms)}
