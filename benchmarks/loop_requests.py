"""Speed of the requests chat UIs and eval harnesses send (issue 20, section 3), against the plain greedy
loop of the same model in the same run, on GPU.

Usage (repo root, one GPU, hf_tp's parallel layers with a TP group of one):
    python benchmarks/loop_requests.py --shape llama3-8b [--tokens 256] [--repeats 3] [--json OUT.jsonl]
    python benchmarks/loop_requests.py --model FOLDER ...
    torchrun --nproc-per-node N benchmarks/loop_requests.py ...   (tp N)
    python benchmarks/loop_requests.py --simulate-tp 2 ...   (one GPU: the widest rank of tp 2, stand-in collectives)
    --fallbacks adds the requests that stay on Transformers' generate (beam search, a custom
    LogitsProcessor, beam search with Transformers' static cache + compile), for docs/generation.md's fallback
    table, each also timed on the unsplit Transformers model of the same folder ("vs Transformers": tp 1 only).

Each request is timed twice with CUDA events on the current stream: generating ``--tokens`` new tokens, and
generating one (the prefill and the first token); decode tok/s = rows x (tokens - 1) / (difference). The
plain greedy loop of the same batch is timed in the same round, and ``ratio`` is the request's decode
tok/s over it (issue 20 asks >= 0.9). Rounds are interleaved; medians are printed. Every request runs
min_new_tokens = max_new_tokens so random weights never stop early on eos (a stop string may still end a
run early: the tokens actually generated are counted). One JSON line per request.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

for _k, _v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
               "HF_TP_FAST_DECODE": "1"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))


def word_tokenizer(vocab_size: int):
    """A tokenizer whose vocabulary covers every id of the model ("w0" .. "wN"), for stop_strings on a
    random-weight checkpoint that comes without one (StopStringCriteria needs each id's text)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab_size - 1)}
    words["abcdef"] = vocab_size - 1  # StopStringCriteria tokenizes this prefix while reading the vocabulary
    backend = Tokenizer(models.WordLevel(words, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def requests(tokenizer, fallbacks: bool) -> dict[str, tuple[dict, int]]:
    """name -> (generate kwargs, copies of each prompt): the greedy baseline of the same rows comes first."""
    # top_k=50 is Transformers' default (GenerationConfig): the loop warps the 64 largest logits. top_k=0
    # samples from the whole vocabulary, which the loop sorts every step.
    sample = dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=50)
    whole = {**sample, "top_k": 0}
    out = {
        "greedy": (dict(do_sample=False), 1),
        "repetition_penalty=1.1": (dict(do_sample=False, repetition_penalty=1.1), 1),
        "sampling (t 0.7, top_k 50, top_p 0.9)": (sample, 1),
        "sampling + min_p=0.05": ({**sample, "min_p": 0.05}, 1),
        "sampling + repetition_penalty=1.1 + min_p": ({**sample, "min_p": 0.05, "repetition_penalty": 1.1}, 1),
        "sampling, top_k=0 (t 0.7, top_p 0.9)": (whole, 1),
        "sampling, top_k=0 + min_p=0.05": ({**whole, "min_p": 0.05}, 1),
        "output_scores": (dict(do_sample=False, return_dict_in_generate=True, output_scores=True), 1),
        "output_scores + output_logits": (dict(do_sample=False, return_dict_in_generate=True, output_scores=True,
                                               output_logits=True), 1),
        "stop_strings (rarely met)": (dict(do_sample=False, stop_strings=["w1 w1 w1 w1"], tokenizer=tokenizer), 1),
        "greedy x4 rows": (dict(do_sample=False), 4),
        "num_return_sequences=4 (sampling)": ({**sample, "num_return_sequences": 4}, 1),
    }
    if fallbacks:
        from transformers import LogitsProcessorList, TemperatureLogitsWarper

        out["fallback: num_beams=4"] = (dict(do_sample=False, num_beams=4), 1)
        out["fallback: custom LogitsProcessor"] = (
            dict(do_sample=False, logits_processor=LogitsProcessorList([TemperatureLogitsWarper(1.0)])), 1)
        # Where Transformers itself uses a static cache and compiles, the fallback does the same (it is
        # Transformers' generate on the parallel model).
        out["fallback: num_beams=4, cache_implementation=static"] = (
            dict(do_sample=False, num_beams=4, cache_implementation="static"), 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="checkpoint folder (else --shape)")
    parser.add_argument("--shape", default="llama3-8b", help="random-weight shape of hf_tp.bench.shapes")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fallbacks", action="store_true")
    parser.add_argument("--simulate-tp", type=int, default=1, help="one GPU: the widest rank of this tp size")
    parser.add_argument("--json", help="append one JSON line per request here")
    parser.add_argument("--only", default="", help="comma-separated parts of request names: only those (and the "
                        "greedy baselines) run")
    args = parser.parse_args()

    from gpu_rank import load_rank_model

    from hf_tp.generation.decode_loop import StaticDecoder

    folder = args.model
    if folder is None:
        from hf_tp.bench.shapes import write_random_checkpoint

        folder = str(write_random_checkpoint(args.shape, Path(tempfile.gettempdir()) / f"hf_tp_{args.shape}"))
    if torch.cuda.is_available() and args.simulate_tp > 1:
        from hf_tp.bench.simulate import load_simulated_rank

        torch.cuda.set_device(0)
        model, _, _ = load_simulated_rank(folder, args.simulate_tp, torch.device("cuda", 0), dtype=torch.bfloat16)
        tp = types.SimpleNamespace(tp_rank=0, tp_size=1, device=torch.device("cuda", 0))  # one process, no group
    elif torch.cuda.is_available():
        model, tp, _ = load_rank_model(folder)
    else:  # a smoke run of this script on CPU (wall-clock times, meaningless as speed)
        from hf_tp.assembly import load_parallel_model
        from hf_tp.parallel.comm import TPGroup

        tp = TPGroup(0, 1, torch.device("cpu"))
        model = load_parallel_model(folder, tp, dtype=torch.float32, progress=False)
    device = tp.device
    on_cuda = device.type == "cuda"
    served = []
    original = StaticDecoder.generate

    def counting(self, request):
        served.append(1)
        return original(self, request)

    StaticDecoder.generate = counting
    vocab = model.config.vocab_size
    prompt = torch.randint(3, vocab, (1, args.prompt_len), generator=torch.Generator().manual_seed(0)).to(device)
    table = requests(word_tokenizer(vocab), args.fallbacks)
    if args.only:
        parts = args.only.split(",")
        table = {name: v for name, v in table.items() if name.startswith("greedy") or any(p in name for p in parts)}

    def seconds(kwargs: dict, copies: int, new: int, model=model) -> tuple[float, int, bool]:
        """(seconds, new tokens per row actually generated, whether the loop served it)"""
        ids = prompt.repeat(copies, 1)
        before = len(served)
        call = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
        if not on_cuda:
            began = time.perf_counter()
            out = model.generate(ids, **call, **kwargs)
            elapsed = time.perf_counter() - began
        else:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            out = model.generate(ids, **call, **kwargs)
            end.record()
            torch.cuda.synchronize(device)
            elapsed = start.elapsed_time(end) / 1e3
        sequences = out if torch.is_tensor(out) else out.sequences
        return elapsed, sequences.shape[1] - ids.shape[1], len(served) > before

    for name, (kwargs, copies) in list(table.items()):  # warm-up: compile and capture every variant and shape
        try:
            seconds(kwargs, copies, args.tokens)
            seconds(kwargs, copies, 1)
        except Exception as exc:  # noqa: BLE001 - a request this version cannot run: say so, time the rest
            print(f"FAILED {name}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            del table[name]
    # The fallbacks run Transformers' generate on the parallel model: compare with the unsplit Transformers
    # model of the same folder (tp 1 only: the same weights, the same device).
    reference = None
    if args.fallbacks and on_cuda and tp.tp_size == 1 and args.simulate_tp == 1:
        from transformers import AutoModelForCausalLM

        reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device).eval()
    ref_results: dict[str, list[float]] = {}
    results: dict[str, list[float]] = {name: [] for name in table}
    # Each request's decode rate: the tokens after the first over (the median time of the whole call - the median
    # time of a one-token call). One repeat's difference is noisy where the call is short (a 1B shape's 128
    # tokens take ~0.1 s, and a one-token call's jitter is a few ms); the per-repeat rates are kept as runs_tok_s.
    fulls: dict[str, list[float]] = {name: [] for name in table}
    firsts: dict[str, list[float]] = {name: [] for name in table}
    made_by: dict[str, int] = {}
    in_loop: dict[str, bool] = {}
    for _ in range(args.repeats):
        for name, (kwargs, copies) in table.items():
            full, made, in_loop[name] = seconds(kwargs, copies, args.tokens)
            first, _, _ = seconds(kwargs, copies, 1)
            rows = copies * kwargs.get("num_return_sequences", 1)
            results[name].append(rows * (made - 1) / max(full - first, 1e-9))
            fulls[name].append(full)
            firsts[name].append(first)
            made_by[name] = made
            if reference is not None and name.startswith("fallback"):
                with torch.no_grad():
                    if name not in ref_results:  # warm-up (Transformers compiles for a static cache)
                        ref_results[name] = []
                        seconds(kwargs, copies, args.tokens, reference)
                        seconds(kwargs, copies, 1, reference)
                    full, made, _ = seconds(kwargs, copies, args.tokens, reference)
                    first, _, _ = seconds(kwargs, copies, 1, reference)
                ref_results[name].append(rows * (made - 1) / max(full - first, 1e-9))
    def rate(name: str, copies: int, kwargs: dict) -> float:
        decode = statistics.median(fulls[name]) - statistics.median(firsts[name])
        return copies * kwargs.get("num_return_sequences", 1) * (made_by[name] - 1) / max(decode, 1e-9)

    if tp.tp_rank == 0:
        base = {1: rate("greedy", *table["greedy"][::-1]), 4: rate("greedy x4 rows", *table["greedy x4 rows"][::-1])}
        print(f"{'request':52s} {'loop':>5s} {'decode tok/s':>13s} {'ratio':>6s} {'Transformers tok/s':>19s}")
        for name, (kwargs, copies) in table.items():
            rows = copies * kwargs.get("num_return_sequences", 1)
            tok_s = rate(name, copies, kwargs)
            ratio = tok_s / base[rows] if rows in base else None
            row = {"request": name, "served_by_loop": in_loop[name], "rows": rows, "tp_size": tp.tp_size, "simulate_tp": args.simulate_tp,
                   "tokens": args.tokens, "prompt_len": args.prompt_len, "decode_tok_s": round(tok_s, 1),
                   "ratio_to_plain_greedy": None if ratio is None else round(ratio, 3),
                   "runs_tok_s": [round(v, 1) for v in results[name]], "model": args.model or args.shape,
                   "transformers_tok_s": round(statistics.median(ref_results[name]), 1) if name in ref_results else None,
                   "device": torch.cuda.get_device_name(device) if on_cuda else "cpu (smoke)"}
            ref = f"{statistics.median(ref_results[name]):19.1f}" if name in ref_results else ""
            print(f"{name:52s} {str(in_loop[name]):>5s} {tok_s:13.1f} {'' if ratio is None else f'{ratio:6.3f}':>6s} {ref}")
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    if tp.tp_size > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
