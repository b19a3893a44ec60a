"""GPU time of the decode loop's token selection alone (hf_tp/generation/decode_loop.py `_Session._select`),
per variant, eager kernels vs the same function compiled by Inductor (as StaticDecoder.advance compiles it
with decode_loop.COMPILE_SAMPLING: the random draw kept eager's), each captured in a CUDA graph and timed
with CUDA events over replays. Issue 20 asks sampling requests to run at >= 0.9 of greedy: this says how
much of a step the selection costs. Rows marked "sort-free" run the whole-vocabulary variants with
decode_loop.SORT_FREE_SAMPLING (top-k/top-p thresholds by radix select instead of a sort).

    python benchmarks/select_cost.py [--vocab 128256] [--batch 1,4] [--replays 200] [--only top_k] [--topk-kernel 0,1,4,8] [--topk-piece 2048,4096] [--profile]
"""

from __future__ import annotations

import argparse
import torch

from hf_tp.generation import decode_loop
from hf_tp.generation.decode_loop import Variant, _Session


def fake_session(batch: int, vocab: int, variant: Variant, device) -> _Session:
    """A _Session with only what _select reads (no model, no cache): an instance of the class itself, so that
    Dynamo traces the in-place updates of its attributes as in the loop."""
    s = object.__new__(_Session)
    s.variant = variant
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
    return s


def captured(fn) -> torch.cuda.CUDAGraph:
    """``fn()`` warmed up on a side stream (compiled, allocator pool filled), captured, replayed once."""
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
    torch.cuda.synchronize()
    return graph


def time_graph(fn, replays: int) -> float:
    graph = captured(fn)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / replays


def kernel_lines(fn, replays: int) -> list[str]:
    """The kernels of one ``fn()`` as a CUDA graph replays it (torch.profiler, ``replays`` replays): per kernel
    its launches and GPU µs per call, then their sum, to set against the replay's time (the rest is the
    time between the graph's nodes)."""
    graph = captured(fn)
    rows, how = [], "in its CUDA graph"
    for run in (graph.replay, fn):  # fn's own launches where this profiler does not see inside graphs
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(replays):
                run()
            torch.cuda.synchronize()
        for event in prof.key_averages():
            us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
            if event.device_type == torch.autograd.DeviceType.CUDA and us:
                rows.append((us / replays, event.count / replays, event.key))
        if rows:
            break
        how = "launched one by one (the profiler saw no kernel inside the graph)"
    rows.sort(reverse=True)
    lines = [f"    kernels {how}:"] + [f"    {us:7.2f} us  x{count:4.1f}  {name[:110]}" for us, count, name in rows]
    lines.append(f"    {sum(r[0] for r in rows):7.2f} us in {sum(r[1] for r in rows):.0f} kernels per call")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--batch", default="1,4")
    parser.add_argument("--replays", type=int, default=200)
    parser.add_argument("--only", default="", help="comma-separated parts of variant names: only those")
    parser.add_argument("--topk-kernel", default=str(int(decode_loop.TOPK_KERNEL)),
                        help="comma-separated settings to time the top-k variants with: 0 torch.topk, 1 sampling_topk's "
                             "Triton kernels as shipped, 4 or 8 those kernels with radix digits of that many bits "
                             "(default %(default)s, the shipped decode_loop.TOPK_KERNEL)")
    parser.add_argument("--topk-piece", default="",
                        help="comma-separated sampling_topk.PIECE values (the kernels' piece of the vocabulary) to "
                             "time the kernel rows with (default: the shipped one)")
    parser.add_argument("--profile", action="store_true",
                        help="under each row, the compiled selection's kernels in its CUDA graph (torch.profiler)")
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
    if args.only:
        variants = {name: v for name, v in variants.items() if any(p in name for p in args.only.split(","))}
    whole_vocabulary = [name for name, v in variants.items() if v.do_sample and not v.candidates]
    from hf_tp.kernels import sampling_topk

    shipped_bits = sampling_topk.DIGIT_BITS
    kernels = [int(k) for k in args.topk_kernel.split(",")]
    shipped_piece = sampling_topk.PIECE
    pieces = [int(p) for p in args.topk_piece.split(",")] if args.topk_piece else [shipped_piece]
    # a kernel setting with each piece width asked for: (setting, piece)
    kernels = [(k, p) for k in kernels for p in (pieces if k else [shipped_piece])]
    # (name, sort-free, (setting, piece)): the top-k variants once per kernel setting asked for
    rows = [(name, False, k) for name, v in variants.items() for k in (kernels if v.candidates else kernels[:1])]
    rows += [(name, True, kernels[0]) for name in whole_vocabulary]
    print(f"{'variant':44s} {'batch':>5s} {'eager us':>9s} {'compiled us':>11s}")
    for batch in [int(b) for b in args.batch.split(",")]:
        logits = torch.randn(batch, args.vocab, device=device, dtype=torch.bfloat16) * 3
        for name, sort_free, kernel in rows:
            decode_loop.SORT_FREE_SAMPLING = sort_free
            kernel, sampling_topk.PIECE = kernel
            decode_loop.TOPK_KERNEL = bool(kernel)
            sampling_topk.DIGIT_BITS = kernel if kernel > 1 else shipped_bits
            variant = variants[name]
            s = fake_session(batch, args.vocab, variant, device)
            select = s._select
            eager = time_graph(lambda: select(logits), args.replays)
            torch._dynamo.reset()  # a fresh compile: SORT_FREE_SAMPLING is read while tracing
            options = {"fallback_random": True} if variant.do_sample else None  # as StaticDecoder.advance
            compiled_fn = torch.compile(select, fullgraph=True, dynamic=False, options=options)
            try:
                compiled = f"{time_graph(lambda: compiled_fn(logits), args.replays):11.1f}"
            except Exception as exc:  # noqa: BLE001 - report and go on
                compiled = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
            label = f"{name}, sort-free" if sort_free else name
            if variant.candidates and len(kernels) > 1:
                label = f"{label}, {f'Triton top-k {sampling_topk.DIGIT_BITS}b/{sampling_topk.PIECE}' if kernel else 'torch.topk'}"
            print(f"{label:44s} {batch:5d} {eager:9.1f} {compiled}", flush=True)
            if args.profile and not compiled.startswith("failed"):
                print("\n".join(kernel_lines(lambda: compiled_fn(logits), 20)), flush=True)
    decode_loop.SORT_FREE_SAMPLING = False


if __name__ == "__main__":
    main()
