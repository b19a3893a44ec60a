"""hf_tp's host overhead per eager step against Transformers', on CPU (issue 20, "fallback speed").

Requests the decode loop does not serve (``generate(num_beams=4)``) run Transformers' generate on hf_tp's
parallel model. On a GPU that eager step is host-bound (a 1B model: ~15 ms a step, the GPU mostly idle), so what
hf_tp adds is Python and dispatch time per module. That shows on CPU too: a Llama with 16 layers (the 1B shape's
depth) but tiny widths (hidden 64, intermediate 128, 4 heads, 2 KV heads, vocab 1000) makes compute negligible,
and a step's time is host time. In one process, from the same folder:

  Transformers   transformers.AutoModelForCausalLM.from_pretrained (unsplit)
  hf_tp          hf_tp.assembly.load_parallel_model with a TP group of one (what benchmarks/loop_requests.py and
                 the GPU benchmarks load at tp 1; hf_tp.AutoModelForCausalLM.from_pretrained(tp_size=1) returns
                 plain Transformers), fp32

Reported in ms per step: ``forward`` (one decode step of 4 rows, called as generate calls it: the inputs were
checked once), and ``beams`` (generate(num_beams=4): (time for --tokens new - time for 1 new) / (--tokens - 1)).
``--fuse`` loads hf_tp with fused q/k/v and gate/up (TPConfig.fuse, the CUDA default; off on CPU by default).
``--cuda-paths`` also takes the other branches an eager CUDA step of a tp-1 model takes with the CUDA defaults
(``--fuse`` included): decode_gemm="triton" marked on the layers and decode_attention="triton" installed, with
``launch_context_pays`` answering as outside the loop on CUDA (False: cuBLAS and sdpa run, as the GPU fallback's).
That answer comes from a stand-in (CPU tensors are never CUDA), which makes the calls the CUDA answer makes
except ``torch.cuda.is_current_stream_capturing`` (not in a CPU build).

Figures: benchmarks/RESULTS.md (2026-12-04, eighth session).

Usage: python benchmarks/eager_overhead.py [--tokens 32] [--repeats 7] [--fuse] [--cuda-paths]
                                           [--profile hf_tp|transformers]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SHAPE = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=16, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=1,
             eos_token_id=None, pad_token_id=0)


def cuda_paths(model) -> None:
    """``model``'s layers and attention as a CUDA rank's with decode_gemm and decode_attention "triton", and
    ``launch_context_pays`` answering as it does for an eager call outside hf_tp's loop on CUDA (module doc)."""
    from hf_tp.kernels import decode_gemm
    from hf_tp.parallel import decode_attention, layers
    from hf_tp.parallel.decode_gemm import LM_HEAD
    from hf_tp.parallel.fused import SharedInputGroup

    def eager_cuda_answer(x):  # launch_context_pays's evaluation on CUDA, without the CUDA-only capture query
        return torch.compiler.is_compiling() or decode_gemm._LOOP_DEPTH > 0

    for module in (decode_gemm, layers, decode_attention):  # the name where each caller looks it up
        module.launch_context_pays = eager_cuda_answer
    kinds = (layers.ColumnParallelLinear, layers.RowParallelLinear) + ((layers.ParallelLMHead,) if LM_HEAD else ())
    for module in model.modules():
        if isinstance(module, kinds):
            module.decode_gemm = True
        if isinstance(getattr(module, "shared_input", None), SharedInputGroup):
            module.shared_input.decode_gemm = True
    decode_attention.register()
    from hf_tp.compat import set_attention_implementation

    set_attention_implementation(model.config.get_text_config(decoder=True), decode_attention.ATTENTION_NAME)


def load(folder: str, fuse: bool):
    from hf_tp.assembly import load_parallel_model
    from hf_tp.config import TPConfig
    from hf_tp.parallel.comm import TPGroup

    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tp = TPGroup(0, 1, torch.device("cpu"))
    parallel = load_parallel_model(folder, tp, dtype=torch.float32, progress=False,
                                   tp_config=TPConfig(fuse=True) if fuse else None)
    return reference, parallel


def forward_steps(model, ids: torch.Tensor, steps: int) -> float:
    """Seconds per decode step of ``model.forward`` on a DynamicCache after a prefill of ``ids``."""
    parallel = hasattr(model, "hf_tp")
    if parallel:  # as inside generate: the inputs were checked once, the steps skip the check
        model._hf_tp_in_generate = True
    try:
        with torch.no_grad():
            cache = transformers.DynamicCache(config=model.config)
            out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            length = ids.shape[1]
            began = time.perf_counter()
            for _ in range(steps):
                position = torch.full((ids.shape[0], 1), length, dtype=torch.long)
                out = model(input_ids=token, cache=cache, position_ids=position, use_cache=True,
                            logits_to_keep=1)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                length += 1
            return (time.perf_counter() - began) / steps
    finally:
        if parallel:
            model._hf_tp_in_generate = False


def beam_step(model, ids: torch.Tensor, tokens: int) -> float:
    """Seconds per new token of generate(num_beams=4), prefill and setup left out."""
    def seconds(new: int) -> float:
        began = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                           num_beams=4, do_sample=False, pad_token_id=0)
        return time.perf_counter() - began

    return (seconds(tokens) - seconds(1)) / (tokens - 1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fuse", action="store_true", help="hf_tp with TPConfig(fuse=True), the CUDA default")
    parser.add_argument("--cuda-paths", action="store_true", help="also the CUDA defaults' eager branches (doc)")
    parser.add_argument("--profile", choices=("hf_tp", "transformers"), help="cProfile one beam generate instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from conftest import save_tiny_model

    folder = str(save_tiny_model(Path(tempfile.mkdtemp(prefix="hf_tp_eager_")), transformers.LlamaConfig(**SHAPE),
                                 max_shard_size=None))
    reference, parallel = load(folder, args.fuse or args.cuda_paths)
    if args.cuda_paths:
        cuda_paths(parallel)
    ids = torch.randint(3, SHAPE["vocab_size"], (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    beams = ids.repeat(4, 1)
    models = {"Transformers": reference, "hf_tp": parallel}
    with torch.no_grad():  # same weights, same numerics: the beams' tokens agree
        kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=8, num_beams=4, do_sample=False, pad_token_id=0)
        same = torch.equal(reference.generate(ids, **kw), parallel.generate(ids, **kw))
    if args.profile:
        import cProfile
        import pstats

        model = models["hf_tp" if args.profile == "hf_tp" else "Transformers"]
        beam_step(model, ids, args.tokens)  # warm-up
        profiler = cProfile.Profile()
        profiler.enable()
        beam_step(model, ids, args.tokens)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(45)
        return 0
    results = {name: {"forward": [], "beams": []} for name in models}
    for name, model in models.items():  # warm-up
        forward_steps(model, beams, 4)
        beam_step(model, ids, 4)
    for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits both
        for name, model in models.items():
            results[name]["forward"].append(forward_steps(model, beams, args.tokens))
            results[name]["beams"].append(beam_step(model, ids, args.tokens))
    print(f"16 layers, hidden 64, fp32, CPU threads {args.threads}, fuse={args.fuse or args.cuda_paths}, "
          f"cuda paths={args.cuda_paths}, "
          f"{args.tokens} tokens, median of {args.repeats}; beam tokens equal: {same}")
    print(f"{'ms per step':28s} {'Transformers':>12s} {'hf_tp':>8s} {'ratio (T/hf_tp)':>16s}")
    for what, label in (("forward", "forward, 4 rows"), ("beams", "generate(num_beams=4)")):
        t, h = (statistics.median(results[n][what]) * 1e3 for n in ("Transformers", "hf_tp"))
        print(f"{label:28s} {t:12.3f} {h:8.3f} {t / h:16.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
