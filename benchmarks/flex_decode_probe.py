"""Does flex decode attention compile on this GPU's torch, and how fast is it against the SDPA path the compiled
step runs today (repeat_kv + SDPA with a boolean mask)? One attention call, Llama-3-8B heads (32 q / 8 kv, head
dim 128), bf16, batch 1, compiled, GPU time per call by CUDA-graph replay (20 calls per graph, 10 replays).
Usage: python benchmarks/flex_decode_probe.py [LENGTH ...]   (default 4352 256)"""
import sys
import traceback

import torch
import torch.nn.functional as F

from hf_tp.kernels.decode_attention import flex_decode


def repeat_kv(x, n):  # Transformers' repeat_kv: what its SDPA path does with a mask
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n, s, d).reshape(b, h * n, s, d)


def gpu_us(fn, reps=20, n=10):
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True)
    e0.record()
    for _ in range(n):
        g.replay()
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) / (n * reps) * 1e3


scale = 128 ** -0.5
for length in [int(a) for a in sys.argv[1:]] or [4352, 256]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 32, 1, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(1, 8, length, 128, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    m = torch.ones(1, 1, 1, length, dtype=torch.bool, device="cuda")
    m[..., length - 100:] = False
    fns = {"sdpa+repeat_kv": lambda q, k, v, m: F.scaled_dot_product_attention(q, repeat_kv(k, 4), repeat_kv(v, 4),
                                                                              attn_mask=m, scale=scale),
           "flex": lambda q, k, v, m: flex_decode(q, k, v, m, scale)}
    ref = fns["sdpa+repeat_kv"](q.float(), k.float(), v.float(), m)
    kv_bytes = 2 * k.numel() * 2
    for name, fn in fns.items():
        try:
            c = torch.compile(fn, fullgraph=True, dynamic=False)
            err = (c(q, k, v, m).float() - ref).abs().max().item()
            us = gpu_us(lambda: c(q, k, v, m))
            print(f"L={length} {name}: {us:.2f} us/call, KV {kv_bytes / us / 1e6:.2f} TB/s, max err vs fp32 {err:.2e}",
                  flush=True)
        except Exception:
            print(f"L={length} {name}: FAILED")
            traceback.print_exc(limit=-6)
