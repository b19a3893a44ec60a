"""How fast each rank reads the MoE experts of a checkpoint stored per expert (the layout Transformers'
save_pretrained writes): ``python benchmarks/moe_load_speed.py [--folder /tmp/hf_tp_moe_load] [--tp 1,2]
[--repeats 3] [--loads] [--before-src DIR] [--shape tiny-moe]``.

The checkpoint (written once): Qwen3-MoE with Qwen3-30B-A3B's layer shapes (hidden 2048, 32 query / 4 KV heads of
128, 64 experts of width 768) but 2 layers and a vocabulary of 32000, random bf16: 1.55 GB, 1.21 GB of it experts.
All timings are with the page cache warm (every file read once first).

1. Expert read, per rank of each tp size: every fused expert parameter (gate_up_proj, down_proj) of the rank read
   into a CPU tensor of the rank's (experts, out, in) shape, one parameter after another in one thread:
   - ``stacked``: the loader's read before the direct read (commit 81f4cbc, kept below as ``stacked_read``): per
     expert torch.cat of its pieces, then torch.stack of the experts; the loader then moved the result to the
     device (on CPU in the file's dtype: no copy);
   - ``direct``: ``hf_tp.loading.experts.read_experts``: the destination allocated once, each piece copied from
     its memory-mapped safetensors slice into its view of it.
   ``--repeats`` passes, the two ways alternating; GB/s = the rank's expert bytes / seconds, of the best pass
   and of the median one. Both results are checked equal.
2. ``--loads``: whole loads of the same folder: Transformers' ``from_pretrained`` (dtype bfloat16, one process),
   and hf_tp's loader per rank (``benchmarks/load_speed.py``: one process per rank, threads = default); with
   ``--before-src DIR`` (a checkout of the code before, e.g. ``git archive 81f4cbc | tar -x -C DIR``) that
   loader too, from DIR.
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPE = "bench-moe-load"


def write_checkpoint(folder: Path, shape: str = SHAPE) -> Path:
    from hf_tp.bench import shapes

    shapes.MOE_SHAPES[SHAPE] = ("qwen3_moe", dict(shapes._QWEN3_MOE_30B, num_experts=64, num_hidden_layers=2,
                                                   vocab_size=32000))
    return shapes.write_random_checkpoint(shape, folder, shard_bytes=2**30)


def warm(folder: Path) -> None:
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as fh:
            while fh.read(1 << 26):
                pass


def stacked_read(index, keys, dim, pieces, dtype=None) -> torch.Tensor:
    """hf_tp.loading.experts.read_experts as of commit 81f4cbc (bf16 path; FP8 left out): the 'before'."""
    def read(key, lead_dim=None, start=0, stop=None):
        view = index.handle(key).get_slice(key)
        return view[:] if lead_dim is None else view[(*(slice(None),) * lead_dim, slice(start, stop))]

    experts = []
    for part_keys in keys:
        if dim is None:
            experts.append(torch.cat([read(k) for k in part_keys], dim=0))
            continue
        part_len = index.handle(part_keys[0]).get_slice(part_keys[0]).get_shape()[dim - 1]
        chunks = []
        for start, stop in pieces:
            while start < stop:
                part, offset = divmod(start, part_len)
                end = min(stop, (part + 1) * part_len)
                chunks.append(read(part_keys[part], dim - 1, offset, offset + end - start))
                start = end
        experts.append(torch.cat(chunks, dim=dim - 1))
    return torch.stack(experts)


def expert_reads(folder: Path, tp_sizes: list[int], repeats: int) -> None:
    import transformers

    from hf_tp.loading.checkpoint import CheckpointIndex
    from hf_tp.loading.experts import expert_part_keys, read_experts
    from hf_tp.parallelize import build_skeleton
    from hf_tp.policies import get_policy
    from hf_tp.policies.plan import build_plan

    config = transformers.AutoConfig.from_pretrained(folder)
    skeleton = build_skeleton(config, torch.bfloat16)
    index = CheckpointIndex(folder)
    experts = [(n, p, expert_part_keys(n, index)) for n, p in skeleton.named_parameters()]
    experts = [(n, p, k) for n, p, k in experts if k]
    for tp in tp_sizes:
        plan = build_plan(skeleton, config, get_policy(config), tp)
        for rank in range(tp):
            jobs = []
            for name, param, keys in experts:
                shard = plan.param_shard(name)
                shape = list(param.shape)
                shape[shard.dim] = shard.local_size[rank]
                jobs.append((keys, shard.dim, shard.pieces[rank], shape))
            nbytes = sum(torch.Size(shape).numel() * 2 for *_, shape in jobs)
            times = {"stacked": [], "direct": []}
            for _ in range(repeats):
                for way in ("stacked", "direct"):
                    start = time.perf_counter()
                    for keys, dim, pieces, shape in jobs:
                        if way == "stacked":
                            out = stacked_read(index, keys, dim, pieces).contiguous().to(dtype=torch.bfloat16)
                        else:
                            out = torch.empty(shape, dtype=torch.bfloat16)
                            read_experts(index, keys, dim, pieces, out)
                        del out
                    times[way].append(time.perf_counter() - start)
            keys, dim, pieces, shape = jobs[0]  # the two reads agree (checked on the first parameter)
            direct = torch.empty(shape, dtype=torch.bfloat16)
            read_experts(index, keys, dim, pieces, direct)
            assert torch.equal(direct, stacked_read(index, keys, dim, pieces))
            print(json.dumps({"what": "expert read", "tp": tp, "rank": rank, "gb": round(nbytes / 1e9, 3),
                              **{f"{w}_best_s": round(min(t), 3) for w, t in times.items()},
                              **{f"{w}_gb_per_s": round(nbytes / 1e9 / min(t), 2) for w, t in times.items()},
                              **{f"{w}_median_gb_per_s": round(nbytes / 1e9 / statistics.median(t), 2)
                                 for w, t in times.items()}}), flush=True)


def transformers_load(folder: Path, repeats: int) -> None:
    code = ("import time, torch, transformers; t = time.perf_counter(); "
            f"m = transformers.AutoModelForCausalLM.from_pretrained({str(folder)!r}, dtype=torch.bfloat16); "
            "print('TIME', time.perf_counter() - t)")
    # Imports outside the timed part: the child imports transformers first, then times from_pretrained.
    times = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        times.append(float(out.split("TIME")[-1]))
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    print(json.dumps({"what": "transformers from_pretrained", "best_s": round(min(times), 3),
                      "gb": round(size / 1e9, 3), "gb_per_s": round(size / 1e9 / min(times), 2),
                      "all_s": [round(t, 3) for t in times]}), flush=True)


def hf_tp_load(folder: Path, tp: int, src: Path, label: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, str(src / "benchmarks" / "load_speed.py"), str(folder), "--tp", str(tp),
                          "--threads", str(min(4, os.cpu_count() or 1))], capture_output=True, text=True, env=env).stdout
    for line in out.splitlines():
        if line.startswith("LOADSPEED"):
            print(json.dumps({"what": f"hf_tp load ({label})", **json.loads(line.split(" ", 1)[1])}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/hf_tp_moe_load")
    ap.add_argument("--shape", default=SHAPE, help="another MoE shape of hf_tp.bench.shapes (tiny-moe: a smoke test)")
    ap.add_argument("--tp", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loads", action="store_true")
    ap.add_argument("--before-src", default=None)
    args = ap.parse_args()
    folder = write_checkpoint(Path(args.folder), args.shape)
    warm(folder)
    tp_sizes = [int(t) for t in args.tp.split(",")]
    print(json.dumps({"what": "setup", "threads": torch.get_num_threads(), "cores": os.cpu_count(),
                      "torch": torch.__version__}), flush=True)
    expert_reads(folder, tp_sizes, args.repeats)
    if args.loads:
        transformers_load(folder, args.repeats)
        for tp in tp_sizes:
            hf_tp_load(folder, tp, ROOT, "this checkout")
            if args.before_src:
                hf_tp_load(folder, tp, Path(args.before_src), f"before: {args.before_src}")


if __name__ == "__main__":
    main()
