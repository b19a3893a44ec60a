"""The measured configs of hf_tp/kernels/gemv_triton.py, one per decode GEMM shape.

(bucket, weight bytes per element, N, K) -> config; bucket "gemv" for calls of one row (M = 1), "dot" for
2..64 rows (measured at M = 8); "path" is the kernel that ran fastest for the bucket ("gemv" or "dot"), the rest
its launch parameters. A shape that is not here runs gemv_triton.config_for's rule.

This file is written whole by ``benchmarks/fp8_gemm.py --sweep`` ($OUT/gemv_table.py): each entry is the fastest
config of the sweep's grid for that shape, checked against the fp32 reference and for the same bits on a second
call (benchmarks/RESULTS.md says when, on which GPU, from which command). Not measured yet: empty.
"""

TABLE: dict[tuple[str, int, int, int], dict] = {}
