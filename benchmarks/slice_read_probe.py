"""Where a per-expert load's host time goes: safetensors' slices against plain memory-mapped views.

``python benchmarks/slice_read_probe.py [--gb 2] [--threads 1,4]`` writes a file of 3 MB bf16 tensors (the size of
one Qwen3-30B-A3B expert matrix), warms the page cache, then per thread count times reading every tensor
(whole, and its first half of rows as a tp-2 rank does) into a pinned buffer per thread, and, on CUDA, the same
followed by a non-blocking copy to the GPU (a stream per thread, the buffer reused after its event fired):
  - ``safetensors``: ``safe_open(...).get_slice(name)[rows]``, then ``pinned.copy_(slice)``;
  - ``mmap``: a view of the file mapped once with ``torch.UntypedStorage.from_file``, sliced (no copy), then
    ``pinned.copy_(view)``.
Prints the safetensors version and one line per case: GB/s over the bytes read.
"""
import argparse
import json
import os
import threading
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--threads", default="1,4")
    ap.add_argument("--path", default="/tmp/slice_read_probe.safetensors")
    ap.add_argument("--dma", action="store_true", help="only time pinned/pageable -> GPU copies by size")
    args = ap.parse_args()
    if args.dma:
        return dma_sizes()
    import safetensors
    from safetensors import safe_open
    from safetensors.torch import save_file

    count = int(args.gb * 1e9 / (768 * 2048 * 2))
    names = [f"e{i}" for i in range(count)]
    if not os.path.exists(args.path):
        save_file({n: torch.randn(768, 2048).bfloat16() for n in names}, args.path)
    with open(args.path, "rb") as fh:
        while fh.read(1 << 26):
            pass
        fh.seek(0)
        head = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(head))
    base = torch.empty(0, dtype=torch.uint8).set_(
        torch.UntypedStorage.from_file(args.path, shared=False, nbytes=os.path.getsize(args.path)))
    handle = safe_open(args.path, framework="pt")

    def by_safetensors(name, rows):
        return handle.get_slice(name)[:rows]

    def by_mmap(name, rows):
        a, b = header[name]["data_offsets"]
        return base[8 + head + a:8 + head + b].view(torch.bfloat16).view(768, 2048)[:rows]

    cuda = torch.cuda.is_available()
    print(f"safetensors {safetensors.__version__}, torch {torch.__version__}, {count} tensors of 3 MB, cuda {cuda}")
    for threads in [int(t) for t in args.threads.split(",")]:
        for rows in (768, 384):
            for dma in ((False, True) if cuda else (False,)):
                for label, read in (("safetensors", by_safetensors), ("mmap", by_mmap)):
                    def work(t):
                        pinned = torch.empty(768 * 2048, dtype=torch.bfloat16, pin_memory=cuda)
                        if dma:
                            stream, done = torch.cuda.Stream(), torch.cuda.Event()
                            dst = torch.empty(768 * 2048, dtype=torch.bfloat16, device="cuda")
                        for name in names[t::threads]:
                            src = read(name, rows)
                            if dma:
                                done.synchronize()
                            stage = pinned[:src.numel()].view(src.shape)
                            stage.copy_(src)
                            if dma:
                                with torch.cuda.stream(stream):
                                    dst[:src.numel()].view(src.shape).copy_(stage, non_blocking=True)
                                done.record(stream)
                        if dma:
                            torch.cuda.synchronize()
                    for repeat in range(2):
                        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
                        start = time.perf_counter()
                        for p in pool:
                            p.start()
                        for p in pool:
                            p.join()
                        seconds = time.perf_counter() - start
                    gb = count * rows * 2048 * 2 / 1e9
                    print(f"threads {threads} rows {rows} {'+ DMA' if dma else 'host '} {label:12s} "
                          f"{gb / seconds:7.2f} GB/s", flush=True)


def dma_sizes():
    """Host -> GPU copies alone, one stream, by size: GPU time (CUDA events) and wall time per copy."""
    for mb in (1, 3, 8, 32, 128):
        n = mb * 2**20
        dst = torch.empty(n, dtype=torch.uint8, device="cuda")
        for kind in ("pinned", "pageable"):
            src = torch.ones(n, dtype=torch.uint8, pin_memory=kind == "pinned")
            for _ in range(3):
                dst.copy_(src, non_blocking=True)
            torch.cuda.synchronize()
            reps = max(4, 256 // mb)
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start = time.perf_counter()
            begin.record()
            for _ in range(reps):
                dst.copy_(src, non_blocking=True)
            end.record()
            issued = time.perf_counter() - start
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
            gpu_ms = begin.elapsed_time(end) / reps
            print(f"DMA {kind:8s} {mb:4d} MB: GPU {gpu_ms * 1e3:8.1f} us = {n / gpu_ms / 1e6:6.2f} GB/s; "
                  f"wall {wall / reps * 1e6:8.1f} us; issue {issued / reps * 1e6:7.1f} us; pinned {src.is_pinned()}",
                  flush=True)


if __name__ == "__main__":
    main()
