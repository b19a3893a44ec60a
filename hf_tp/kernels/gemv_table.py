"""The measured configs of hf_tp/kernels/gemv_triton.py, one per decode GEMM shape.

(bucket, weight bytes per element, N, K) -> config; bucket "gemv" for calls of one row (M = 1), "dot" for
2..64 rows (measured at M = 8); "path" is the kernel that ran fastest for the bucket ("gemv" or "dot"), the rest
its launch parameters. A shape that is not here runs gemv_triton.rule_config. DEVICE_TABLES' FP8 keys may end with
the scale layout they serve ("channel" or "block"; gemv_triton.table_entry).

This file is written by ``benchmarks/fp8_gemm.py --sweep`` ($OUT/gemv_table.py: this table with the sweep's
entries added or replaced, one "Measured" line per sweep): each entry is the fastest
config of the sweep's grid for that shape, checked against the fp32 reference and for the same bits on a second
call (benchmarks/RESULTS.md says when, on which GPU, from which command).
Measured (llama3-8b): NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0, by
benchmarks/fp8_gemm.py --out $OUT/gemm.json --tps 2,1,4,8 --ms 1,8 --lm-head --sweep.
Measured (qwen3-moe-mini): NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0, by
benchmarks/fp8_gemm.py --model qwen3-moe-mini --tps 1,2,4,8 --ms 1,8 --lm-head --sweep --out $OUT/gemm.json.
Measured (qwen3-moe-mini): NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0, by
benchmarks/fp8_gemm.py --model qwen3-moe-mini --gemms router --tps 1 --ms 1,8 --sweep --out $OUT/gemm_router.json.
Entries with "X16" (FP8 weights, bf16 activations multiplied in fp16 by the tl.dot kernel): NVIDIA H200, torch
2.11.0+cu130, triton 3.6.0, by benchmarks/fp8_f16_probe.py --out $OUT/fp8_f16.json (the "x16" variant's best
config, for the shapes where it beat the shipped kernel with block scales; not for o_proj, whose input comes
from the attention kernel, so that its fp16 copy would be a kernel of its own; not for tp-1 widths at M = 1,
where the decode step end to end was not faster with them: benchmarks/RESULTS.md, 2026-12-04, fourth session).
"""

TABLE: dict[tuple[str, int, int, int], dict] = {
    ('dot', 1, 768, 2048): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 4},
    ('dot', 1, 768, 4096): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 8},
    ('dot', 1, 1280, 2048): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 4},
    ('dot', 1, 1536, 4096): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 8},
    ('dot', 1, 2048, 512): {'path': 'dot', 'BLOCK_N': 16, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 1, 2048, 1024): {'path': 'dot', 'BLOCK_N': 16, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 1, 2048, 2048): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 4},
    ('dot', 1, 2048, 4096): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 4},
    ('dot', 1, 2560, 2048): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 4},
    ('dot', 1, 3072, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 8, 'X16': True},
    ('dot', 1, 3584, 4096): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 4},
    ('dot', 1, 4096, 512): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 1, 4096, 1024): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 1, 4096, 1792): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 4},
    ('dot', 1, 4096, 2048): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 4},
    ('dot', 1, 4096, 3584): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 4},
    ('dot', 1, 4096, 4096): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 4},
    ('dot', 1, 4096, 7168): {'path': 'dot', 'BLOCK_N': 128, 'BLOCK_K': 128, 'num_warps': 8, 'num_stages': 3, 'SPLIT': 8, 'X16': True},
    ('dot', 1, 4096, 14336): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 8, 'X16': True},
    ('dot', 1, 5120, 2048): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 4},
    ('dot', 1, 6144, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 4, 'X16': True},
    ('dot', 1, 7168, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 4},
    ('dot', 1, 14336, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1, 'X16': True},
    ('dot', 1, 28672, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1, 'X16': True},
    ('dot', 2, 64, 2048): {'path': 'dot', 'BLOCK_N': 16, 'BLOCK_K': 256, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 4},
    ('dot', 2, 768, 2048): {'path': 'dot', 'BLOCK_N': 16, 'BLOCK_K': 256, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 768, 4096): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 4},
    ('dot', 2, 1280, 2048): {'path': 'dot', 'BLOCK_N': 16, 'BLOCK_K': 256, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 1536, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 4},
    ('dot', 2, 2048, 512): {'path': 'dot', 'BLOCK_N': 16, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 2048, 1024): {'path': 'dot', 'BLOCK_N': 16, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 2048, 2048): {'path': 'dot', 'BLOCK_N': 16, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 2048, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 4},
    ('dot', 2, 2560, 2048): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 3072, 4096): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 64, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 4},
    ('dot', 2, 3584, 4096): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 256, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 4096, 512): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 4096, 1024): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 4096, 1792): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 4096, 2048): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 256, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 4096, 3584): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 256, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 4096, 4096): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 256, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 4096, 7168): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 256, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 4096, 14336): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 64, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 4},
    ('dot', 2, 5120, 2048): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 6144, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 7168, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 14336, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 64, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 16032, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 64, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 18992, 2048): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1},
    ('dot', 2, 28672, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 256, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1},
    ('dot', 2, 32064, 4096): {'path': 'dot', 'BLOCK_N': 32, 'BLOCK_K': 64, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1},
    ('dot', 2, 37984, 2048): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 64, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1},
    ('dot', 2, 64128, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('dot', 2, 75968, 2048): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1},
    ('dot', 2, 128256, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1},
    ('dot', 2, 151936, 2048): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('gemv', 1, 768, 2048): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 2048, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 768, 4096): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 4096, 'num_warps': 4, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 1280, 2048): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 1536, 4096): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 2048, 512): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 4, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 2048, 1024): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 2048, 2048): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 2048, 4096): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 2560, 2048): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 3072, 4096): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 4, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 3584, 4096): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 4096, 512): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 4, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 4096, 1024): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 4096, 1792): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 4096, 2048): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 4096, 3584): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 4096, 4096): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 4096, 7168): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 4, 'X16': True},
    ('gemv', 1, 4096, 14336): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 5120, 2048): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 6144, 4096): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 7168, 4096): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 1, 14336, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1, 'X16': True},
    ('gemv', 1, 28672, 4096): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 2, 64, 2048): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 2048, 'num_warps': 8, 'num_stages': 0, 'SPLIT': 1},
    ('gemv', 2, 768, 2048): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 0, 'SPLIT': 1},
    ('gemv', 2, 768, 4096): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 2048, 'num_warps': 8, 'num_stages': 0, 'SPLIT': 1},
    ('gemv', 2, 1280, 2048): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 0, 'SPLIT': 1},
    ('gemv', 2, 1536, 4096): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 0, 'SPLIT': 1},
    ('gemv', 2, 2048, 512): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 512, 'num_warps': 8, 'num_stages': 0, 'SPLIT': 1},
    ('gemv', 2, 2048, 1024): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 512, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 2, 2048, 2048): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 2048, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 2, 2048, 4096): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 4, 'num_stages': 0, 'SPLIT': 1},
    ('gemv', 2, 2560, 2048): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 2, 3072, 4096): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 512, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 2, 3584, 4096): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 512, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 2, 4096, 512): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 512, 'num_warps': 4, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 2, 4096, 1024): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 512, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 2, 4096, 1792): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 512, 'num_warps': 8, 'num_stages': 0, 'SPLIT': 1},
    ('gemv', 2, 4096, 2048): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 512, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 2, 4096, 3584): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 512, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 2, 4096, 4096): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 512, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 2, 4096, 7168): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 512, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 2, 4096, 14336): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 512, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
    ('gemv', 2, 5120, 2048): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 512, 'num_warps': 4, 'num_stages': 0, 'SPLIT': 1},
    ('gemv', 2, 6144, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('gemv', 2, 7168, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('gemv', 2, 14336, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1},
    ('gemv', 2, 16032, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('gemv', 2, 18992, 2048): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1},
    ('gemv', 2, 28672, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 256, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1},
    ('gemv', 2, 32064, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1},
    ('gemv', 2, 37984, 2048): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1},
    ('gemv', 2, 64128, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1},
    ('gemv', 2, 75968, 2048): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 256, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1},
    ('gemv', 2, 128256, 4096): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1},
    ('gemv', 2, 151936, 2048): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 256, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1},
}

# Entries that replace or refine TABLE's on one GPU model, keyed by a part of its name (torch.cuda.get_device_name):
# the shapes where that GPU's own sweeps found a faster config than TABLE's, confirmed by a second sweep (and, for
# tp-1 and tp-2 widths, end to end). FP8 entries carry the scale layout they were measured with as a fifth key
# element ("channel" or "block"; gemv_triton.table_entry): on the H100 the two layouts are fastest with different
# warps at the same shape, so a per-channel winner would slow block-scaled weights down (tp-1 down 32.1 against
# TABLE's 27.7 µs). gemv_triton.use_device_table puts them in once per process; TABLE stays the default.
# "H100 80GB HBM3" (the SXM H100; the PCIe and NVL ones, with other memory, keep TABLE's): torch 2.11.0+cu130,
# triton 3.6.0, sweeps of benchmarks/fp8_gemm.py --ms 1 --sweep --kinds fp8 (benchmarks/RESULTS.md, 2026-12-06).
# Per channel, tp 1 (three sweeps): gate/up in the fp16 form with 128-row tiles 43.4-44.0 µs against the GEMV's
# 45.5-47.8, down and o_proj with 4 warps (25.0-25.5 against 27.2; 9.2-9.6 against 10.3); end to end 270-276 tok/s
# against 257-262. The rank of tp 2 (two sweeps): q/k/v with 8 warps (7.35-7.48 against 8.09-8.27), o_proj with 4
# (5.76-5.79 against 6.52-6.57), down by the GEMV (13.81-13.82 against the fp16 form's 15.6); end to end 494.8-503.3
# tok/s against 475.6-480.0. tp 4 and 8 widths (two sweeps, twenty-fourth session): 7-27 % per GEMM; end to end
# within the runs' spread. Block scales (two sweeps at tp 1 and 2): TABLE's configs are the fastest or within 2 %,
# except the rank of tp 2's down (the GEMV with 8 warps, 15.4 against 17.2 µs). bf16: TABLE's configs within 2 %.
# The GEMV's fp16 form ("X16" on a GEMV entry, FP8 per channel; 2026-12-07, two measurements per GEMM: CALL=60's
# fp8_gemv_f16.py and CALL=61's sweep): down 22.6-22.8 µs against 25.0-27.4 at tp 1 and 12.5-12.8 against 13.8-14.0
# at the rank of tp 2. Not the rank's q/k/v (7.02-7.04 against 7.32-7.37: 3.8 % in the sweep, under the 4 % of
# benchmarks/device_table_merge.py), nor o_proj (6 % faster alone): its x comes
# from the attention kernel, so its fp16 copy would be a kernel of its own. End to end, the sweep's whole table
# (these, and the fp16 form on o_proj, q/k/v and tp-1 gate/up) gave 280.3-280.7 tok/s at tp 1 against 276.0-276.4 and 512.6
# against 505.3 at the rank of tp 2.
DEVICE_TABLES: dict[str, dict[tuple, dict]] = {
    'H100 80GB HBM3': {
        ('gemv', 1, 768, 4096, 'channel'): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 4096, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
        ('gemv', 1, 3072, 4096, 'channel'): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
        ('gemv', 1, 3584, 4096, 'channel'): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 4, 'num_stages': 1, 'SPLIT': 1},
        ('gemv', 1, 4096, 1024, 'channel'): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 4, 'num_stages': 1, 'SPLIT': 1},
        ('gemv', 1, 4096, 1792, 'channel'): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 4, 'num_stages': 1, 'SPLIT': 1},
        ('gemv', 1, 4096, 2048, 'channel'): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 4, 'num_stages': 1, 'SPLIT': 1},
        ('gemv', 1, 4096, 3584, 'channel'): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 4, 'num_stages': 1, 'SPLIT': 1},
        ('gemv', 1, 4096, 4096, 'channel'): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 4, 'num_stages': 1, 'SPLIT': 1},
        ('gemv', 1, 4096, 7168, 'block'): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 8, 'num_stages': 1, 'SPLIT': 1},
        ('gemv', 1, 4096, 7168, 'channel'): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 4, 'num_stages': 1, 'SPLIT': 1, 'X16': True},
        ('gemv', 1, 4096, 14336, 'channel'): {'path': 'gemv', 'BLOCK_N': 4, 'BLOCK_K': 1024, 'num_warps': 4, 'num_stages': 1, 'SPLIT': 1, 'X16': True},
        ('gemv', 1, 7168, 4096, 'channel'): {'path': 'dot', 'BLOCK_N': 64, 'BLOCK_K': 256, 'num_warps': 4, 'num_stages': 5, 'SPLIT': 1, 'X16': True},
        ('gemv', 1, 28672, 4096, 'channel'): {'path': 'dot', 'BLOCK_N': 128, 'BLOCK_K': 128, 'num_warps': 4, 'num_stages': 3, 'SPLIT': 1, 'X16': True},
    },
}
