"""Load time of each rank's shard: ``python benchmarks/load_speed.py FOLDER [--tp N] [--threads 4,8]
[--chunk-mb 32] [--buffers 6] [--staging pinned,pageable] [--switch-interval 0.005,0.0002]`` (comma lists: every combination is run).

Runs hf_tp's loader as it runs inside ``from_pretrained``: N processes, one per tp rank, joined by
a gloo group (only the loader's error agreement uses it), rank r on cuda:(r mod GPUs), so on a
one-GPU machine both ranks of tp 2 load onto the same GPU at once (they then share one PCIe link
and the host's memory bandwidth: a pessimistic stand-in for two GPUs). Every configuration runs in
fresh processes; a first, unreported run warms the page cache. Prints one JSON line per rank.
``--probe`` instead measures the parts: pinned allocation, page cache -> pinned copies per thread
count, pinned -> GPU copies.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch


def rank_main(folder: str, rank: int, size: int) -> None:
    import torch.distributed as dist

    from hf_tp.auto import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    import transformers

    from hf_tp.parallelize import build_skeleton

    # Imports are paid once per process whatever loads the model: keep them out of the timed part.
    build_skeleton(transformers.AutoConfig.from_pretrained(folder), torch.bfloat16)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    gpus = torch.cuda.device_count()
    device = torch.device("cuda", rank % gpus) if gpus else torch.device("cpu")
    if gpus:
        torch.cuda.set_device(device)
        torch.empty(1, device=device)  # CUDA context outside the timed part, as after an earlier model
    dist.barrier()
    if os.environ.get("LOAD_SPEED_SWITCH_INTERVAL"):  # the GIL's switch interval during the load (default 5 ms)
        sys.setswitchinterval(float(os.environ["LOAD_SPEED_SWITCH_INTERVAL"]))
    start = time.perf_counter()
    model = load_parallel_model(folder, TPGroup(rank, size, device), dtype=torch.bfloat16, progress=False)
    total = time.perf_counter() - start
    stats = model.hf_tp_load_stats
    print("LOADSPEED " + json.dumps({
        # The loader options as resolved by hf_tp (the HF_TP_LOAD_* overrides this script sets included)
        "tp": size, "rank": rank, "threads": model.hf_tp_config.load_threads,
        "staging": "pinned" if model.hf_tp_config.pinned_load else "pageable",
        "chunk_mb": model.hf_tp_config.load_chunk_mb, "buffers": model.hf_tp_config.load_buffers,
        "switch_interval": sys.getswitchinterval(), "pin_s": round(stats.pin_seconds, 3), "staging": stats.staging, "phases": stats.phases,
        "weights_s": round(stats.seconds, 3), "from_pretrained_s": round(total, 3),
        "gb": round(stats.bytes_read / 1e9, 2), "gb_per_s": round(stats.gb_per_s, 2)}), flush=True)
    dist.destroy_process_group()


def run_config(folder: str, size: int, env: dict) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = [subprocess.Popen([sys.executable, __file__, folder, "--rank", str(r), "--tp", str(size)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(size)]
    lines = []
    for p in procs:
        out, err = p.communicate()
        lines.append(next((line for line in out.splitlines() if line.startswith("LOADSPEED")), err[-800:]))
    return lines


def probe(folder: str, threads: list[int]) -> None:
    """The parts of a load, on the files of ``folder`` (page cache warmed first)."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    for f in files:  # warm the page cache
        with open(f, "rb") as fh:
            while fh.read(1 << 26):
                pass
    chunk = 16 << 20
    if torch.cuda.is_available():
        torch.empty(1, device="cuda")  # CUDA context first: the pinning figure is pinning only
    t0 = time.perf_counter()
    buffers = [torch.empty(chunk, dtype=torch.uint8, pin_memory=torch.cuda.is_available()) for _ in range(max(threads))]
    print(f"PROBE pinned alloc {len(buffers)} x 16 MB: {time.perf_counter() - t0:.3f} s", flush=True)
    views = []
    for f in files:
        h = safe_open(f, framework="pt")
        views += [h.get_tensor(k).reshape(-1).view(torch.uint8) for k in h.keys()]
    pieces = [(v, s) for v in views for s in range(0, v.numel(), chunk)]
    total = sum(v.numel() for v in views)
    for n in threads:
        def work(i):
            buf = buffers[i]
            for v, s in pieces[i::n]:
                part = v[s:s + chunk]
                buf[:part.numel()].copy_(part)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(work, range(n)))
        dt = time.perf_counter() - t0
        print(f"PROBE page cache -> pinned, {n} threads: {total / 1e9:.2f} GB in {dt:.3f} s = {total / 1e9 / dt:.2f} GB/s", flush=True)
    if torch.cuda.is_available():
        big = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
        for _ in range(2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            dst.copy_(big, non_blocking=True)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        print(f"PROBE pinned -> GPU 1 GiB: {dt * 1e3:.1f} ms = {(1 << 30) / 1e9 / dt:.2f} GB/s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", default="4")
    ap.add_argument("--staging", default="pinned")
    ap.add_argument("--chunk-mb", default="32")
    ap.add_argument("--buffers", default="4")
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--switch-interval", default="", help="comma list of sys.setswitchinterval values to try")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if args.rank is not None:
        rank_main(args.folder, args.rank, args.tp)
    elif args.probe:
        probe(args.folder, threads)
    else:
        run_config(args.folder, args.tp, {})  # warms the page cache
        for staging in args.staging.split(","):
            for t in threads:
                for mb in args.chunk_mb.split(","):
                    for buffers in args.buffers.split(","):
                        for switch in args.switch_interval.split(","):
                            env = {"HF_TP_LOAD_THREADS": str(t), "HF_TP_PINNED_LOAD": "0" if staging == "pageable" else "1",
                                   "HF_TP_LOAD_CHUNK_MB": mb, "HF_TP_LOAD_BUFFERS": buffers,
                                   "LOAD_SPEED_SWITCH_INTERVAL": switch}
                            for line in run_config(args.folder, args.tp, env):
                                print(line, flush=True)


if __name__ == "__main__":
    main()
