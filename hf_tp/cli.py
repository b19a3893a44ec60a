"""The ``hf-tp`` command line: generate, bench and info. Errors are one line; --debug shows the traceback."""

from __future__ import annotations

import argparse
import os
import re
import sys

DESCRIPTION = "Tensor-parallel inference for Hugging Face Transformers causal LMs."
EPILOG = "'hf-tp COMMAND --help' lists the options of a command."


_DTYPES = ("auto", "float32", "bfloat16", "float16")
DEFAULT_MAX_NEW_TOKENS = 128  # 32 cut the demo's answers mid-sentence


def _check_generate_arguments(args) -> None:
    """Everything that can be checked without the model, before any slow work (the demo model's first
    conversion takes seconds): a wrong flag is reported at once. (--dtype is checked by argparse.)"""
    from hf_tp.launch import resolve_device
    from hf_tp.policies.plan import validate_tp_size

    validate_tp_size(args.tp_size)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    resolve_device(args.device)


def _generate(args) -> int:
    _check_generate_arguments(args)
    import torch
    from transformers import AutoTokenizer

    import hf_tp
    from hf_tp.demo import demo_model_path

    path = args.model or str(demo_model_path())
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else "auto"
    model = hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=args.tp_size, dtype=dtype, device=args.device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:  # e.g. a folder written by save_pretrained of the model alone
        if hasattr(model, "shutdown"):
            model.shutdown()
        raise ValueError(f"{path} has no usable tokenizer (AutoTokenizer.from_pretrained raised {type(exc).__name__}); "
                         f"hf-tp generate needs the tokenizer files beside the weights: save them there with "
                         f"AutoTokenizer.from_pretrained(ORIGINAL).save_pretrained({path!r})") from exc
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
    from hf_tp.policies.auto import auto_model_types

    print(f"hf_tp {hf_tp.__version__}  python {platform.python_version()}")
    print(f"torch {torch.__version__}  transformers {transformers.__version__}  safetensors {safetensors.__version__}")
    print(f"cuda available: {torch.cuda.is_available()}  devices: {torch.cuda.device_count()}")
    for i in range(torch.cuda.device_count()):
        print(f"  cuda:{i} {torch.cuda.get_device_name(i)}")
    print(f"backends: nccl={dist.is_nccl_available()} gloo={dist.is_gloo_available()}")
    hand_written = supported_model_types()
    print(f"policies: {', '.join(hand_written)}")
    # Architectures without a hand-written policy whose Transformers config carries a base_model_tp_plan.
    print(f"automatic policy (base_model_tp_plan; tested: granite, olmo2, starcoder2, the others unverified): "
          f"{', '.join(auto_model_types())}")
    return 0


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, where it has a meaningful one (not None or a False flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _one_line(exc: BaseException) -> str:
    """The whole message on one line, without the worker's traceback that a worker's error carries below it
    (--debug shows it): a message's advice often comes after its first line."""
    text = re.split(r"\n\s*(?:--- traceback from tp rank|Traceback \(most recent call last\))", str(exc))[0]
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def main(argv=None) -> int:
    from hf_tp._version import __version__

    parser = argparse.ArgumentParser(prog="hf-tp", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"hf-tp {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, print the full Python traceback")
    # Also accepted after the command (hf-tp generate --debug); SUPPRESS keeps the subcommand's absent
    # flag from overwriting one given before it.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = sub.add_parser("generate", parents=[debug], formatter_class=_DefaultsFormatter,
                         help="generate text at tp_size N (default model: the embedded SmolLM2-135M-Instruct)")
    gen.add_argument("model", nargs="?", help="hub id or local folder (default: the embedded SmolLM2-135M-Instruct, "
                                              "converted once into $HF_TP_CACHE, default ~/.cache/hf_tp)")
    gen.add_argument("--tp-size", type=int, default=2, help="number of processes (devices) the model is split over")
    gen.add_argument("--prompt", default="What is the capital of France?", help="the user message")
    gen.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                     help="at most this many tokens are generated (greedy); the answer may end earlier")
    gen.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    gen.add_argument("--dtype", default="auto", choices=_DTYPES, help="weights' dtype; auto: the checkpoint's")
    gen.add_argument("--no-chat-template", action="store_true", help="send the prompt as raw text")
    gen.set_defaults(func=_generate)
    bench = sub.add_parser("bench", parents=[debug], formatter_class=_DefaultsFormatter, help="hf_tp vs Transformers side by side: decode tok/s, load time, peak memory "
                                        "(--smoke: a tiny model on CPU)")
    from hf_tp.bench import add_arguments, run_bench

    add_arguments(bench)
    bench.set_defaults(func=run_bench)
    info = sub.add_parser("info", parents=[debug], help="versions, devices, backends and supported architectures")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("hf-tp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a command-line user needs the message, not our stack
        if args.debug:
            raise
        print(f"hf-tp {args.command}: error: {_one_line(exc)} (hf-tp --debug {args.command} ... shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
