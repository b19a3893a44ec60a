"""One benchmarked system in its own process(es): ``python -m hf_tp.bench.run_system --system S ...``.

Started by ``hf-tp bench``; under torchrun for the tensor-parallel systems. Rank 0 appends one
JSON row per batch size to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loader_figures(model, tp_size: int) -> dict:
    """hf_tp's own reader statistics of every rank (rank 0 writes the row): bytes read, seconds, GB/s."""
    stats = getattr(model, "hf_tp_load_stats", None)
    if stats is None:
        return {}
    mine = (stats.bytes_read, round(stats.seconds, 3), round(stats.gb_per_s, 2), stats.phases, stats.staging)
    ranks = [mine]
    if tp_size > 1:
        import torch.distributed as dist

        ranks = [None] * tp_size
        dist.all_gather_object(ranks, mine)
    return {"read_bytes_per_rank": [r[0] for r in ranks], "read_seconds_per_rank": [r[1] for r in ranks],
            "read_gb_per_s_per_rank": [r[2] for r in ranks],
            # where each rank's load went (plan, build, read, total); the process group start comes before
            "load_phases_per_rank": [r[3] for r in ranks],
            # CUDA staging: the readers' seconds waiting for a buffer, copying into it, issuing DMAs (LoadStats.staging)
            "load_staging_per_rank": [r[4] for r in ranks]}


def _weight_bytes(folder: str) -> int:
    """Bytes of the checkpoint's tensors: the index's total_size, else the safetensors files' sizes."""
    from pathlib import Path

    index = Path(folder) / "model.safetensors.index.json"
    if index.is_file():
        total = json.loads(index.read_text()).get("metadata", {}).get("total_size")
        if total:
            return int(total)
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def _copy_bandwidth(device) -> float:
    """Bytes per second a large device-to-device copy moves on this rank's device (read + write), the
    bandwidth a decode step's weight reads can at best reach. On CPU, host memory copy bandwidth."""
    numel = (1 << 28) if device.type == "cuda" else (1 << 25)  # 1 GiB of fp32 on GPU, 128 MiB on CPU
    src = torch.ones(numel, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    repeats = 10
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    _sync(device)
    seconds = time.perf_counter() - start
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return 2 * numel * 4 * repeats / seconds


def _load(args, device):
    """(model, load seconds). Every system loads from the same local checkpoint folder."""
    import transformers

    from ..parallelize import build_skeleton

    dtype = getattr(torch, args.dtype)
    # Module imports are paid once per process, whoever loads the model: pay them before the timer,
    # the same for every system, so "load s" is the loading itself.
    build_skeleton(transformers.AutoConfig.from_pretrained(args.model), dtype)
    _sync(device)
    start = time.perf_counter()
    if args.system == "hf_tp" and args.simulate_tp:
        from .simulate import load_simulated_rank

        model, rank, nbytes = load_simulated_rank(args.model, args.simulate_tp, device, dtype,
                                                  tp_config(args, device, args.simulate_tp))
        model.hf_tp_simulated = (rank, nbytes)
    elif args.system == "hf_tp":
        from ..assembly import load_parallel_model
        from ..launch import init_spmd_group
        from ..parallel.comm import TPGroup

        group_start = time.perf_counter()
        if args.tp_size == 1:  # the same parallel layers and decode path, with no collectives
            tp = TPGroup(tp_rank=0, tp_size=1, device=device)
        else:
            tp = init_spmd_group(args.tp_size, device)
        group_s = time.perf_counter() - group_start
        model = load_parallel_model(args.model, tp, dtype=dtype, progress=False, tp_config=tp_config(args, device))
        model.hf_tp_load_stats.phases["group_init_s"] = round(group_s, 4)
    elif args.system == "transformers":
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, device_map=str(device))
    elif args.system == "transformers_tp":
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, tp_plan="auto")
    else:
        raise ValueError(f"unknown system {args.system!r}")
    _sync(device)
    return model.eval(), time.perf_counter() - start


def tp_config(args, device, tp_size=None):
    """hf_tp's resolved TPConfig for this row: eager rows measure the plain path, compile rows force the
    decode loop; the other options are the defaults (with their documented environment overrides)."""
    import dataclasses

    from ..config import TPConfig

    config = TPConfig().resolve(device.type, tp_size or args.tp_size)
    return dataclasses.replace(config, fast_decode=args.mode != "eager")


def _gemv_device_table(device) -> str | None:
    """The gemv_table.DEVICE_TABLES entries the decode GEMMs took on this GPU ("" for TABLE's own); None on CPU."""
    if device.type != "cuda":
        return None
    from hf_tp.kernels.gemv_triton import use_device_table

    return use_device_table(device)


def _generate_seconds(model, ids, new_tokens, compiled, device, keep=None) -> float:
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    if compiled and not hasattr(model, "hf_tp"):
        kwargs["cache_implementation"] = "static"  # Transformers' own static cache + automatic compile
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    _sync(device)
    seconds = time.perf_counter() - start
    if keep is not None:
        keep.append(out)
    return seconds


def _decode_timings(model, device) -> list | None:
    """Ask hf_tp's decode loop to time its decode steps with CUDA events (a fresh list per row), or None."""
    decoder = getattr(model, "_hf_tp_static_decoder", None)
    if device.type != "cuda" or decoder is None:
        return None
    decoder.decode_timings = []
    return decoder.decode_timings


def _gpu_decode_fields(timings: list | None, batch: int) -> dict:
    """The decode rate between CUDA events around the decode steps alone (the runs' median, and each run slowest
    first). ``decode_tok_s`` subtracts a prefill-only generate's wall time from a full one's; the eager prefill's host
    time drifts by tens of ms between calls, which on a 128-token decode moves that figure by several percent. The
    events leave the prefill out, and count any time the GPU waits for the host between steps."""
    if not timings:
        return {}
    rates = sorted(batch * steps / (start.elapsed_time(end) / 1e3) for start, end, steps in timings if steps > 0)
    if not rates:
        return {}
    return {"decode_tok_s_gpu": round(rates[len(rates) // 2], 2), "decode_tok_s_gpu_runs": [round(r, 2) for r in rates]}


def _prefill_ms(model, ids, device) -> float:
    """One forward of the prompt batch (what a prefill computes: every layer and the LM head, no generation), the
    median of three, in ms: on CUDA the time between CUDA events around it (so time to first token without
    generate()'s host work; host time inside the forward counts where the GPU waits for it), elsewhere wall."""
    times = []
    for _ in range(3):
        _sync(device)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if device.type == "cuda" else None
        start = time.perf_counter()
        if events:
            events[0].record()
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        if events:
            events[1].record()
            events[1].synchronize()
            times.append(events[0].elapsed_time(events[1]))
        else:
            times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[1]


def _step_bytes(model, bytes_per_gpu: float, sequences, prompt_len: int) -> tuple[float, dict]:
    """Bytes one decode step reads per GPU: all of this GPU's weights for a dense model; for a mixture of
    experts the non-expert weights plus the distinct experts the batch chose, measured (bench/moe_floor.py)."""
    from .moe_floor import distinct_experts, expert_modules, moe_step_bytes

    if not expert_modules(model):
        return bytes_per_gpu, {}
    return moe_step_bytes(model, bytes_per_gpu, distinct_experts(model, sequences, prompt_len))


def main() -> int:
    from . import dump_stacks_periodically

    dump_stacks_periodically()
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", required=True)
    parser.add_argument("--mode", default="eager", help="eager | compile (static cache + torch.compile)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--tp-size", type=int, default=1)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", required=True)
    parser.add_argument("--simulate-tp", type=int, default=0,
                        help="N > 1: the widest rank of a tp-N split alone, collectives replaced by local stand-ins")
    parser.add_argument("--profile", type=int, default=0,
                        help="also profile a generate of this many tokens at the first batch size (kernel breakdown)")
    args = parser.parse_args()
    if args.simulate_tp and (args.system != "hf_tp" or args.tp_size != 1):
        parser.error("--simulate-tp runs one hf_tp process: use --system hf_tp --tp-size 1")
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    model, load_s = _load(args, device)
    loader = _loader_figures(model, args.tp_size)
    # The bandwidth floor of a decode step: every GPU reads its 1/tp of the weights once per step (a
    # mixture of experts: only the experts the step's tokens chose, see _step_bytes).
    bandwidth = _copy_bandwidth(device)
    simulated = getattr(model, "hf_tp_simulated", None)
    # A simulated rank's floor is its own bytes (the widest rank's share, uneven heads and vocab padding in).
    bytes_per_gpu = simulated[1] if simulated else _weight_bytes(args.model) / args.tp_size
    vocab = model.config.vocab_size
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        ids = torch.randint(3, vocab, (batch, args.prompt_len), generator=torch.Generator().manual_seed(batch)).to(device)
        compiled = args.mode == "compile"
        # Warm-up at full length: compilation and CUDA-graph capture stay out of the timings.
        _generate_seconds(model, ids, args.new_tokens, compiled, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # Median of three of each; the decode rate is the difference: N tokens minus the prefill-only run.
        first = sorted(_generate_seconds(model, ids, 1, compiled, device) for _ in range(3))[1]
        outputs = []
        timings = _decode_timings(model, device)
        fulls = sorted(_generate_seconds(model, ids, args.new_tokens, compiled, device, outputs) for _ in range(3))
        full = fulls[1]
        decode_tok_s = batch * (args.new_tokens - 1) / max(full - first, 1e-9)
        # each of the three runs' rate (slowest first), so that a reader sees the row's spread beside its median
        decode_runs = [round(batch * (args.new_tokens - 1) / max(f - first, 1e-9), 2) for f in reversed(fulls)]
        gpu_fields = _gpu_decode_fields(timings, batch)
        if timings is not None:
            model._hf_tp_static_decoder.decode_timings = None  # the three runs above only
        prefill_ms = _prefill_ms(model, ids, device)
        step_bytes, moe_fields = _step_bytes(model, bytes_per_gpu, outputs[-1], args.prompt_len)
        floor_tok_s = batch * bandwidth / step_bytes
        peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        if args.tp_size > 1:  # the worst rank's peak
            import torch.distributed as dist

            t = torch.tensor([peak], dtype=torch.int64, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            peak = int(t.item())
        extra = {}
        if simulated:
            extra = {"simulated_tp": args.simulate_tp, "simulated_rank": simulated[0], "rank_bytes": simulated[1],
                     "label": f"rank of tp {args.simulate_tp}, compute only"}
        if args.profile and not rows:
            from .profile import profile_decode

            wall = (batch / gpu_fields["decode_tok_s_gpu"] if gpu_fields
                    else (full - first) / (args.new_tokens - 1))
            extra["profile"] = profile_decode(
                lambda n: _generate_seconds(model, ids, n, compiled, device), args.profile, wall, top=24)
        rows.append({"system": args.system, "mode": args.mode,
                     "tp_size": args.simulate_tp or args.tp_size, "batch": batch, **extra,
                     "decode_tok_s": round(decode_tok_s, 2), "decode_tok_s_runs": decode_runs, **gpu_fields, "ttft_s": round(first, 4), "prefill_ms": round(prefill_ms, 3), "load_s": round(load_s, 3),
                     "peak_bytes_per_gpu": peak, **loader, "copy_bandwidth_bytes_s": round(bandwidth),
                     "bandwidth_floor_tok_s": round(floor_tok_s, 1), "floor_fraction": round(decode_tok_s / floor_tok_s, 4), **moe_fields, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     # hf_tp's resolved options (None for the Transformers baselines): a row says what produced it
                     "tp_config": model.hf_tp_config.to_dict() if hasattr(model, "hf_tp_config") else None,
                     "gemv_device_table": _gemv_device_table(device) if hasattr(model, "hf_tp_config") else None})
    if int(os.environ.get("RANK", "0")) == 0:
        with open(args.out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    if args.tp_size > 1:
        from hf_tp.parallel.teardown import shutdown_group

        shutdown_group()  # also bounds Transformers' own compiled TP, whose graphs hf_tp cannot release
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
