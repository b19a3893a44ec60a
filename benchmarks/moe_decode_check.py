"""hf_tp's decode loop (compiled step, CUDA graph) on a Qwen3-MoE with qwen3-moe-mini's layer shapes but
``--layers`` layers, with TPConfig.moe_decode "grouped" and then "triton": decode tok/s at batch 1 and 8, and
whether the two paths' greedy tokens agree (bf16: the kernels round differently, so a near-tie may resolve
differently; the first differing position is reported).

    python benchmarks/moe_decode_check.py --layers 4 --out moe_decode.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def _tok_s(model, ids, new_tokens):
    def run(n):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        return time.perf_counter() - start, out

    run(new_tokens)  # compile and capture
    first = sorted(run(1)[0] for _ in range(3))[1]
    timed = [run(new_tokens) for _ in range(3)]
    full = sorted(t for t, _ in timed)[1]
    return ids.shape[0] * (new_tokens - 1) / (full - first), timed[0][1]


def main() -> int:
    from hf_tp.assembly import load_parallel_model
    from hf_tp.bench import shapes
    from hf_tp.config import TPConfig
    from hf_tp.parallel.comm import TPGroup

    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--modes", default="grouped,triton")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    name = f"qwen3-moe-mini-{args.layers}l"
    shapes.MOE_SHAPES[name] = ("qwen3_moe", dict(shapes.MOE_SHAPES["qwen3-moe-mini"][1], num_hidden_layers=args.layers))
    folder = shapes.write_random_checkpoint(name, Path(tempfile.gettempdir()) / name)
    device = torch.device("cuda", 0)
    tokens = {}
    with open(args.out, "a") as out:
        for batch in [int(b) for b in args.batches.split(",")]:  # batch outer: a cut-short run keeps whole pairs
            for mode in args.modes.split(","):
                start = time.perf_counter()
                model = load_parallel_model(str(folder), TPGroup(tp_rank=0, tp_size=1, device=device), dtype=torch.bfloat16,
                                            progress=False, tp_config=TPConfig(fast_decode=True, moe_decode=mode))
                load_s = time.perf_counter() - start
                switched = sum(hasattr(m, "_hf_tp_grouped_forward") for m in model.modules())
                ids = torch.randint(3, model.config.vocab_size, (batch, 128),
                                    generator=torch.Generator().manual_seed(batch)).to(device)
                tok_s, seq = _tok_s(model, ids, args.new_tokens)
                tokens[(mode, batch)] = seq.cpu()
                row = {"shape": name, "moe_decode": mode, "experts_modules_switched": switched, "batch": batch,
                       "decode_tok_s": round(tok_s, 1), "load_s": round(load_s, 2), "device": torch.cuda.get_device_name()}
                other = tokens.get(("grouped", batch))
                if mode != "grouped" and other is not None:
                    diff = (other != seq.cpu()).any(0).nonzero()
                    row["first_token_differing_from_grouped"] = None if len(diff) == 0 else int(diff[0]) - 128
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")
                out.flush()
                del model
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
