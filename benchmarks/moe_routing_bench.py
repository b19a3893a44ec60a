"""MoE routing per decode call: Transformers' Qwen3-MoE router (linear, softmax, torch.topk = select kernel + bitonic
sort, renormalisation, cast) against the same router with hf_tp's routing kernel (linear, then one launch), at
1..8 tokens, 64 and 128 experts, top 8, hidden 2048 (qwen3-moe-mini / Qwen3-30B-A3B), bf16.

Timing: ``--layers`` routers of distinct weights called in turn inside one CUDA graph (as a decode step calls
them), GPU time by CUDA events over graph replays, divided by the number of routers. Rows: "transformers",
"kernel" (what moe_decode="triton" installs), "kernel_id_order" (the kernel without reproducing torch.topk's
order of equal probabilities: what that part costs) and "linear" (the router's F.linear alone, which both
keep), so routing alone is the row minus "linear".

Agreement (``--check-tokens`` random hidden states per case, through the kernel directly): the fraction of
rows whose ids equal Transformers' (order included) and whose weights are bitwise Transformers', for
Qwen3-MoE (norm_topk_prob True and False) and Mixtral forms; with renormalisation and cast off, the kernel's
probabilities against torch's softmax + topk values (is the softmax bit for bit torch's?). Rows with equal
probabilities among their k + 1 largest (ties; frequent with bf16 logits) are counted.

    python benchmarks/moe_routing_bench.py --out moe_routing.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers

from hf_tp.kernels.moe_routing import route
from hf_tp.parallel.moe_routing import install_moe_routing
from moe_switch import _time  # CUDA-graph replay timing, shared with the MoE kernels' bench


def _routers(n, arch, experts, top_k, hidden, norm, device, seed=0):
    if arch == "mixtral":
        from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter as cls

        config = transformers.MixtralConfig(hidden_size=hidden, num_local_experts=experts, num_experts_per_tok=top_k)
    else:
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter as cls

        config = transformers.Qwen3MoeConfig(hidden_size=hidden, num_experts=experts, num_experts_per_tok=top_k,
                                             norm_topk_prob=norm)
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(n):
        router = cls(config).to(device)
        with torch.no_grad():
            router.weight.copy_(torch.randn(experts, hidden, generator=g, device=device) * 0.02)
        out.append(router.to(torch.bfloat16).eval())
    return out



def timing(layers, experts, tokens, top_k, hidden, replays, device):
    routers = _routers(layers, "qwen3_moe", experts, top_k, hidden, True, device)
    ours = copy.deepcopy(routers)
    assert len(install_moe_routing(nn.ModuleList(ours), "triton")["kernel"]) == layers
    x = torch.randn(tokens, hidden, device=device).bfloat16()
    systems = {
        "transformers": lambda: [r(x) for r in routers],
        "kernel": lambda: [r(x) for r in ours],
        "kernel_id_order": lambda: [route(F.linear(x, r.weight), top_k, True, True, torch_order=False) for r in routers],
        "linear": lambda: [F.linear(x, r.weight) for r in routers],
    }
    row = {"case": "timing", "experts": experts, "tokens": tokens, "top_k": top_k, "hidden": hidden, "layers": layers}
    with torch.no_grad():
        for name, fn in systems.items():
            row[f"{name}_us"] = round(_time(fn, torch.device("cuda"), replays) * 1e3 / layers, 2)
    row["routing_only_transformers_us"] = round(row["transformers_us"] - row["linear_us"], 2)
    row["routing_only_kernel_us"] = round(row["kernel_us"] - row["linear_us"], 2)
    row["speedup"] = round(row["transformers_us"] / row["kernel_us"], 2)
    return row


def agreement(arch, experts, top_k, hidden, norm, tokens, device):
    router = _routers(1, arch, experts, top_k, hidden, norm, device, seed=1)[0]
    x = torch.randn(tokens, hidden, device=device).bfloat16()
    renorm, cast = (norm, True) if arch == "qwen3_moe" else (True, False)
    with torch.no_grad():
        logits, ref_w, ref_ids = router(x)
        w, ids = route(logits, top_k, renorm, cast)
        raw_w, raw_ids = route(logits, top_k, False, False)
    probs = torch.softmax(logits, dtype=torch.float, dim=-1)
    top_values, top_ids = torch.topk(probs, top_k, dim=-1)
    sorted_top = torch.sort(probs, dim=-1, descending=True).values[:, : top_k + 1]
    tied = ~(sorted_top[:, 1:] != sorted_top[:, :-1]).all(-1)
    same_ids = (ids == ref_ids).all(-1)
    same_set = (ids.sort(-1).values == ref_ids.sort(-1).values).all(-1)
    bitwise = (w.view(torch.int16 if w.dtype == torch.bfloat16 else torch.int32)
               == ref_w.view(torch.int16 if ref_w.dtype == torch.bfloat16 else torch.int32)).all(-1)
    rel = ((w.float() - ref_w.float()).abs() / ref_w.float().abs().clamp_min(1e-30)).max()
    return {"case": "agreement", "arch": arch, "experts": experts, "top_k": top_k, "norm_topk_prob": norm,
            "weights_dtype": str(w.dtype).replace("torch.", ""), "tokens": tokens,
            "rows_with_ties": int(tied.sum()),
            "ids_equal": float(same_ids.float().mean()), "ids_same_set": float(same_set.float().mean()),
            "ids_equal_in_tied_rows": float(same_ids[tied].float().mean()) if tied.any() else None,
            "weights_bitwise": float(bitwise.float().mean()), "weights_max_rel_diff": float(rel),
            "softmax_topk_bitwise": float(((raw_w == top_values).all(-1) & (raw_ids == top_ids).all(-1)).float().mean())}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--tokens", default="1,2,4,8")
    parser.add_argument("--experts", default="64,128")
    parser.add_argument("--replays", type=int, default=50)
    parser.add_argument("--check-tokens", type=int, default=4096)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("moe_routing_bench.py needs CUDA (the kernel's CPU check is tests/test_moe_routing.py)")
    device = torch.device("cuda")
    out = open(args.out, "a") if args.out else None

    def emit(row):
        row["device"] = torch.cuda.get_device_name()
        row["torch"], row["transformers"] = torch.__version__, transformers.__version__
        print(json.dumps(row), flush=True)
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()

    for experts in [int(e) for e in args.experts.split(",")]:
        for tokens in [int(t) for t in args.tokens.split(",")]:
            emit(timing(args.layers, experts, tokens, 8, 2048, args.replays, device))
    for arch, experts, top_k, hidden, norm in (("qwen3_moe", 64, 8, 2048, True), ("qwen3_moe", 128, 8, 2048, True),
                                               ("qwen3_moe", 64, 8, 2048, False), ("mixtral", 8, 2, 4096, True),
                                               ("mixtral", 64, 8, 2048, True)):
        emit(agreement(arch, experts, top_k, hidden, norm, args.check_tokens, device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
