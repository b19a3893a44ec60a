"""Eager prefill forwards of two checkpoints (bf16 and FP8) in ONE process, interleaved: issue 19's "prefill not
slower than bf16".

An eager prefill of a short prompt is host-bound, and a lent machine's host speed drifts by tens of percent from
one process to the next (one H200, thirty-sixth session: the same bf16 forward took 46-48 ms, the FP8 one 50-55
ms, with every host op 1.7x slower in one of the FP8 processes; benchmarks/RESULTS.md). Separate processes then
compare hosts, not forms. Here both models are loaded at tp 1 as the bench loads them, and each round times one
forward of each form in turn (CUDA events around the forward of a 128-token prompt), so that a drift falls on all
forms alike; the medians and the per-round ratios are printed as one JSON line.

  python benchmarks/prefill_ab.py --bf16 CKPT --fp8 CKPT [--rounds 25] [--prompt-len 128] [--json F]

Forms: "bf16", "fp8" (the defaults: each FP8 layer's bound prefill launches, hf_tp.kernels.fp8.PREFILL_LANES) and
"fp8_full" (the same model with the lanes off: every call takes the full path).
"""

from __future__ import annotations

import argparse
import json
import statistics


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bf16", required=True)
    ap.add_argument("--fp8", required=True)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch

    from hf_tp.assembly import load_parallel_model
    from hf_tp.bench.run_system import tp_config
    from hf_tp.kernels import fp8 as fp8_kernels
    from hf_tp.parallel.comm import TPGroup

    device = torch.device("cuda", 0)
    models = {}
    for name, path in (("bf16", args.bf16), ("fp8", args.fp8)):
        models[name] = load_parallel_model(
            path, TPGroup(tp_rank=0, tp_size=1, device=device), dtype=torch.bfloat16, progress=False,
            tp_config=tp_config(argparse.Namespace(mode="compile", tp_size=1), device)).eval()
    vocab = min(m.config.vocab_size for m in models.values())
    ids = torch.randint(0, vocab, (1, args.prompt_len), device=device)
    forms = {"bf16": ("bf16", True), "fp8": ("fp8", True), "fp8_full": ("fp8", False)}

    def forward_ms(form: str) -> float:
        model, lanes = forms[form]
        fp8_kernels.PREFILL_LANES = lanes
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.no_grad():
            start.record()
            models[model](input_ids=ids, attention_mask=torch.ones_like(ids))
            end.record()
        end.synchronize()
        return start.elapsed_time(end)

    for form in forms:  # warm-up: Triton compiles, cuBLAS picks, the lanes are bound
        for _ in range(3):
            forward_ms(form)
    times = {form: [] for form in forms}
    for _ in range(args.rounds):
        for form in forms:
            times[form].append(forward_ms(form))
    median = {form: round(statistics.median(t), 3) for form, t in times.items()}
    ratios = {form: round(statistics.median(a / b for a, b in zip(times[form], times["bf16"])), 4)
              for form in forms if form != "bf16"}
    result = dict(prompt_len=args.prompt_len, rounds=args.rounds, device=torch.cuda.get_device_name(device),
                  median_ms=median, median_ratio_to_bf16=ratios,
                  spread_ms={form: [round(min(t), 3), round(max(t), 3)] for form, t in times.items()})
    print(json.dumps(result), flush=True)
    if args.json:
        json.dump(dict(result, times_ms=times), open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
