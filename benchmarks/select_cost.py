"""GPU time of the decode loop's token selection alone (hf_tp/generation/decode_loop.py `_Session._select`),
per variant, eager kernels vs the same function compiled by Inductor, each captured in a CUDA graph and timed
with CUDA events over replays. Issue 20 asks sampling requests to run at >= 0.9 of greedy: this says how
much of a step the selection costs.

    python benchmarks/select_cost.py [--vocab 128256] [--batch 1,4] [--replays 200]
"""

from __future__ import annotations

import argparse
import types

import torch

from hf_tp.generation.decode_loop import Variant, _Session


def fake_session(batch: int, vocab: int, variant: Variant, device) -> types.SimpleNamespace:
    s = types.SimpleNamespace(variant=variant)
    s.penalty = torch.tensor(1.1, device=device)
    s.seen = torch.rand(batch, vocab, device=device) < 0.01
    s.eos_in_vocab = torch.zeros(vocab, dtype=torch.bool, device=device)
    s.step = torch.tensor(5, device=device)
    s.min_new = torch.tensor(0, device=device)
    s.temperature = torch.tensor(0.7, device=device)
    s.top_k = torch.tensor(50 if variant.candidates else 0, device=device)
    s.top_p_rest = torch.tensor(0.1, device=device)
    s.min_p = torch.tensor(0.05, device=device)
    s.best_position = torch.arange(vocab, device=device) == vocab - 1
    s.scores = torch.zeros(4, batch, vocab, device=device)
    s.raw_logits = torch.zeros(4, batch, vocab, device=device)
    s.vocab_positions = torch.arange(vocab, device=device)
    s.cut_ties = torch.zeros((), dtype=torch.bool, device=device)
    s._last_candidate = {}
    s._keep = types.MethodType(_Session._keep, s)
    s._last_position = types.MethodType(_Session._last_position, s)
    return s


def time_graph(fn, replays: int) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / replays


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--batch", default="1,4")
    parser.add_argument("--replays", type=int, default=200)
    args = parser.parse_args()
    device = torch.device("cuda")
    variants = {
        "greedy": Variant(False, False, False, False, False),
        "greedy + penalty": Variant(False, True, False, False, False),
        "sampling top_p": Variant(True, False, False, False, False),
        "sampling top_p + min_p": Variant(True, False, False, False, True),
        "sampling + penalty + min_p": Variant(True, True, False, False, True),
        "sampling top_k 50 + top_p": Variant(True, False, False, False, False, 64),
        "sampling top_k 50 + top_p + min_p": Variant(True, False, False, False, True, 64),
        "greedy + scores + logits": Variant(False, False, True, True, False),
    }
    print(f"{'variant':32s} {'batch':>5s} {'eager us':>9s} {'compiled us':>11s}")
    for batch in [int(b) for b in args.batch.split(",")]:
        logits = torch.randn(batch, args.vocab, device=device, dtype=torch.bfloat16) * 3
        for name, variant in variants.items():
            s = fake_session(batch, args.vocab, variant, device)
            select = types.MethodType(_Session._select, s)
            eager = time_graph(lambda: select(logits), args.replays)
            compiled_fn = torch.compile(select, fullgraph=True, dynamic=False)
            try:
                compiled = f"{time_graph(lambda: compiled_fn(logits), args.replays):11.1f}"
            except Exception as exc:  # noqa: BLE001 - report and go on
                compiled = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
            print(f"{name:32s} {batch:5d} {eager:9.1f} {compiled}", flush=True)


if __name__ == "__main__":
    main()
