"""``hf-tp bench``: hf_tp and the Transformers baselines side by side, each in its own processes.

Rows: hf_tp (eager and fast path, tp 1 and N), Transformers on one device (eager; static cache +
compile), Transformers' native TP (``tp_plan="auto"`` under torchrun; eager and compile).
``--smoke`` runs a tiny model on CPU in well under two minutes, so CI exercises the harness.

``--simulate-tp 2,4,8`` measures instead, on one device, hf_tp at tp 1 and, for each N, the widest rank of the
real tp-N split alone with its collectives replaced by local stand-ins ("rank of tp N, compute only", with the
bandwidth floor of that rank's bytes); ``--profile`` adds each row's kernel time per token by kind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from ..config import DEFAULT_WORKER_ENV


def dump_stacks_periodically() -> None:
    """Device runs: with HF_TP_DUMP_AFTER=SECONDS set, every thread's Python stack is printed to stderr every that
    many seconds, so a rank stuck in a collective shows where it waits before the call's timeout kills it
    (faulthandler's timer runs outside the GIL). The process is not stopped: a slow run that is not stuck goes on."""
    if os.environ.get("HF_TP_DUMP_AFTER"):
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["HF_TP_DUMP_AFTER"]), repeat=True)


def plan_runs(tp_size: int, device: str, smoke: bool, systems: list[str],
              modes: list[str] | None = None) -> list[tuple[str, str, int]]:
    """(system, mode, tp_size) for every row group of the table."""
    modes = ["eager"] if device == "cpu" else (modes or ["eager", "compile"])
    runs = []
    for system in systems:
        sizes = [1, tp_size] if system == "hf_tp" else ([1] if system == "transformers" else [tp_size])
        runs += [(system, mode, size) for size in dict.fromkeys(sizes) for mode in modes]
    return runs


def plan_simulated_runs(sizes: list[int], device: str, modes: list[str] | None = None) -> list[tuple[str, str, int, int]]:
    """(system, mode, processes, simulated tp) of a --simulate-tp table: hf_tp at tp 1, then one rank of each
    tp N, every row in one process on one device."""
    modes = ["eager"] if device == "cpu" else [m for m in (modes or ["compile"]) if m in ("eager", "compile")]
    return [("hf_tp", mode, 1, n) for n in [0] + [n for n in sizes if n > 1] for mode in modes]


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(n < 2 for n in sizes):
        raise ValueError(f"--simulate-tp {text!r}: give tensor-parallel sizes above 1, comma-separated (e.g. 2,4,8).")
    return sizes


def run_one(system, mode, tp, args, checkpoint, out_file, simulate: int = 0) -> str | None:
    """Run one system; returns an error text (last lines of its output) if it failed."""
    module = ["-m", "hf_tp.bench.run_system", "--system", system, "--mode", mode, "--model", str(checkpoint),
              "--tp-size", str(tp), "--device", args.device, "--dtype", args.dtype, "--batches", args.batches,
              "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens), "--out", str(out_file)]
    if simulate:
        module += ["--simulate-tp", str(simulate)]
    if getattr(args, "profile", False):
        module += ["--profile", str(min(args.new_tokens, 64))]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={tp}"]
                if tp > 1 else [sys.executable])
    # torchrun takes a module as "-m NAME" too; its own flags must come first.
    cmd = launcher + module
    env = {**os.environ, **DEFAULT_WORKER_ENV}  # NVLink multicast off in every process we start (shared hosts)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    # Own process group, so a timeout can stop torchrun's ranks too, not only the launcher.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"timed out after {args.timeout} s"
    if proc.returncode != 0:
        return failure_line(output) or f"exit {proc.returncode}"
    return None


_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b.*")


def failure_line(output: str) -> str | None:
    """The line that says why a run failed: the last Python exception a rank raised (torchrun's own
    ChildFailedError summary, which ends its output, says only that a rank failed), else the last line."""
    # torchrun may prefix a rank's lines with "[rank0]:"
    lines = [re.sub(r"^\[rank\d+\]:\s*", "", line.strip()) for line in output.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line) and "ChildFailedError" not in line:
            return line[:300]
    return lines[-1][:300] if lines else None


TABLE_HEAD = f"{'system':<16}{'mode':<9}{'tp':>3}{'batch':>6}{'decode tok/s':>14}{'ttft s':>9}{'load s':>8}{'peak GiB':>10}"


def format_row(r: dict) -> str:
    if "error" in r:
        return f"{r['system']:<16}{r['mode']:<9}{r['tp_size']:>3}  FAILED: {r['error']}"
    line = (f"{r['system']:<16}{r['mode']:<9}{r['tp_size']:>3}{r['batch']:>6}{r['decode_tok_s']:>14.1f}"
            f"{r['ttft_s']:>9.3f}{r['load_s']:>8.2f}{r['peak_bytes_per_gpu'] / 2**30:>10.2f}")
    if "decode_tok_s_gpu" in r:  # the decode steps alone, between CUDA events (no prefill drift in it)
        line += f"  GPU-timed decode {r['decode_tok_s_gpu']:.1f} tok/s"
    if "simulated_tp" in r:  # a simulated rank: say so on the row itself, with its own floor
        line += (f"  {r['label']} (rank {r['simulated_rank']}, {r['rank_bytes'] / 1e9:.2f} GB; floor "
                 f"{r['bandwidth_floor_tok_s']:.0f} tok/s, {r['floor_fraction']:.0%} of it)")
    return line


def scaling_lines(rows: list[dict]) -> list[str]:
    """Scaling efficiency of hf_tp per mode and batch: tok/s(tp N) / (N x tok/s(tp 1)), same code.
    (Simulated ranks are not tp-N runs: no scaling line for them.)"""
    by_key = {(r["mode"], r["tp_size"], r["batch"]): r["decode_tok_s"] for r in rows
              if r.get("system") == "hf_tp" and "error" not in r and "simulated_tp" not in r}
    lines = []
    for (mode, tp, batch), tok_s in sorted(by_key.items()):
        single = by_key.get((mode, 1, batch))
        if tp > 1 and single:
            lines.append(f"hf_tp {mode} batch {batch}: tp {tp} / tp 1 = {tok_s / single:.2f}x, "
                         f"scaling efficiency {tok_s / (tp * single):.0%}")
    return lines


def floor_lines(rows: list[dict]) -> list[str]:
    """Each GPU row's decode rate as a fraction of the bandwidth floor: (1/tp of the weights) read once per
    step at the copy bandwidth measured on the same device; for a mixture of experts only the experts the
    step's tokens chose (measured), which the line says. Not for CPU rows (the smoke run): there the ranks
    share the host's cores and memory, and a fraction of a copy rate tells a reader nothing (the figures
    stay in the JSON rows)."""
    lines = []
    for r in rows:
        if "error" in r or "bandwidth_floor_tok_s" not in r or r.get("device") == "cpu":
            continue
        moe = (f"; MoE: counts the active experts, {r['moe_distinct_experts_per_step']:.1f} distinct of "
               f"{r['moe_experts']} per layer per step (measured), {r['bytes_per_step_per_gpu'] / 1e9:.2f} GB per GPU per step"
               if "moe_experts" in r else "")
        who = r.get("label") or f"tp {r['tp_size']}"
        lines.append(f"{r['system']} {r['mode']} {who} batch {r['batch']}: {r['floor_fraction']:.0%} of the "
                     f"bandwidth floor ({r['bandwidth_floor_tok_s']:.0f} tok/s at {r['copy_bandwidth_bytes_s'] / 1e12:.2f} "
                     f"TB/s measured copy bandwidth per device{moe})")
    return lines


def load_lines(rows: list[dict]) -> list[str]:
    """Per-rank read figures of each hf_tp load (one per system run, not per batch)."""
    lines, seen = [], set()
    for r in rows:
        key = (r.get("mode"), r.get("tp_size"))
        if r.get("system") != "hf_tp" or "read_bytes_per_rank" not in r or key in seen:
            continue
        seen.add(key)
        per_rank = ", ".join(f"rank {i} {nbytes / 1e9:.2f} GB in {s:.2f} s ({rate:.1f} GB/s)" for i, (nbytes, s, rate) in
                             enumerate(zip(r["read_bytes_per_rank"], r["read_seconds_per_rank"], r["read_gb_per_s_per_rank"])))
        lines.append(f"hf_tp {r['mode']} tp {r['tp_size']} weights read: {per_rank}; from_pretrained {r['load_s']:.2f} s")
        for i, phases in enumerate(r.get("load_phases_per_rank") or []):
            lines.append(f"  rank {i} load phases: " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()))
        for i, staging in enumerate(r.get("load_staging_per_rank") or []):
            if staging:  # CUDA only
                lines.append(f"  rank {i} staging (thread seconds): " + ", ".join(f"{k} {v}" for k, v in staging.items()))
    return lines


def check_device(device: str, processes: int) -> None:
    """A bench on a device this host lacks fails here, in one line, before a checkpoint of many GB is written."""
    import torch

    if device.startswith("cuda"):
        have = torch.cuda.device_count()
        if have == 0:
            raise ValueError("--device is cuda (the default) but no CUDA device is visible: run "
                             "`hf-tp bench --smoke` (a tiny model on CPU) or pass --device cpu --shape tiny")
        if processes > have:
            raise ValueError(f"--tp-size {processes} needs {processes} CUDA devices but {have} "
                             f"{'is' if have == 1 else 'are'} visible; lower --tp-size, or use --simulate-tp N to "
                             f"measure one rank of tp N on one device")
    elif device != "cpu":
        raise ValueError(f"--device must be cuda or cpu, got {device!r}")


def run_bench(args) -> int:
    from .shapes import write_random_checkpoint

    if args.smoke:
        args.device, args.dtype, args.shape = "cpu", "float32", "tiny"
        args.batches, args.prompt_len, args.new_tokens = "1,2", 16, 8
        args.tp_size = 2
    systems = args.systems.split(",")
    simulate = parse_sizes(args.simulate_tp) if args.simulate_tp else None
    if simulate and args.smoke:
        args.tp_size = max(simulate)
    check_device(args.device, 1 if simulate else args.tp_size)  # before any checkpoint is written
    if args.model:
        checkpoint = Path(args.model)
    else:
        root = Path(args.checkpoint_dir or Path(tempfile.gettempdir()) / "hf_tp_bench")
        suffix = "" if args.weights == "bf16" else f"-{args.weights}"
        checkpoint = write_random_checkpoint(args.shape, root / f"{args.shape}-{args.dtype}{suffix}",
                                             dtype=getattr(__import__("torch"), args.dtype), weights=args.weights)
    rows: list[dict] = []
    # Each row is printed (and the JSON rewritten) as soon as it is measured: a system that hangs or
    # fails later cannot take the rows already measured with it. The table is printed once, row by row.
    print("rows as measured:\n" + TABLE_HEAD + "\n" + "-" * len(TABLE_HEAD), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "rows.jsonl"
        if simulate:
            runs = plan_simulated_runs(simulate, args.device, args.modes.split(","))
        else:
            runs = [run + (0,) for run in plan_runs(args.tp_size, args.device, args.smoke, systems, args.modes.split(","))]
        for system, mode, tp, sim in runs:
            error = run_one(system, mode, tp, args, checkpoint, out_file, simulate=sim)
            measured = [json.loads(line) for line in out_file.read_text().splitlines()] if out_file.exists() else []
            new = measured[sum("error" not in r for r in rows):]
            if error:
                new.append({"system": system, "mode": mode, "tp_size": sim or tp, "error": error})
            rows += new
            for r in new:
                print(format_row(r), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    print()
    if any(r.get("device") == "cpu" for r in rows):
        print("CPU rows check the harness; they are not speed figures (the ranks share the host's cores). Their "
              "'peak GiB' is each process's peak resident memory, the interpreter and libraries included.")
    from .profile import profile_lines

    for line in scaling_lines(rows) + floor_lines(rows) + load_lines(rows):
        print(line)
    for r in rows:
        for line in profile_lines(r):
            print(line)
    return 1 if args.smoke and any("error" in r and r["system"] == "hf_tp" for r in rows) else 0


def add_arguments(parser) -> None:
    parser.add_argument("--shape", default="llama3-8b", help="named random-weight shape (hf_tp.bench.shapes: llama3-1b/8b, llama2-13b/70b, MoE: qwen3-moe-mini, "
                             "mixtral-mini, qwen3-30b-a3b, mixtral-8x7b)")
    parser.add_argument("--model", help="a real checkpoint folder instead of a random shape")
    parser.add_argument("--weights", default="bf16", choices=("bf16", "fp8-block", "fp8-channel"),
                        help="how the random checkpoint stores the decoder layers' linear weights: in --dtype, or FP8 "
                             "with 128 x 128 block scales (Transformers/DeepSeek format) or per-channel scales "
                             "(compressed-tensors); see hf_tp.bench.shapes.quantize_fp8")
    parser.add_argument("--tp-size", type=int, default=2, help="tensor-parallel size of the tp > 1 rows (tp 1 "
                                                               "is measured too)")
    parser.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per row")
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--dtype", default="bfloat16", help="the random checkpoint's and the run's dtype")
    parser.add_argument("--systems", default="hf_tp,transformers,transformers_tp",
                        help="which to measure: hf_tp, transformers (one device), transformers_tp (its tp_plan)")
    parser.add_argument("--modes", default="eager,compile",
                        help="eager and/or compile (hf_tp: its fast path; Transformers: static cache + compile)")
    parser.add_argument("--checkpoint-dir", help="where random checkpoints are written (default: $TMPDIR/hf_tp_bench)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per system run")
    parser.add_argument("--json", help="write the rows as a JSON list here")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, for CI")
    parser.add_argument("--simulate-tp", metavar="N,N,...",
                        help="one device: hf_tp tp 1, then the widest rank of each tp N alone, collectives replaced by "
                             "local stand-ins of the same shapes (rows 'rank of tp N, compute only')")
    parser.add_argument("--profile", action="store_true",
                        help="print each row's kernel time per decode token (GEMM, attention, norm+pointwise, "
                             "collectives, gaps) under the table")
