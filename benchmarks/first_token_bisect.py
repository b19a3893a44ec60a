"""Bisect "forward right, generate's first token wrong" (issue 12) in one process per rank.

Usage: torchrun --nproc-per-node 2 benchmarks/first_token_bisect.py [--model PATH | --random-arch ARCH]
                [--transport nccl|gloo] [--json OUT]
NCCL: one GPU per rank. gloo: every rank on cuda:0 (the one-GPU machine), or the CPU without CUDA.

For each configuration (the environment switches hf_tp reads at load and generate time), the model is
loaded again and the same prompt batch (one full row, one left-padded row) goes through:
  forward       model(ids, mask).logits at each row's last position
  keep1         model(ids, mask, position_ids, logits_to_keep=1), positions as generate computes them
  cache         the same with a fresh DynamicCache, as generate's prefill passes it
  generate1     generate(max_new_tokens=1)
  generate      generate(max_new_tokens=--new-tokens), the tokens
The single-device Transformers model (bf16 on the same device, and fp32) does the same; a row is
wrong when its token differs from the bf16 reference's and the fp32 reference does not call the two
a near-tie. Each configuration's line is printed (and appended to --json) as soon as it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

for _k, _v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_check import RANDOM_ARCHS, _tokenizer, prompt_inputs, write_random_arch  # noqa: E402

# name -> environment switches (unset everything else hf_tp reads)
CONFIGS = {
    "default": {},
    "fuse0": {"HF_TP_FUSE": "0"},
    "pinned0": {"HF_TP_PINNED_LOAD": "0"},
    "reduce_fp32_0": {"HF_TP_REDUCE_FP32": "0"},
    "fuse0_pinned0_fp32_0": {"HF_TP_FUSE": "0", "HF_TP_PINNED_LOAD": "0", "HF_TP_REDUCE_FP32": "0"},
    "loop": {"HF_TP_FAST_DECODE": "1"},
    "loop_nographs": {"HF_TP_FAST_DECODE": "1", "HF_TP_CUDA_GRAPHS": "0"},
}
SWITCHES = ("HF_TP_FUSE", "HF_TP_PINNED_LOAD", "HF_TP_REDUCE_FP32", "HF_TP_FAST_DECODE", "HF_TP_CUDA_GRAPHS")


def last_real(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, :].float()  # left padding: every row's last position is real


@torch.no_grad()
def probe(model, inputs: dict, new_tokens: int, pad_token_id: int) -> dict:
    from transformers import DynamicCache

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    out = {}
    out["forward_logits"] = last_real(model(input_ids=ids, attention_mask=mask).logits)
    out["keep1_logits"] = last_real(model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                          logits_to_keep=1).logits)
    out["cache_logits"] = last_real(model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                          logits_to_keep=1, past_key_values=DynamicCache(), use_cache=True).logits)
    kw = dict(do_sample=False, pad_token_id=pad_token_id)
    out["generate1"] = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, **kw)[:, -1].cpu()
    gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
    out["generate"] = gen[:, ids.shape[1]:].cpu()
    return out


def tokens_of(result: dict) -> dict:
    return {"forward": result["forward_logits"].argmax(-1).tolist(), "keep1": result["keep1_logits"].argmax(-1).tolist(),
            "cache": result["cache_logits"].argmax(-1).tolist(), "generate1": result["generate1"].tolist(),
            "generate_first": result["generate"][:, 0].tolist()}


def first_diff(a: torch.Tensor, b: torch.Tensor) -> list:
    return [int((x != y).nonzero()[0]) if (x != y).any() else None for x, y in zip(a, b)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--random-arch", choices=sorted(RANDOM_ARCHS))
    parser.add_argument("--transport", choices=["nccl", "gloo"], default="gloo")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--json")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from hf_tp.auto import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if args.transport == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    else:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(args.transport, **({"device_id": device} if args.transport == "nccl" else {}))
    tp = TPGroup(tp_rank=rank, tp_size=world, device=device)

    if args.random_arch:
        folder = f"/tmp/hf_tp_bisect_{args.random_arch}"
        if rank == 0 and not os.path.exists(os.path.join(folder, "config.json")):
            write_random_arch(args.random_arch, folder)
        dist.barrier()
        args.model = folder
    if args.model is None:
        from hf_tp.demo import demo_model_path

        args.model = str(demo_model_path()) if rank == 0 else None
        holder = [args.model]
        dist.broadcast_object_list(holder, src=0)
        args.model = holder[0]
    tokenizer = _tokenizer(args.model)
    inputs = {k: v.to(device) for k, v in prompt_inputs(tokenizer).items()}
    pad = tokenizer.pad_token_id if tokenizer else 0

    refs = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        ref_model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device).eval()
        refs[name] = probe(ref_model, inputs, args.new_tokens, pad)
        del ref_model
    ref, fp32 = refs["bf16"], refs["fp32"]
    noise = (ref["forward_logits"] - fp32["forward_logits"]).abs().amax(-1)
    if rank == 0:
        print("REF", json.dumps({"bf16": tokens_of(ref), "fp32": tokens_of(fp32),
                                 "bf16_vs_fp32_generate_first_diff": first_diff(ref["generate"], fp32["generate"])}),
              flush=True)

    for name in args.configs.split(","):
        for key in SWITCHES:
            os.environ.pop(key, None)
        os.environ.update(CONFIGS[name])
        model = load_parallel_model(args.model, tp, dtype=torch.bfloat16, progress=False)
        result = probe(model, inputs, args.new_tokens, pad)
        toks, ref_toks = tokens_of(result), tokens_of(ref)
        verdicts = {}
        for method, rows in toks.items():
            wrong = []
            for row, (t, r) in enumerate(zip(rows, ref_toks["forward"])):
                if t != r:
                    gap = (fp32["forward_logits"][row, t] - fp32["forward_logits"][row, r]).abs().item()
                    if gap >= 3 * noise[row].item():
                        wrong.append({"row": row, "token": t, "ref": r, "fp32_gap": round(gap, 4),
                                      "noise": round(noise[row].item(), 4)})
            verdicts[method] = wrong or "ok"
        line = {"config": name, "transport": args.transport, "device": str(device), "tp_size": world,
                "tokens": toks, "wrong_first_tokens": verdicts,
                "generate_first_diff_vs_bf16_ref": first_diff(result["generate"], ref["generate"]),
                "forward_l2_vs_bf16_ref": ((result["forward_logits"] - ref["forward_logits"]).norm()
                                           / ref["forward_logits"].norm()).item()}
        if rank == 0:
            print("ROW", json.dumps(line), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(line) + "\n")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
