"""GPU time of one Llama-3-8B layer's four decode GEMMs (and the LM head) at tp 1/2/4/8 widths: cuBLAS bf16
against hf_tp's Triton kernels (hf_tp/kernels/gemv_triton.py) on bf16 weights (TPConfig.decode_gemm="triton")
and on FP8 weights (fp8_linear, block 128 x 128 and per-channel scales), as CUDA-graph replays.

Every measurement rotates over several copies of the weights (more bytes than the 50 MB L2 several times over),
as a model's 32 layers do: one matrix replayed alone would be read from L2 and look faster than it is.
Row-parallel GEMMs (o, down) at tp > 1 are timed as hf_tp runs them: fp32 output (TPConfig.reduce_fp32), for
cuBLAS (torch.mm(out_dtype=float32)) and the kernel alike; the LM head with fp32 logits.

  python benchmarks/fp8_gemm.py --out results.json [--tps 1,2,4,8] [--ms 1,8] [--lm-head]
                                [--sweep [--precompile 15 [--precompile-only]]] [--prefill]

--sweep      times each decode GEMM over a grid of kernel configs (kernel, BLOCK_N, BLOCK_K, warps, stages, split
             of K), each checked against the fp32 reference and for the same bits on a second call first; records
             the fastest per (M bucket, weight dtype, shape), writes them as gemv_table.py next to --out (copy it
             to hf_tp/kernels/gemv_table.py), installs them in this process and then times the layers as shipped
             with them.
--precompile compiles the sweep's kernels first in that many processes (Triton's on-disk cache), so the
             sweep itself only times.
--kinds      the sweep's weight kinds (default bf16,fp8); --fp8-scales block (default) or channel; --paths the
             kernels it tries (default gemv,dot).
--prefill    also times M = 128 .. 4096 (tp-1 widths): bf16 vs FP8 dequantize + cuBLAS vs the tl.dot kernel,
             which sets fp8_triton.DOT_MAX_M.
TB/s = weight bytes (FP8 + fp32 scales, or bf16) / GPU time.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import itertools
import json
import math
import multiprocessing as mp
import os
import sys
import time

import torch
import torch.nn.functional as F

# The decode GEMMs' shapes per model (--model): hidden, dense MLP width (0: the MLP is experts, timed by
# benchmarks/moe_switch.py), query and key/value widths (heads x head_dim), vocabulary, head_dim, experts (the
# MoE router's logits GEMM, replicated: the same shape at every tp).
MODELS = {
    "llama3-8b": dict(H=4096, I=14336, Q=4096, KV=1024, VOCAB=128256, D=128, E=0),
    # qwen3-moe-mini (hf-tp bench --shape): Qwen3-30B-A3B's attention, router (64 experts) and LM head
    "qwen3-moe-mini": dict(H=2048, I=0, Q=4096, KV=512, VOCAB=151936, D=128, E=64),
}
GEMMS: set | None = None  # main() sets it from --gemms: only these names
KINDS = ("bf16", "fp8")  # main() sets it from --kinds: the sweep's weight kinds
FP8_SCALES = "block"  # main() sets it from --fp8-scales: the sweep's FP8 scales ("block" 128 x 128, or "channel")
PATHS = ("gemv", "dot")  # main() sets it from --paths: the kernels the sweep tries
DEVICE_TABLE = ""  # main() sets it from --device-table: the GPU model whose own entries the sweep writes
MODEL = MODELS["llama3-8b"]  # main() sets it from --model
ROTATE_BYTES = 160e6  # per measured matrix: 3x the H200's L2
DEVICE = "cuda"


def shapes(tp: int, lm_head: bool = False) -> list[tuple[str, int, int, bool]]:
    """(name, N, K, fp32 out) of rank 0's decode GEMMs at ``tp`` for MODEL (key/value heads replicated when
    there are fewer than ``tp``)."""
    H, I, Q, KV, VOCAB, D, E = (MODEL[k] for k in ("H", "I", "Q", "KV", "VOCAB", "D", "E"))
    rows = [("qkv", Q // tp + 2 * max(KV // tp, D), H, False), ("o", H, Q // tp, tp > 1)]
    if I:
        rows += [("gate_up", 2 * I // tp, H, False), ("down", H, I // tp, tp > 1)]
    if E:
        rows.append(("router", E, H, False))
    rows += [("lm_head", -(-VOCAB // tp), H, True)] if lm_head else []
    return [r for r in rows if GEMMS is None or r[0] in GEMMS]


def gtime(fns, reps: int = 2, n: int = 5) -> float:
    """Microseconds per call: fns run in turn, reps times (once when there are 8 or more), inside one CUDA
    graph; the median of n replays."""
    reps = 1 if len(fns) >= 8 else reps
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in fns[:2]:  # warm-up (the kernels are compiled by then; the allocator's pool is not)
            f()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            for f in fns:
                f()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(n):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        graph.replay()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1) * 1e3 / (reps * len(fns)))
    del graph
    return sorted(times)[len(times) // 2]


class Weights:
    """C copies of one (N, K) matrix in bf16, and (``fp8``) in block FP8 (128 x 128 scales expanded per row, the
    canonical form) with per-channel scales too."""

    def __init__(self, N: int, K: int, copies: int, fp8: bool = True):
        self.N, self.K = N, K
        self.bf16, self.fp8, self.block, self.channel = [], [], [], []
        for _ in range(copies):
            w = torch.randn(N, K, device=DEVICE, dtype=torch.bfloat16) * 0.02
            self.bf16.append(w)
            if not fp8:
                continue
            amax = w.float().abs().reshape(N, -1, 128).amax(-1).clamp(min=1e-8)  # K % 128 == 0 for these shapes
            scale = amax / 448
            q = (w.float().reshape(N, -1, 128) / scale[..., None]).reshape(N, K).to(torch.float8_e4m3fn)
            self.fp8.append(q)
            self.block.append(scale.contiguous())
            self.channel.append(scale.amax(1, keepdim=True).contiguous())

    def bytes(self, kind: str) -> int:
        return self.N * self.K * 2 if kind == "bf16" else self.N * self.K + self.N * (
            self.K // 128 if kind == "block" else 1) * 4


def copies_for(N: int, K: int) -> int:
    return max(3, math.ceil(ROTATE_BYTES / (N * K)))


def xs(M: int, K: int):
    return torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16)


def cublas_fn(x, w, fp32_out: bool):
    if fp32_out:
        return lambda: torch.mm(x, w.t(), out_dtype=torch.float32)
    return lambda: F.linear(x, w)


def kernel_fn(gt, x, w, s, kind: str, fp32_out: bool, config=None, path=None):
    """One launch of the shared kernels as the layers call them: dense (bf16 weights, the output dtype the layer
    uses) or FP8 block (scales in the canonical form, output in x's dtype)."""
    if kind == "bf16":
        out = torch.float32 if fp32_out else None
        return lambda: gt.launch(x, w, None, 0, 0, None, out_dtype=out, config=config, path=path)
    # the fp16 form reads an fp16 copy of x that the decode step makes inside the kernel before it (fused by
    # Inductor): made once here, so the time is the GEMM's alone, as in the step
    x16 = x.to(torch.float16) if (config or {}).get("X16") or (config is None and _table_x16(gt, x, w, s)) else None
    return lambda: gt.launch(x, w, s, w.shape[1] // s.shape[1], 0, None, config=config, path=path, x16=x16)


def _table_x16(gt, x, w, s) -> bool:
    path, cfg = gt.choose(x.shape[0], w.shape[0], w.shape[1], w.element_size(), scales=gt.scale_layout(s))
    return gt.takes_fp16(cfg, w.element_size(), x.dtype, 1 if s.shape[1] == 1 else 2, path)


def reference(x, w, s, kind: str) -> torch.Tensor:
    wf = w.float() if kind == "bf16" else w.float() * s.repeat_interleave(w.shape[1] // s.shape[1], 1)
    return F.linear(x.float(), wf)


# ------------------------------------------------------------------------------------------------------ sweep

def grid(bucket: str, kind: str, N: int, K: int, sms: int) -> list[dict]:
    """The configs the sweep tries for one shape ("path" says which kernel): for M == 1 the GEMV's tiles, warps
    and loop form (num_stages 0: register prefetch, 1: plain, 3: pipelined through shared memory) and the tl.dot
    kernel's; for M > 1 the tl.dot kernel's; for FP8 also the tl.dot kernel's fp16 form ("X16"), and with
    per-channel scales the GEMV's. Each with every split of K that keeps the programs under 6 per SM
    and each split at least one step long."""
    elem = 2 if kind == "bf16" else 1
    base = []
    if bucket == "gemv":
        # 3: copies through shared memory (16-byte LDGSTS for bf16 and FP8 alike, in sm_90 builds by Triton 3.6
        # and 3.9), two steps ahead of the math
        stages = (0, 1, 3)
        for bn, kbytes, warps, st in itertools.product((4, 8, 16), (1024, 2048, 4096), (4, 8), stages):
            per_thread = bn * kbytes // (32 * warps)
            if 16 <= per_thread <= 256 and (kbytes == 1024 or kbytes // elem <= K):
                base.append(dict(path="gemv", BLOCK_N=bn, BLOCK_K=kbytes // elem, num_warps=warps, num_stages=st))
                if kind == "fp8" and FP8_SCALES == "channel":  # the GEMV's fp16 form (gemv_triton._gemv_f16_sums)
                    base.append(dict(base[-1], X16=True))
    # FP8 with block scales: a step inside one 128 group; per-channel scales allow longer steps
    fp8_bks = (128,) if FP8_SCALES == "block" else (128, 256)
    for bn, bk, st in itertools.product((16, 32, 64), (64, 128, 256), (3, 5)):
        if (kind == "fp8" and bk > max(fp8_bks)) or (bucket == "gemv" and bk < 128):
            continue
        base.append(dict(path="dot", BLOCK_N=bn, BLOCK_K=bk, num_warps=4, num_stages=st))
    if kind == "fp8":  # the fp16 form (gemv_triton "X16"): its winners in fp8_f16_probe.py were these tiles
        for bn, bk, warps, st in itertools.product((64, 128), fp8_bks, (4, 8), (3, 4, 5)):
            if bk == 128 and st == 4:  # the tiles fp8_f16_probe.py measured
                continue
            base.append(dict(path="dot", BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=st, X16=True))
    out = []
    for cfg in (c for c in base if c["path"] in PATHS):
        programs = -(-N // cfg["BLOCK_N"])
        for split in (1, 2, 4, 8, 16):
            if split > 1 and (programs * split > 6 * sms or K < split * cfg["BLOCK_K"]):
                break
            out.append(dict(cfg, SPLIT=split))
    return out


def kinds_of(name: str) -> tuple:
    """The weight kinds the sweep times for a GEMM: the LM head and the router stay bf16."""
    return tuple(k for k in KINDS if k == "bf16" or name not in ("lm_head", "router"))


def sweep_tasks(tps, ms, lm_head: bool, sms: int) -> list[tuple]:
    tasks = []
    for tp in tps:
        for name, N, K, fp32_out in shapes(tp, lm_head):
            for M in ms:
                bucket = "gemv" if M == 1 else "dot"
                for kind in kinds_of(name):
                    for cfg in grid(bucket, kind, N, K, sms):
                        tasks.append((cfg["path"], kind, N, K, M, fp32_out and kind == "bf16", cfg))
    return tasks


def _compile_worker(tasks: list[tuple], fp8_scales: str = "block") -> list[str]:
    """Run each task's launch once (empty weights, FP8 scales of ``fp8_scales``' form): Triton compiles the
    kernel into its on-disk cache."""
    from hf_tp.kernels import gemv_triton as gt

    errors, weights = [], {}
    for path, kind, N, K, M, fp32_out, cfg in tasks:
        try:
            key = (kind, N, K)
            if key not in weights:
                weights.clear()
                dtype = torch.bfloat16 if kind == "bf16" else torch.float8_e4m3fn
                weights[key] = (torch.empty(N, K, device=DEVICE, dtype=dtype),
                                torch.ones(N, K // 128 if fp8_scales == "block" else 1, device=DEVICE))
            w, s = weights[key]
            kernel_fn(gt, torch.zeros(M, K, device=DEVICE, dtype=torch.bfloat16), w, s, kind, fp32_out, cfg, path)()
        except Exception as exc:  # noqa: BLE001 - a config that does not compile is skipped by the sweep too
            errors.append(f"{path} {kind} {N}x{K} {cfg}: {type(exc).__name__}: {str(exc)[:100]}")
    torch.cuda.synchronize()
    return errors


def precompile(tasks: list[tuple], workers: int, log) -> None:
    # one compiled kernel per (path, kind, fp32 out, config without the split's value, split or not): tasks that
    # share one go to the same worker, so no two workers compile the same kernel
    groups: dict = {}
    for t in tasks:
        path, kind, N, K, M, fp32_out, cfg = t
        key = (path, kind, fp32_out, M == 1, tuple(sorted((k, v) for k, v in cfg.items() if k != "SPLIT")),
               cfg["SPLIT"] > 1)
        groups.setdefault(key, []).append(t)
    chunks = [[] for _ in range(workers)]
    for i, group in enumerate(sorted(groups.values(), key=len, reverse=True)):
        min(chunks, key=len).extend(group)
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        chunks = [c for c in chunks if c]
        errors = sum(pool.map(_compile_worker, chunks, [FP8_SCALES] * len(chunks)), [])
    log(f"precompiled {len(groups)} kernels for {len(tasks)} tasks in {workers} processes; {len(errors)} failed")
    for e in errors[:10]:
        log("  " + e)


def sweep(weights: dict, ms, sms: int, log, result: dict, save) -> dict:
    from hf_tp.kernels import gemv_triton as gt

    table = {}
    for (tp, name, N, K, fp32_out), W in weights.items():
        for M in ms:
            bucket = "gemv" if M == 1 else "dot"
            x = xs(M, K)
            for kind in kinds_of(name):
                ws = W.bf16 if kind == "bf16" else W.fp8
                ss = [None] * len(ws) if kind == "bf16" else getattr(W, FP8_SCALES)
                ref = reference(x, ws[0], ss[0], kind)
                out32 = fp32_out and kind == "bf16"
                tol = 1e-5 if out32 else 5e-3
                best, bad, timed = None, [], []
                layout = "" if kind == "bf16" else FP8_SCALES  # the table entry a call of these scales takes
                shipped = gt.choose(M, N, K, 2 if kind == "bf16" else 1, sms, scales=layout)[1]
                for cfg in grid(bucket, kind, N, K, sms):
                    path = cfg["path"]
                    try:
                        one = kernel_fn(gt, x, ws[0], ss[0], kind, out32, cfg, path)
                        a, b = one(), one()
                        err = ((a.float() - ref).norm() / ref.norm()).item()
                        if err > tol or not torch.equal(a, b):
                            bad.append((cfg, err))
                            continue
                        us = gtime([kernel_fn(gt, x, w, s, kind, out32, cfg, path) for w, s in zip(ws, ss)])
                    except Exception as exc:  # noqa: BLE001 - a config that does not compile: skipped, said
                        bad.append((cfg, f"{type(exc).__name__}: {str(exc)[:80]}"))
                        continue
                    timed.append((round(us, 2), cfg))
                    if best is None or us < best[0]:
                        best = (us, cfg)
                row = dict(tp=tp, gemm=name, N=N, K=K, M=M, kind=kind, failed=len(bad),
                           failed_examples=[str(b)[:160] for b in bad[:3]],
                           shipped_config=shipped, shipped_us=next((us for us, c in timed if c == shipped), None),
                           fastest=sorted(timed, key=lambda t: t[0])[:5])
                if best is not None:
                    nbytes = W.bytes("bf16" if kind == "bf16" else FP8_SCALES)
                    row.update(best_us=round(best[0], 2), best_config=best[1],
                               TBs=round(nbytes / best[0] / 1e6, 2))
                    # FP8 winners keyed by their scale layout when they go into a GPU model's own entries
                    # (DEVICE_TABLES); TABLE's keys serve both layouts
                    own = (layout,) if layout and DEVICE_TABLE else ()
                    table[(bucket, 2 if kind == "bf16" else 1, N, K, *own)] = best[1]
                result["sweep"].append(row)
                log("SWEEP " + json.dumps(row))
            save()
    return table


def write_table(path: str, table: dict, result: dict, device_table: str = "") -> None:
    """hf_tp/kernels/gemv_table.py with ``table``'s entries added (or replaced) in TABLE, or in
    DEVICE_TABLES[device_table] when given, its docstring with one more "Measured:" line (DEVICE_TABLES' comment
    kept as it is); the file to copy into the tree. The shipped entries are read from the file itself, not from
    the imported module, whose dicts a benchmark may have changed."""
    source = open(gemv_table_source()).read()
    shipped: dict = {}
    exec(compile(source, gemv_table_source(), "exec"), shipped)
    doc = source.split('"""')[1].rstrip()
    measured = (f"Measured ({result['model']}): {result['device']}, torch {result['torch']}, triton {result['triton']}, "
                "by\nbenchmarks/fp8_gemm.py " + " ".join(result["argv"]) + ".")
    if measured not in doc and not device_table:  # the docstring tells where TABLE's entries come from
        doc += "\n" + measured
    tables = {key: dict(entries) for key, entries in shipped["DEVICE_TABLES"].items()}
    merged = dict(shipped["TABLE"])
    (tables.setdefault(device_table, {}) if device_table else merged).update(table)
    lines = ['"""' + doc + '\n"""', "", "TABLE: dict[tuple[str, int, int, int], dict] = {"]
    lines += [f"    {key!r}: {merged[key]!r}," for key in sorted(merged)]
    lines.append("}")
    comment = source[:source.index("\nDEVICE_TABLES:")].rsplit("\n}", 1)[1].strip("\n")
    lines += ["", comment, "DEVICE_TABLES: dict[str, dict[tuple, dict]] = {"]
    for name in sorted(tables):
        lines.append(f"    {name!r}: {{")
        lines += [f"        {key!r}: {tables[name][key]!r}," for key in sorted(tables[name])]
        lines.append("    },")
    lines.append("}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def gemv_table_source() -> str:
    from hf_tp.kernels import gemv_table

    return gemv_table.__file__


# ------------------------------------------------------------------------------------------------------ shipped

def decode_rows(weights: dict, ms, log) -> list[dict]:
    """The layers' GEMMs as shipped: cuBLAS bf16, the kernel on bf16 (its table's config), FP8 block and
    per-channel through fp8_linear."""
    from hf_tp.kernels import gemv_triton as gt
    from hf_tp.kernels.fp8 import fp8_linear

    rows = []
    for (tp, name, N, K, fp32_out), W in weights.items():
        for M in ms:
            x = xs(M, K)
            row = dict(tp=tp, gemm=name, N=N, K=K, M=M, fp32_out=fp32_out)
            row["cublas_us"] = round(gtime([cublas_fn(x, w, fp32_out) for w in W.bf16]), 2)
            row["triton_us"] = round(gtime([kernel_fn(gt, x, w, None, "bf16", fp32_out) for w in W.bf16]), 2)
            # the rule's config for this shape (what a shape outside the table runs), next to the table's
            path = gt.default_path(M, N, 2)
            rule = gt.rule_config(path, N, K, M, 2, gt.sm_count(x.device))
            row["rule_us"] = round(gtime([kernel_fn(gt, x, w, None, "bf16", fp32_out, rule, path) for w in W.bf16]), 2)
            ref = reference(x, W.bf16[0], None, "bf16")
            got = kernel_fn(gt, x, W.bf16[0], None, "bf16", fp32_out)()
            row["triton_err"] = float(f"{((got.float() - ref).norm() / ref.norm()).item():.2e}")
            row["cublas_TBs"] = round(W.bytes("bf16") / row["cublas_us"] / 1e6, 2)
            row["triton_TBs"] = round(W.bytes("bf16") / row["triton_us"] / 1e6, 2)
            if W.fp8:
                row["fp8_block_us"] = round(gtime([lambda w=w, s=s: fp8_linear(x, w, s, 128, 0)
                                                   for w, s in zip(W.fp8, W.block)]), 2)
                row["fp8_channel_us"] = round(gtime([lambda w=w, s=s: fp8_linear(x, w, s, K, 0)
                                                     for w, s in zip(W.fp8, W.channel)]), 2)
                row["fp8_block_TBs"] = round(W.bytes("block") / row["fp8_block_us"] / 1e6, 2)
                ref = reference(x, W.fp8[0], W.block[0], "fp8")
                got = fp8_linear(x, W.fp8[0], W.block[0], 128, 0)
                row["fp8_err"] = float(f"{((got.float() - ref).norm() / ref.norm()).item():.2e}")
            rows.append(row)
            log("GEMM " + json.dumps(row))
    return rows


def layer_rows(rows: list[dict], tps, ms) -> list[dict]:
    """One layer's four GEMMs summed, per tp width and M."""
    out = []
    for tp in tps:
        for M in ms:
            r = [x for x in rows if x["tp"] == tp and x["M"] == M and x["gemm"] != "lm_head"]
            if not r:
                continue
            layer = dict(tp=tp, M=M, **{k: round(sum(x[k] for x in r), 1) for k in ("cublas_us", "triton_us", "rule_us")})
            layer["triton_speedup"] = round(layer["cublas_us"] / layer["triton_us"], 3)
            if "fp8_block_us" in r[0]:
                # the router stays bf16 in an FP8 model
                layer.update({k: round(sum(x.get(k, x["triton_us"]) for x in r), 1)
                              for k in ("fp8_block_us", "fp8_channel_us")})
                layer["fp8_block_vs_cublas"] = round(layer["cublas_us"] / layer["fp8_block_us"], 3)
                layer["fp8_block_vs_triton_bf16"] = round(layer["triton_us"] / layer["fp8_block_us"], 3)
            out.append(layer)
    return out


# ------------------------------------------------------------------------------------------------------ prefill

def prefill(weights: dict, log, save, result) -> None:
    """tp-1 widths, one layer's four GEMMs summed: bf16, FP8 dequantize + cuBLAS (the shipped path above
    fp8_triton.DOT_MAX_M), and the tl.dot kernel with 64-row tiles."""
    from hf_tp.kernels import fp8_triton as ft

    result["prefill"] = []
    for M in (128, 512, 2048, 4096):
        tot = dict(M=M, bf16_us=0.0, dequant_us=0.0, dot_bm64_us=0.0)
        for (tp, name, N, K, _), W in weights.items():
            if tp != 1 or name == "lm_head":
                continue
            x = xs(M, K)
            pairs = list(zip(W.fp8[:2], W.block[:2]))
            tot["bf16_us"] += gtime([lambda w=w: F.linear(x, w) for w in W.bf16[:2]], reps=2, n=5)
            tot["dequant_us"] += gtime([lambda w=w, s=s: ft.launch(x, w, s, 128, 0, None, path="dequant")
                                        for w, s in pairs], reps=2, n=5)
            cfg = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=4, SPLIT=1)
            tot["dot_bm64_us"] += gtime([lambda w=w, s=s: ft.launch(x, w, s, 128, 0, None, config=cfg, path="skinny")
                                         for w, s in pairs], reps=2, n=5)
        tot = {k: round(v, 1) for k, v in tot.items()}
        result["prefill"].append(tot)
        log("PREFILL " + json.dumps(tot))
        save()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--tps", default="1,2")
    parser.add_argument("--ms", default="1,8,16")
    parser.add_argument("--lm-head", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--precompile", type=int, default=0)
    parser.add_argument("--precompile-only", action="store_true", help="compile the sweep's kernels and exit")
    parser.add_argument("--prefill", action="store_true")
    parser.add_argument("--model", default="llama3-8b", choices=sorted(MODELS),
                        help="whose decode GEMM shapes (the table keeps every other model's entries)")
    parser.add_argument("--gemms", default="", help="comma-separated GEMM names to time (default: all)")
    parser.add_argument("--kinds", default="bf16,fp8", help="the sweep's weight kinds (bf16, fp8)")
    parser.add_argument("--fp8-scales", default="block", choices=("block", "channel"),
                        help="the sweep's FP8 scales: 128 x 128 blocks or one per output channel")
    parser.add_argument("--paths", default="gemv,dot", help="the kernels the sweep tries (gemv, dot)")
    parser.add_argument("--device-table", default="",
                        help="write the sweep's winners into gemv_table.DEVICE_TABLES[this key] instead of TABLE")
    args = parser.parse_args()
    global MODEL, GEMMS, KINDS, FP8_SCALES, PATHS, DEVICE_TABLE
    PATHS = tuple(args.paths.split(","))
    KINDS = tuple(args.kinds.split(","))
    FP8_SCALES = args.fp8_scales
    DEVICE_TABLE = args.device_table
    MODEL = MODELS[args.model]
    GEMMS = set(args.gemms.split(",")) if args.gemms else None
    tps = [int(t) for t in args.tps.split(",")]
    ms = [int(m) for m in args.ms.split(",")]
    from hf_tp.kernels import gemv_triton as gt

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    own_table = gt.use_device_table(torch.device("cuda"))  # "shipped" is what this GPU runs
    if args.device_table and args.device_table != gt.device_table_key(torch.cuda.get_device_name()):
        raise SystemExit(f"fp8_gemm.py: --device-table {args.device_table!r} does not name this GPU "
                         f"({torch.cuda.get_device_name()!r}); add a DEVICE_TABLES key that its name contains first")
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, argv=sys.argv[1:], model=args.model,
                  device_table=own_table, fp8_scales=FP8_SCALES,
                  triton=__import__("triton").__version__, rotate_bytes=ROTATE_BYTES, sweep=[], decode=[], layers=[])
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    def save():
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    if args.sweep and args.precompile:
        precompile(sweep_tasks(tps, ms, args.lm_head, sms), args.precompile, log)
        if args.precompile_only:
            return
    weights = {}
    for tp in tps:
        for name, N, K, fp32_out in shapes(tp, args.lm_head):
            weights[(tp, name, N, K, fp32_out)] = Weights(N, K, copies_for(N, K), fp8=name not in ("lm_head", "router"))
    log("weights ready")
    if args.sweep:
        table = sweep(weights, ms, sms, log, result, save)
        result["table"] = [[list(k), v] for k, v in table.items()]
        write_table(os.path.join(os.path.dirname(os.path.abspath(args.out)), "gemv_table.py"), table, result,
                    args.device_table)
        gt.TABLE.update(table)  # the layers below run as shipped with this table
        for key in [k for k in table if len(k) == 4]:  # a winner for any layout: no GPU entry of one layout hides it
            for layout in ("channel", "block"):
                gt.TABLE.pop((*key, layout), None)
        save()
    result["decode"] = decode_rows(weights, ms, log)
    result["layers"] = layer_rows(result["decode"], tps, ms)
    for layer in result["layers"]:
        log("LAYER " + json.dumps(layer))
    save()
    if args.prefill:
        prefill(weights, log, save, result)
    log("done")


if __name__ == "__main__":
    main()
