"""Which all-reduce is fastest inside the decode graph, by message size.

For each size: an Inductor-compiled function ``all_reduce(2 * x)`` (what a row-parallel layer traces to),
captured 64 times in one CUDA graph and replayed; microseconds per all-reduce, and the result checked
against world_size * 2 * x. Variants:
  nccl      the functional all-reduce as Inductor lowers it by default (an NCCL kernel)
  one_shot  the same source, compiled with symmetric memory enabled for the group and Inductor's
            ``_collective.auto_select``: lowered to ``symm_mem.one_shot_all_reduce`` (each rank reads
            every peer's buffer over NVLink; no NCCL). NVLink multicast stays off.
Also the eager ``dist.all_reduce`` outside graphs, for reference.

Usage: torchrun --nproc-per-node N benchmarks/allreduce_probe.py [--json OUT]  (N = 1 runs on one GPU:
the mechanics, not the speed). One JSON line per (variant, size) on rank 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

for _k, _v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed._functional_collectives as funcol  # noqa: E402

SIZES_KB = (8, 16, 32, 64, 128, 256, 512)
REPEAT = 64


def timed_graph(fn, x, device) -> tuple[float, torch.Tensor]:
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            out = fn(x)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPEAT):
            out = fn(x)
    graph.replay()
    torch.cuda.synchronize(device)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / (10 * REPEAT) * 1e6, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.group.WORLD
    rows = []

    def step(x):
        return funcol.all_reduce(x * 2, "sum", group)

    one_shot_ok, why = True, ""
    try:
        from torch.distributed._symmetric_memory import enable_symm_mem_for_group

        enable_symm_mem_for_group(group.group_name)
    except Exception as exc:  # noqa: BLE001 - reported
        one_shot_ok, why = False, f"{type(exc).__name__}: {exc}"
    variants = {"nccl": {}}
    if one_shot_ok:
        variants["one_shot"] = {"_collective.auto_select": True, "_collective.one_shot_all_reduce_threshold_bytes": 1 << 30}
    elif rank == 0:
        print("one_shot unavailable:", why, flush=True)
    for kb in SIZES_KB:
        x = torch.randn(kb * 1024 // 4, device=device, generator=torch.Generator(device).manual_seed(rank))
        want = x.clone()
        dist.all_reduce(want)
        want *= 2
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(50):
            dist.all_reduce(x.clone())
        torch.cuda.synchronize(device)
        eager_us = (time.perf_counter() - start) / 50 * 1e6
        row = {"kb": kb, "world": world, "eager_nccl_us": round(eager_us, 1)}
        for name, options in variants.items():
            torch._dynamo.reset()
            random.random()  # a fresh symmetric-memory buffer id per compile (see hf_tp's decode loop)
            try:
                compiled = torch.compile(step, fullgraph=True, options=options)
                if kb == SIZES_KB[0]:  # what Inductor actually emitted for this variant
                    from torch._inductor.utils import run_and_get_code

                    _, code = run_and_get_code(compiled, x)
                    row[f"{name}_lowered_to"] = "symm_mem.one_shot" if "one_shot_all_reduce" in "".join(code) else "nccl"
                us, out = timed_graph(compiled, x, device)
                row[f"{name}_us"] = round(us, 2)
                row[f"{name}_max_err"] = float((out - want).abs().max())
            except Exception as exc:  # noqa: BLE001 - reported, the other variant still runs
                row[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
        if rank == 0:
            print("ALLREDUCE " + json.dumps(row), flush=True)
    # What a row-parallel layer really feeds the all-reduce: a GEMM's fp32 output (torch.mm with
    # out_dtype, hf_tp's fp32 reduction of bf16 partial sums). Inductor can only use the one-shot
    # all-reduce if it can allocate that output in symmetric memory; report what it emitted.
    if "one_shot" in variants:
        a = torch.randn(1, 2048, device=device, dtype=torch.bfloat16)
        w = torch.randn(2048, 4096, device=device, dtype=torch.bfloat16)
        want = torch.mm(a, w, out_dtype=torch.float32)
        dist.all_reduce(want)
        from torch._inductor.utils import run_and_get_code

        for name, options in variants.items():
            torch._dynamo.reset()
            random.random()
            compiled = torch.compile(lambda a: funcol.all_reduce(torch.mm(a, w, out_dtype=torch.float32), "sum", group),
                                     fullgraph=True, options=options)
            row = {"source": "mm_out_fp32_16kb", "variant": name}
            try:
                out, code = run_and_get_code(compiled, a)
                row["lowered_to"] = "symm_mem.one_shot" if "one_shot_all_reduce" in "".join(code) else "nccl"
                row["us"], out = timed_graph(compiled, a, device)
                row["us"] = round(row["us"], 2)
                row["max_err"] = float((out - want).abs().max())
            except Exception as exc:  # noqa: BLE001 - reported
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            rows.append(row)
            if rank == 0:
                print("ALLREDUCE " + json.dumps(row), flush=True)
    if rank == 0 and args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(device), "rows": rows}, fh, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
