"""Fast decode path vs the eager path of the same hf_tp model, on GPU, plus a long run.

Usage: torchrun --nproc-per-node N benchmarks/fast_path_check.py --model FOLDER [--tokens 128] [--long 1000]
(N=1 runs hf_tp's parallel layers with a TP group of one.) Prints one JSON summary from rank 0.
"""

from __future__ import annotations

import argparse
import json
import os

for _k, _v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--long", type=int, default=1000)
    args = parser.parse_args()
    from gpu_rank import load_rank_model

    model, tp, ids = load_rank_model(args.model)
    world, device = tp.tp_size, tp.device
    kw = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False, pad_token_id=0)

    os.environ["HF_TP_FAST_DECODE"] = "0"
    eager = model.generate(ids, **kw)
    os.environ["HF_TP_FAST_DECODE"] = "1"
    fast = model.generate(ids, **kw)
    fast2 = model.generate(ids, **kw)
    differ = (eager[0] != fast[0]).nonzero()
    # Long run on the fast path: memory flat (the same captured step every token), and the 1000
    # tokens are what the model itself predicts: one eager forward over the whole sequence
    # (teacher forcing) must be finite and its argmax must agree with the generated tokens.
    long_kw = dict(max_new_tokens=args.long, min_new_tokens=args.long, do_sample=False, pad_token_id=0)
    model.generate(ids, **long_kw)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(device)
    out = model.generate(ids, **long_kw)
    torch.cuda.synchronize()
    after = torch.cuda.memory_allocated(device)
    os.environ["HF_TP_FAST_DECODE"] = "0"
    with torch.no_grad():
        logits = model(input_ids=out).logits[0, ids.shape[1] - 1:-1].float()
    nan = bool(~torch.isfinite(logits).all())
    agree = float((logits.argmax(-1) == out[0, ids.shape[1]:]).float().mean())
    summary = {"tp_size": world, "tokens": args.tokens, "fast_equals_eager": bool(torch.equal(eager, fast)),
               "first_difference_at": int(differ[0]) - ids.shape[1] if len(differ) else None,
               "fast_deterministic": bool(torch.equal(fast, fast2)), "long_tokens": out.shape[1] - ids.shape[1],
               "long_nonfinite_logits": nan, "long_teacher_forced_argmax_agreement": agree,
               "allocated_before_after_long_run": [before, after]}
    if tp.tp_rank == 0:
        print("FASTCHECK " + json.dumps(summary), flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
