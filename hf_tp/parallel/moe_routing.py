"""The decode path of MoE routers: calls of at most MOE_ROUTE_MAX_TOKENS tokens go through hf_tp's routing kernel
(hf_tp/kernels/moe_routing.py: softmax, top-k without a sort, renormalisation, in one launch); larger calls
keep Transformers' router forward.

Installed with TPConfig.moe_decode="triton", on the routers whose forward is one the kernel is known to
compute: the class's ``forward`` must be, statement for statement (compared as Python syntax trees, so
comments and layout do not matter), one of the two forms below, which are Transformers' Qwen3-MoE and
Mixtral routers in 5.17 and in 5.24 (and the routers copied from them: Qwen2-MoE, OLMoE, Qwen3-Next, MiniMax,
...). Any other router, or a change in a later Transformers, keeps Transformers' forward: the kernel is never
run on a computation it was not checked against. ``model.hf_tp_moe_routing`` and a log line say which routers
got the kernel and which kept their forward.
"""

from __future__ import annotations

import ast
import functools
import inspect
import logging
import textwrap
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels.moe_routing import MOE_ROUTE_MAX_EXPERTS, MOE_ROUTE_MAX_TOKENS, MOE_ROUTE_MAX_TOP_K, moe_route
from .layers import dense_linear

logger = logging.getLogger("hf_tp")

# Transformers' router forwards the kernel computes, by what the kernel must do for each: renormalise
# (True, False, or the router's ``norm_topk_prob``) and round the weights to the logits' dtype.
_QWEN3_MOE_FORWARD = '''
def forward(self, hidden_states):
    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    router_logits = F.linear(hidden_states, self.weight)
    router_probs = torch.nn.functional.softmax(router_logits, dtype=torch.float, dim=-1)
    router_top_value, router_indices = torch.topk(router_probs, self.top_k, dim=-1)
    if self.norm_topk_prob:
        router_top_value /= router_top_value.sum(dim=-1, keepdim=True)
    router_top_value = router_top_value.to(router_logits.dtype)
    router_scores = router_top_value
    return router_logits, router_scores, router_indices
'''
_MIXTRAL_FORWARD = '''
def forward(self, hidden_states):
    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    router_logits = F.linear(hidden_states, self.weight)
    router_probs = torch.nn.functional.softmax(router_logits.float(), dim=-1)
    router_top_value, router_indices = torch.topk(router_probs, self.top_k, dim=-1)
    router_top_value /= router_top_value.sum(dim=-1, keepdim=True)
    router_scores = router_top_value
    return router_logits, router_scores, router_indices
'''


def _tree(source: str) -> str:
    return ast.dump(ast.parse(textwrap.dedent(source)).body[0])


KNOWN_FORWARDS = {  # syntax tree -> (form name, renormalize: bool or "norm_topk_prob", cast the weights)
    _tree(_QWEN3_MOE_FORWARD): ("qwen3_moe", "norm_topk_prob", True),
    _tree(_MIXTRAL_FORWARD): ("mixtral", True, False),
}


def router_form(module: nn.Module):
    """(form, renormalize, cast_weights) if the kernel computes this router's forward, else None."""
    forward = vars(type(module)).get("forward")
    if forward is None or "forward" in vars(module):  # inherited or already replaced: not the checked code
        return None
    form = _forward_form(forward)
    if form is None:
        return None
    weight, top_k, hidden = getattr(module, "weight", None), getattr(module, "top_k", None), getattr(module, "hidden_dim", None)
    if not (isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.is_floating_point() and isinstance(top_k, int)
            and isinstance(hidden, int) and weight.shape[1] == hidden and weight.shape[0] <= MOE_ROUTE_MAX_EXPERTS
            and 1 <= top_k <= min(weight.shape[0], MOE_ROUTE_MAX_TOP_K)):
        return None
    if form[1] == "norm_topk_prob" and not isinstance(getattr(module, "norm_topk_prob", None), bool):
        return None
    return form


@functools.lru_cache(maxsize=None)
def _forward_form(forward) -> tuple | None:
    """The KNOWN_FORWARDS form of a class's ``forward`` function, or None. Cached per function: a model has a few
    module classes but hundreds of modules, and reading and parsing a forward's source takes milliseconds each
    (``benchmarks/plan_cost.py`` times the installation)."""
    try:
        form = KNOWN_FORWARDS.get(_tree(inspect.getsource(forward)))
    except (OSError, TypeError, SyntaxError):
        return None
    names = getattr(forward, "__globals__", {})
    if form is None or names.get("F") is not F or names.get("torch") is not torch:
        return None
    return form


def _looks_like_router(module: nn.Module) -> bool:
    """A module worth naming in the log when it keeps Transformers' forward: a top-k router by its attributes."""
    return hasattr(module, "top_k") and isinstance(getattr(module, "weight", None), torch.Tensor) and "Router" in type(module).__name__


def _forward(self, hidden_states):
    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    # A Python branch on a static shape: torch.compile specialises the decode step on it, nothing syncs.
    if hidden_states.shape[0] > MOE_ROUTE_MAX_TOKENS:
        return self._hf_tp_router_forward(hidden_states)
    # The router's logits as Transformers computes them (F.linear), by hf_tp's decode GEMM kernel where
    # TPConfig.decode_gemm="triton" marked the router (parallel.decode_gemm): cuBLAS took 5.2 us for this
    # 64 x 2048 product on an H200 (benchmarks/RESULTS.md, 2026-12-04)
    logits = dense_linear(hidden_states, self.weight, None, False, self.decode_gemm)
    _, renormalize, cast_weights = self._hf_tp_route_form
    if renormalize == "norm_topk_prob":
        renormalize = self.norm_topk_prob
    weights, ids = moe_route(logits, self.top_k, renormalize, cast_weights)
    return logits, weights, ids


def install_moe_routing(model: nn.Module, mode: str) -> dict:
    """With mode "triton", give every router the kernel computes the decode switch. Returns
    {"kernel": [class names], "transformers": [class names of routers left as they are]}, per module."""
    chosen = {"kernel": [], "transformers": []}
    if mode != "triton":
        return chosen
    for module in model.modules():
        form = router_form(module)
        if form is not None:
            module._hf_tp_router_forward = module.forward
            module._hf_tp_route_form = form
            module.decode_gemm = False  # install_decode_gemm sets it where its kernel reads the weight
            module.forward = types.MethodType(_forward, module)
            chosen["kernel"].append(type(module).__name__)
        elif _looks_like_router(module) and not hasattr(module, "_hf_tp_router_forward"):
            chosen["transformers"].append(type(module).__name__)
    if chosen["kernel"]:
        logger.info("hf_tp: MoE routing kernel on %d routers (%s)", len(chosen["kernel"]), sorted(set(chosen["kernel"])))
    if chosen["transformers"]:
        logger.warning("hf_tp: moe_decode='triton': %d routers keep Transformers' forward (%s): their forward is not "
                       "one hf_tp's routing kernel was checked against (hf_tp/parallel/moe_routing.py)",
                       len(chosen["transformers"]), sorted(set(chosen["transformers"])))
    return chosen
