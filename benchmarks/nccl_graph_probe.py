"""Probe: an Inductor-compiled function with a functional all-reduce and a last-dim all-gather (what
hf_tp's row-parallel layers and LM head trace to under torch.compile), captured in a CUDA graph by hand (what the decode loop does) over
NCCL, replayed with new inputs: results equal the eager computation.

Usage: torchrun --nproc-per-node N benchmarks/nccl_graph_probe.py   (N = 1 works on a single GPU:
NCCL still runs its kernel, so capture and replay of the collective are exercised.)
"""

from __future__ import annotations

import os

for _k, _v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed._functional_collectives as funcol  # noqa: E402


def main():
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    rank, world = dist.get_rank(), dist.get_world_size()
    weight = torch.randn(256, 512, device=device, generator=torch.Generator(device).manual_seed(rank))

    def step(x):
        partial = torch.mm(x, weight.t(), out_dtype=torch.float32) if x.dtype == torch.bfloat16 else x @ weight.t()
        hidden = funcol.all_reduce(partial, "sum", dist.group.WORLD).relu()
        # The LM head's gather along the last dim, as hf_tp.parallel.comm.all_gather_last_dim traces it.
        gathered = funcol.all_gather_tensor(hidden.movedim(-1, 0).contiguous(), 0, dist.group.WORLD).movedim(0, -1)
        return gathered

    compiled = torch.compile(step, fullgraph=True)
    static_in = torch.zeros(4, 512, device=device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            compiled(static_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = compiled(static_in)
    worst = 0.0
    for trial in range(5):
        x = torch.randn(4, 512, device=device, generator=torch.Generator(device).manual_seed(100 + trial))
        static_in.copy_(x)
        graph.replay()
        partial = x @ weight.t()
        dist.all_reduce(partial)
        parts = [torch.empty_like(partial) for _ in range(world)]
        dist.all_gather(parts, partial.relu().contiguous())
        worst = max(worst, float((static_out - torch.cat(parts, dim=-1)).abs().max()))
    torch.cuda.synchronize()
    if rank == 0:
        print(f"NCCLGRAPH world={world} torch={torch.__version__} max|graph - eager| over 5 replays = {worst:.2e}",
              "OK" if worst < 1e-3 else "MISMATCH", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
