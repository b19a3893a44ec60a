"""Decode attention variants for the compiled step, one call each: does it compile on this torch, how far is it
from fp32, and how fast is it against the SDPA path the compiled step runs today (repeat_kv + SDPA with a
boolean mask)? Llama-3-8B heads (32 q / 8 KV, head dim 128), bf16, batch 1, the last 100 slots masked (a static
cache not yet filled), compiled with Inductor, GPU time per call by CUDA-graph replay (20 calls per graph,
10 replays).

Usage: python benchmarks/flex_decode_probe.py [--device cpu] [LENGTH ...]   (default 4352 256)
On CPU it checks every variant against fp32 SDPA (Dynamo's eager backend) and times nothing.
"""
import argparse
import traceback

import torch
import torch.nn.functional as F



def flex_decode(query, key, value, mask, scaling):
    """flex_attention with GQA and the boolean mask as a score_mod: the decode attention tried as an opt-in
    TPConfig option on 2026-12-02 and removed (its compiled step did not compile on torch 2.11; RESULTS.md)."""
    from torch.nn.attention.flex_attention import flex_attention

    score_mod = None
    if mask is not None:
        batch, q_len, kv_len = query.shape[0], query.shape[2], key.shape[2]
        keep = mask[:, 0, :, :kv_len].expand(batch, q_len, kv_len)

        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.where(keep[b, q_idx, kv_idx], score, -float("inf"))

    return flex_attention(query, key, value, score_mod=score_mod, scale=scaling,
                          enable_gqa=query.shape[1] != key.shape[1])

SCALE = 128 ** -0.5


def repeat_kv(x, n):  # Transformers' repeat_kv: what its SDPA path does with a mask
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n, s, d).reshape(b, h * n, s, d)


def sdpa_repeat(q, k, v, m):
    group = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, repeat_kv(k, group), repeat_kv(v, group), attn_mask=m, scale=SCALE)


def sdpa_gqa(q, k, v, m):  # no copies; with a mask, CUDA may fall back to the math kernel
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=SCALE, enable_gqa=True)


def flex_score_mod(q, k, v, m):  # the removed opt-in's form
    return flex_decode(q, k, v, m, SCALE)


def flex_block_mask(q, k, v, m):  # the mask as a BlockMask: KV blocks that are all masked are skipped
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    keep = m[:, 0, 0, :]

    def mask_mod(b, h, q_idx, kv_idx):
        return keep[b, kv_idx]

    block = create_block_mask(mask_mod, q.shape[0], None, q.shape[2], k.shape[2], device=q.device)
    return flex_attention(q, k, v, block_mask=block, scale=SCALE, enable_gqa=True)


def grouped_math(q, k, v, m):  # the query group as the M of two batched GEMMs; Inductor fuses the softmax
    b, hq, _, d = q.shape
    hkv = k.shape[1]
    qg = q.reshape(b, hkv, hq // hkv, d)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * SCALE  # (b, hkv, group, kv)
    scores = scores.masked_fill(~m[:, :, 0, :], float("-inf"))  # m: (b, 1, 1, kv) -> (b, 1, kv)
    probs = scores.softmax(-1).to(v.dtype)
    return torch.matmul(probs, v).reshape(b, hq, 1, d)


VARIANTS = {"sdpa+repeat_kv": sdpa_repeat, "sdpa enable_gqa": sdpa_gqa, "flex score_mod": flex_score_mod,
            "flex block_mask": flex_block_mask, "grouped math": grouped_math}


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("lengths", nargs="*", type=int, default=[4352, 256])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    for length in args.lengths:
        gen = torch.Generator(device=args.device).manual_seed(0)
        q = torch.randn(1, 32, 1, 128, device=args.device, dtype=dtype, generator=gen)
        k, v = (torch.randn(1, 8, length, 128, device=args.device, dtype=dtype, generator=gen) for _ in range(2))
        m = torch.ones(1, 1, 1, length, dtype=torch.bool, device=args.device)
        m[..., length - 100:] = False
        ref = sdpa_repeat(q.float(), k.float(), v.float(), m)
        kv_bytes = 2 * k.numel() * k.element_size()
        for name, fn in VARIANTS.items():
            try:
                c = torch.compile(fn, fullgraph=True, dynamic=False, backend="inductor" if cuda else "eager")
                err = (c(q, k, v, m).float() - ref).abs().max().item()
                timing = ""
                if cuda:
                    us = gpu_us(lambda: c(q, k, v, m))
                    timing = f"{us:.2f} us/call, KV {kv_bytes / us / 1e6:.2f} TB/s, "
                print(f"L={length} {name}: {timing}max err vs fp32 {err:.2e}", flush=True)
            except Exception:  # noqa: BLE001 - report and go on to the next variant
                print(f"L={length} {name}: FAILED", flush=True)
                traceback.print_exc(limit=-6)


if __name__ == "__main__":
    main()
