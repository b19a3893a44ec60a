"""MoE experts per decode call: hf_tp's Triton kernels (hf_tp/kernels/moe_decode.py) against Transformers'
grouped-GEMM experts forward, per token count, to place MOE_DECODE_MAX_TOKENS; at the expert widths tp 1, 2,
4 and 8 leave (768, 384, 192, 96 for Qwen3-30B-A3B); and a block-size sweep of the kernels at batch 1.

Each case runs ``--layers`` layers of distinct weights (as a model does, so the L2 cache does not hold a
layer's experts for the next call) inside one CUDA graph, timed with CUDA events over graph replays. The
reported bandwidth counts the distinct experts each layer's tokens chose (what a step must read).

    python benchmarks/moe_switch.py --out moe_switch.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import types

import torch

from hf_tp.kernels import moe_decode as K


def _layers(n, experts, hidden, inter, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    return [((torch.randn(experts, 2 * inter, hidden, generator=g, device=device) * 0.02).to(dtype),
             (torch.randn(experts, hidden, inter, generator=g, device=device) * 0.02).to(dtype)) for _ in range(n)]


def _routing(n, tokens, experts, top_k, device, seed=1):
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(n):
        w, ids = torch.softmax(torch.randn(tokens, experts, generator=g, device=device), -1).topk(top_k)
        out.append((ids, (w / w.sum(-1, keepdim=True)).to(torch.bfloat16)))
    return out


def _grouped_module(gate_up, down):
    """A stand-in with what Transformers' grouped_mm_experts_forward reads from an experts module."""
    import torch.nn.functional as F
    from transformers.integrations.moe import _default_apply_gate

    m = types.SimpleNamespace(gate_up_proj=gate_up, down_proj=down, num_experts=gate_up.shape[0], has_gate=True,
                              has_bias=False, is_transposed=False, is_concatenated=True, has_post_expert_norm=False,
                              _is_expert_parallel=False, act_fn=F.silu)
    m._apply_gate = types.MethodType(_default_apply_gate, m)
    return m


def _time(fn, device, replays=20) -> float:
    """Milliseconds per call of fn() captured in a CUDA graph (eager on CPU)."""
    if device.type != "cuda":
        import time

        fn()
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays


def case(layers, tokens, top_k, device, dtype, blocks=None, systems=("kernel", "grouped")):
    from transformers.integrations.moe import grouped_mm_experts_forward

    experts, two_inter, hidden = layers[0][0].shape
    inter = two_inter // 2
    routes = _routing(len(layers), tokens, experts, top_k, device)
    x = (torch.randn(tokens, hidden, device=device) * 0.5).to(dtype)
    distinct = sum(len(torch.unique(ids)) for ids, _ in routes)
    read = distinct * 3 * hidden * inter * torch.finfo(dtype).bits // 8
    row = {"tokens": tokens, "experts": experts, "hidden": hidden, "inter": inter, "top_k": top_k, "layers": len(layers),
           "distinct_per_layer": distinct / len(layers), "bytes_read": read}
    # correctness of both against the reference, first layer
    ref = K.experts_reference(x, *layers[0], *routes[0])
    scale = ref.float().abs().max()
    if "kernel" in systems:
        got = K.experts_decode(x, *layers[0], *routes[0], *(blocks or (None, None)))
        row["kernel_rel_err"] = float((got.float() - ref.float()).abs().max() / scale)
        ms = _time(lambda: [K.experts_decode(x, gu, dn, ids, w, *(blocks or (None, None)))
                            for (gu, dn), (ids, w) in zip(layers, routes)], device)
        row.update(kernel_us_per_layer=round(ms * 1e3 / len(layers), 2), kernel_tb_s=round(read / (ms * 1e-3) / 1e12, 3))
    if "grouped" in systems:
        try:  # the installed Transformers' own function: its module attributes may differ between versions
            mods = [_grouped_module(gu, dn) for gu, dn in layers]
            got = grouped_mm_experts_forward(mods[0], x, *routes[0])
            row["grouped_rel_err"] = float((got.float() - ref.float()).abs().max() / scale)
            ms = _time(lambda: [grouped_mm_experts_forward(m, x, ids, w) for m, (ids, w) in zip(mods, routes)], device)
            row.update(grouped_us_per_layer=round(ms * 1e3 / len(layers), 2),
                       grouped_tb_s=round(read / (ms * 1e-3) / 1e12, 3))
        except Exception as exc:  # noqa: BLE001 - recorded in the row
            row["grouped_error"] = f"{type(exc).__name__}: {exc}"[:300]
    if blocks:
        row["blocks"] = blocks
    return row


# (outputs per program, reduction chunk, warps): a batch-1 call is latency-bound when each program walks the
# whole reduction in a serial loop, so the grid trades outputs per program against the chunk per step.
GATE_UP_GRID = [(n, k, w) for n in (4, 8, 16) for k in (256, 512, 1024) for w in (4, 8)]
# Down: (outputs, chunk, warps, sums the pairs): per-pair programs summed by torch, or one program per token
# that sums its k pairs (k times fewer programs, so fewer outputs each).
DOWN_GRID = ([(n, k, w, False) for n in (8, 16, 32) for k in (128, 256, 512) for w in (4, 8)]
             + [(n, k, w, True) for n in (1, 2, 4, 8) for k in (64, 128, 256) for w in (4, 8)])


def best_blocks(rows):
    """The sweep's fastest gate/up and down blocks, by their summed time over the swept widths."""
    best = {}
    for part, index in (("sweep_gate_up", 0), ("sweep_down", 1)):
        total = {}
        for row in rows:
            # rows of earlier sweeps in the same --out file (down blocks without the form entry) are left out
            if (row.get("case") == part and row.get("kernel_rel_err", 1) < 1e-2
                    and (index == 0 or len(row["blocks"][1]) == 4)):
                key = tuple(row["blocks"][index])
                total[key] = total.get(key, 0.0) + row["kernel_us_per_layer"]
        best[part] = min(total, key=total.get) if total else None
    return best["sweep_gate_up"], best["sweep_down"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--tokens", default="1,2,4,8,16,32,64")
    parser.add_argument("--widths", default="768,384,192,96", help="expert widths (768 / tp)")
    parser.add_argument("--sweep", action="store_true", help="kernel block sizes at 1 token, width 768")
    parser.add_argument("--mixtral", action="store_true", help="also Mixtral-8x7B's experts (4 layers)")
    parser.add_argument("--small", action="store_true", help="tiny shapes (a CPU check of this script)")
    parser.add_argument("--write-best", action="store_true",
                        help="after --sweep, write the fastest blocks into hf_tp/kernels/moe_decode.py")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    experts, hidden, top_k = (64, 2048, 8) if not args.small else (8, 64, 2)
    out = open(args.out, "a")

    def emit(row):
        row["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
        print(json.dumps(row), flush=True)
        out.write(json.dumps(row) + "\n")
        out.flush()

    for width in [int(w) for w in args.widths.split(",")]:
        width = width if not args.small else 32
        layers = _layers(args.layers, experts, hidden, width, dtype, device)
        tokens_list = [int(t) for t in args.tokens.split(",")] if width == 768 or args.small else [1, 8]
        for tokens in tokens_list:
            emit({"case": "qwen3-moe", **case(layers, tokens, top_k, device, dtype)})
        if args.sweep and (width in (768, 384) or args.small):  # tp 1 and the rank of tp 2
            for gu in GATE_UP_GRID:  # gate/up swept with down at its default, then down with gate/up's default
                emit({"case": "sweep_gate_up", **case(layers, 1, top_k, device, dtype, blocks=(gu, K.DOWN_BLOCKS),
                                                      systems=("kernel",))})
            for dn in DOWN_GRID:
                emit({"case": "sweep_down", **case(layers, 1, top_k, device, dtype, blocks=(K.GATE_UP_BLOCKS, dn),
                                                   systems=("kernel",))})
        del layers
        if args.small:
            break
    if args.sweep and args.write_best:
        rows = [json.loads(line) for line in open(args.out)]
        gate_up, down = best_blocks(rows)
        path = K.__file__
        text = open(path).read()
        for name, value in (("GATE_UP_BLOCKS", gate_up), ("DOWN_BLOCKS", down)):
            if value:
                text = re.sub(rf"^{name} = \(.*\)$", f"{name} = {tuple(value)}", text, count=1, flags=re.M)
        open(path, "w").write(text)
        print(f"wrote GATE_UP_BLOCKS = {gate_up}, DOWN_BLOCKS = {down} into {path}", flush=True)
    if args.mixtral and not args.small:
        layers = _layers(4, 8, 4096, 14336, dtype, device)
        for tokens in (1, 2, 8):
            emit({"case": "mixtral-8x7b", **case(layers, tokens, 2, device, dtype)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
