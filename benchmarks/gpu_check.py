"""GPU equivalence check: hf_tp at tp_size N over NCCL vs single-GPU Transformers, bf16.

Usage: python benchmarks/gpu_check.py [--model PATH | --random-arch ARCH] [--tp-size 2] [--new-tokens 128] [--json OUT]
The reference runs first on cuda:0 in this process; the TP ranks then run under torchrun
(this same file in --rank mode). Default model: the embedded SmolLM2-135M-Instruct.
``--random-arch`` (mixtral, qwen3_moe, phi3) writes a small random bf16 checkpoint of that
architecture first (no tokenizer: prompts are random ids).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# NVLink multicast must stay off on shared hosts (device notes); children inherit these.
for _k, _v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402

PROMPTS = ["What is the capital of France?", "Write a detailed essay about the history of Paris and its bridges."]


# Small random checkpoints for architecture spot checks; a wide init spreads the logits so bf16
# rounding does not decide greedy near-ties.
RANDOM_ARCHS = {
    "mixtral": ("MixtralConfig", dict(num_local_experts=8, num_experts_per_tok=2)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=256, head_dim=64)),
    "phi3": ("Phi3Config", dict()),
}


def write_random_arch(arch: str, folder: str) -> str:
    import transformers

    cls_name, extra = RANDOM_ARCHS[arch]
    config = getattr(transformers, cls_name)(
        vocab_size=1024, hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=1024, initializer_range=0.2, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(torch.bfloat16)
    model.save_pretrained(folder)
    return folder


def _inputs(tokenizer, device):
    if tokenizer is None:  # random ids: one full row, one left-padded row
        ids = torch.randint(3, 1024, (2, 24), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        ids[1, :8], mask[1, :8] = 0, 0
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # some tokenizer versions define none; the eos token pads as in Transformers docs
        tokenizer.pad_token = tokenizer.eos_token
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in PROMPTS]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(device) for k, v in batch.items()}


def _run(model, tokenizer, device, new_tokens):
    inputs = _inputs(tokenizer, device)
    with torch.no_grad():
        logits = model(**inputs).logits.float()
        # min_new_tokens keeps both runs going for the full length, so all new_tokens are compared.
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id if tokenizer else 0)
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id if tokenizer else 0)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"logits": logits.cpu(), "tokens": out[:, inputs["input_ids"].shape[1]:].cpu(), "seconds": seconds}


def _tokenizer(folder):
    """The checkpoint's tokenizer, or None for the random-weight spot checks, which have none."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder) if os.path.exists(os.path.join(folder, "tokenizer.json")) else None


def rank_main(args):
    import hf_tp

    model = hf_tp.AutoModelForCausalLM.from_pretrained(args.model, tp_size=args.tp_size, dtype=torch.bfloat16, device="cuda")
    tokenizer = _tokenizer(args.model)
    result = _run(model, tokenizer, next(model.parameters()).device, args.new_tokens)
    result["load_s"] = model.hf_tp_load_stats.seconds
    if int(os.environ["RANK"]) == 0:
        torch.save(result, args.rank_out)
    torch.distributed.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--random-arch", choices=sorted(RANDOM_ARCHS))
    parser.add_argument("--tp-size", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--json")
    parser.add_argument("--rank", action="store_true")
    parser.add_argument("--rank-out")
    args = parser.parse_args()
    if args.rank:
        return rank_main(args)
    from transformers import AutoModelForCausalLM

    from hf_tp.demo import demo_model_path

    scratch = tempfile.mkdtemp(prefix="hf_tp_gpu_check_")
    if args.random_arch:
        args.model = write_random_arch(args.random_arch, os.path.join(scratch, args.random_arch))
    args.model = args.model or str(demo_model_path())
    tokenizer = _tokenizer(args.model)
    ref_model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).to("cuda:0")
    ref = _run(ref_model, tokenizer, "cuda:0", args.new_tokens)
    del ref_model
    torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.tp_size}",
               __file__, "--rank", "--rank-out", out, "--model", args.model, "--tp-size", str(args.tp_size),
               "--new-tokens", str(args.new_tokens)]
        subprocess.run(cmd, check=True, timeout=600)
        tp = torch.load(out)
    rel = ((tp["logits"] - ref["logits"]).abs().max() / ref["logits"].abs().max()).item()
    same = (tp["tokens"] == ref["tokens"]).all(dim=-1).tolist()
    first_diff = [int((a != b).nonzero()[0]) if (a != b).any() else None for a, b in zip(tp["tokens"], ref["tokens"])]
    answer = tokenizer.decode(tp["tokens"][0], skip_special_tokens=True) if tokenizer else None
    summary = {
        "model": args.model, "tp_size": args.tp_size, "new_tokens": args.new_tokens,
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "logits_rel_err": rel, "nan": bool(torch.isnan(tp["logits"]).any()),
        "tokens_identical_per_prompt": same, "first_differing_token": first_diff,
        "answer_prompt0": answer[:120] if answer else None, "tp_generate_s": tp["seconds"], "ref_generate_s": ref["seconds"],
        "tp_load_s": tp["load_s"],
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    ok = rel <= 1e-2 and all(same) and not summary["nan"]
    print("GPU CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
