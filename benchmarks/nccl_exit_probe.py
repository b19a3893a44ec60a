"""Probe: does destroy_process_group() return after an NCCL collective was captured in a CUDA graph?

Usage: torchrun --nproc-per-node N benchmarks/nccl_exit_probe.py --variant keep|release|hf_tp
  keep     the graph is still alive at destroy_process_group() (what hung at exit on 2 x H200, 2026-11-30)
  release  the graph (and the compiled function's state) is dropped, then destroy_process_group()
  hf_tp    the graph is registered with hf_tp's teardown, which runs hf_tp.parallel.teardown.shutdown_group()
Prints "EXIT <variant> <seconds>" when the teardown returned; a hang is seen as the missing line.
N = 1 runs on one GPU: NCCL still launches its kernel, so the capture holds a communicator kernel.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

for _k, _v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed._functional_collectives as funcol  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=["keep", "release", "hf_tp"], default="keep")
    args = parser.parse_args()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    x = torch.randn(8, 512, device=device)

    @torch.compile(fullgraph=True)
    def step(t):
        return funcol.all_reduce(t * 2, "sum", dist.group.WORLD) + 1

    out = None
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            out = step(x)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    eager = out.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(x)
    graph.replay()
    torch.cuda.synchronize()
    expected = (x * 2 * dist.get_world_size() + 1)
    # x is the same on every rank (CUDA's default seed), so the sum is world_size times each rank's term.
    same_x = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(same_x, x)
    print(f"rank {dist.get_rank()} x equal on all ranks: {all(torch.equal(x, y) for y in same_x)}; eager correct: "
          f"{torch.allclose(eager, expected)}; replay correct: {torch.allclose(out, expected)} "
          f"(max diff {float((out - expected).abs().max()):.3g})", flush=True)

    start = time.perf_counter()
    if args.variant == "keep":
        dist.destroy_process_group()
    elif args.variant == "release":
        del graph, out
        gc.collect()
        torch.cuda.synchronize()
        dist.destroy_process_group()
    else:
        from hf_tp.parallel import teardown

        class Owner:  # what the decode loop is to the teardown: holds graphs, can drop them
            def release_graphs(self):
                self.graphs.clear()

        owner = Owner()
        owner.graphs = [graph]
        teardown.register_graph_owner(owner)
        del graph
        print("teardown:", teardown.shutdown_group(), flush=True)
    print(f"EXIT {args.variant} {time.perf_counter() - start:.2f}", flush=True)


if __name__ == "__main__":
    main()
