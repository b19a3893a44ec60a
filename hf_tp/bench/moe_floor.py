"""The bytes a decode step of a mixture-of-experts model actually reads, for the bench's bandwidth floor.

A dense step reads every weight once. A MoE step reads every non-expert weight once, but of each MoE layer's
experts only those its tokens chose: top-k for one token; at batch > 1 the distinct experts the batch's tokens
touch, which depends on the router and is measured here. Measurement: one plain forward over the generated
sequences with a hook on every router; at each decode position, the distinct experts the batch chose, per layer.
A token's routing does not depend on whether it is computed in a prefill or a decode step, so this is the
routing the timed decode steps did (up to rounding).
"""

from __future__ import annotations

import torch


def expert_modules(model) -> list:
    """Every module holding fused 3-D experts (Transformers 5: ``gate_up_proj`` (experts, 2 x inter, hidden))."""
    return [m for m in model.modules() if isinstance(getattr(m, "gate_up_proj", None), torch.Tensor)
            and m.gate_up_proj.dim() == 3 and isinstance(getattr(m, "down_proj", None), torch.Tensor)]


def _router(layer_module):
    return getattr(layer_module, "gate", None)


def _indices(output, top_k: int):
    """The router's chosen expert ids from its output (Transformers 5 routers return (logits, weights,
    indices); older ones may return other tuples: take the integer tensor with top_k columns)."""
    outputs = output if isinstance(output, tuple) else (output,)
    for t in reversed(outputs):
        if isinstance(t, torch.Tensor) and not t.is_floating_point() and t.shape[-1] == top_k:
            return t
    raise RuntimeError("could not find the chosen experts in the router's output; the bench's MoE floor "
                       "needs Transformers 5's (logits, weights, indices) router")


def distinct_experts(model, sequences: torch.Tensor, prompt_len: int) -> float:
    """Mean over MoE layers and decode positions of the number of distinct experts the batch chose.
    ``sequences``: (batch, prompt + new) generated ids; positions prompt_len.. are decode steps (the last
    generated token is never fed back, so it is left out)."""
    top_k = model.config.num_experts_per_tok
    experts = {id(m) for m in expert_modules(model)}
    parents = [m for m in model.modules() if _router(m) is not None and any(id(c) in experts for c in m.children())]
    chosen = []
    hooks = [_router(p).register_forward_hook(lambda _m, _a, out: chosen.append(_indices(out, top_k).detach()))
             for p in parents]
    try:
        with torch.no_grad():
            model(sequences[:, :-1])
    finally:
        for h in hooks:
            h.remove()
    batch, length = sequences.shape[0], sequences.shape[1] - 1
    if not chosen or length <= prompt_len:
        raise RuntimeError("no router ran in the forward, or no decode step (new tokens >= 2 needed) for the MoE floor")
    counts = []
    for ids in chosen:  # (batch * length, top_k) per layer
        ids = ids.reshape(batch, length, top_k)[:, prompt_len:]  # the decode steps' inputs
        steps = ids.permute(1, 0, 2).reshape(ids.shape[1], -1)  # (steps, batch * top_k)
        hit = torch.zeros(steps.shape[0], int(steps.max()) + 1, dtype=torch.bool, device=steps.device)
        hit.scatter_(1, steps, True)
        counts.append(hit.sum(1).double().mean().item())
    return sum(counts) / len(counts)


def moe_step_bytes(model, weight_bytes_per_gpu: float, distinct: float) -> tuple[float, dict]:
    """(bytes a step reads per GPU, row fields). ``weight_bytes_per_gpu``: all weights / tp; the experts'
    share is taken from this rank's own expert parameters (their local, split shapes)."""
    modules = expert_modules(model)
    experts = modules[0].gate_up_proj.shape[0]
    expert_bytes = sum(t.numel() * t.element_size() for m in modules for t in (m.gate_up_proj, m.down_proj))
    active = weight_bytes_per_gpu - expert_bytes + expert_bytes * min(distinct, experts) / experts
    return active, {"moe_experts": experts, "moe_top_k": model.config.num_experts_per_tok,
                    "moe_distinct_experts_per_step": round(distinct, 2),
                    "moe_expert_bytes_per_gpu": expert_bytes, "bytes_per_step_per_gpu": round(active),
                    "floor_counts": "active experts: non-expert weights plus the distinct experts each MoE layer's "
                                    "tokens chose per step (measured over the timed sequences)"}
