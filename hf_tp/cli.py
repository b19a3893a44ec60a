"""The ``hf-tp`` command: ``generate`` (demo and quick checks) and ``info`` (versions, devices, backends)."""

from __future__ import annotations

import argparse
import os
import sys


def _generate(args) -> int:
    import torch
    from transformers import AutoTokenizer

    import hf_tp
    from hf_tp.demo import demo_model_path

    path = args.model or str(demo_model_path())
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else "auto"
    model = hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=args.tp_size, dtype=dtype, device=args.device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template and not args.no_chat_template:
        messages = [{"role": "user", "content": args.prompt}]
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    else:
        inputs = tokenizer(args.prompt, return_tensors="pt")
    spmd = "WORLD_SIZE" in os.environ  # under torchrun every rank runs this; without it, hf_tp's workers do
    if spmd and hasattr(model, "parameters"):
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
    out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    if int(os.environ.get("RANK", "0")) == 0:
        print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    if hasattr(model, "shutdown"):
        model.shutdown()
    return 0


def _info(args) -> int:
    import platform

    import safetensors
    import torch
    import torch.distributed as dist
    import transformers

    import hf_tp
    from hf_tp.policies import supported_model_types

    print(f"hf_tp {hf_tp.__version__}  python {platform.python_version()}")
    print(f"torch {torch.__version__}  transformers {transformers.__version__}  safetensors {safetensors.__version__}")
    print(f"cuda available: {torch.cuda.is_available()}  devices: {torch.cuda.device_count()}")
    for i in range(torch.cuda.device_count()):
        print(f"  cuda:{i} {torch.cuda.get_device_name(i)}")
    print(f"backends: nccl={dist.is_nccl_available()} gloo={dist.is_gloo_available()}")
    print(f"policies: {', '.join(supported_model_types())}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hf-tp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate text with a tensor-parallel model")
    gen.add_argument("model", nargs="?", help="hub id or local folder (default: the embedded SmolLM2-135M-Instruct)")
    gen.add_argument("--tp-size", type=int, default=2)
    gen.add_argument("--prompt", default="What is the capital of France?")
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    gen.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    gen.add_argument("--no-chat-template", action="store_true", help="send the prompt as raw text")
    gen.set_defaults(func=_generate)
    bench = sub.add_parser("bench", help="hf_tp vs Transformers: decode tok/s, load time, peak memory")
    from hf_tp.bench import add_arguments, run_bench

    add_arguments(bench)
    bench.set_defaults(func=run_bench)
    info = sub.add_parser("info", help="versions, devices and backends")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
