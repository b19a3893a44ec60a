#!/usr/bin/env bash
# The one-GPU device calls for the open issues (18, 19, 21). Each CALL is one call of the device tool: its steps
# run in priority order, each only if the call's BUDGET still holds it (benchmarks/steps.sh), and everything
# comes back as $OUT/all.tgz beside $OUT/log.txt. The calls already run, with their figures, are in
# benchmarks/RESULTS.md, each with the commit it ran (`git show COMMIT:benchmarks/next_cycle.sh` gives its steps;
# calls 1-40 and 43-44 live there since this file was pruned on 2026-12-06).
#   CALL=41 (the default; on an H200): issues 18 and 19's dense bars as stated (tp 1 bf16 and FP8, ranks of tp 2
#      bf16 and FP8, ranks of tp 4 and 8, a 4096-token prompt), then the H200's FP8 per-channel sweep.
#   CALL=42 (H200, after 41): qwen3-moe-mini at tp 1 and its rank of tp 2 (issue 21); tp 1 batch 8, bf16 and FP8
#      (issue 19).
#   CALL=45 / CALL=46 (H100): tp 1 / the rank of tp 2 in FP8 with and without this GPU's own decode-GEMM entries
#      (gemv_table.DEVICE_TABLES), interleaved twice, with their GPU tests: rerun after entries change.
#   CALL=47 (H100, run in the twenty-fourth session): the GPU tests that check the H100 entries at the 8B widths end to end
#      (test_gpu_fp8 -k 8b), the two decode-GEMM tests that failed in the twenty-third session's hand-run call (no
#      PYTHONPATH there), then the loop's, its GEMM passes' and the MoE kernels' GPU tests.
#   CALL=48 (H100, run in the twenty-fourth session): the sweeps more H100 entries need (FP8 at tp 4/8 widths,
#      block scales, qwen3-moe-mini's bf16 attention, the MoE expert blocks), each twice, merged by
#      benchmarks/device_table_merge.py (a shape's winner must beat the shipped config by 4 % in every sweep).
#   CALL=49 (H100, run in the twenty-fourth session): the ranks of tp 4 and 8 in FP8 with and without the entries
#      call 48's sweeps added.
#   CALL=50 (H100, run in the twenty-fifth session): the FP8 entries keyed by scale layout on the GPU (their tests,
#      the 8B cases), block-scaled FP8 at tp 1 and the rank of tp 2 as shipped against the per-channel entries
#      applied to block weights (the form before the layout key), then the MoE kernels' GPU tests. (41 and 42 also
#      ran on that H100; they still wait for an H200.)
#   CALL=51 (H100, next): where the time goes in the three bars still short on the H100: FP8 per channel at tp 1
#      (1.54x of 1.6x), the MoE rank of tp 2 (1.47x of 1.5x), both profiled (--profile 64) beside their unprofiled
#      rows, and the eager FP8 prefill at the 8B shape (1.06x bf16's time) under benchmarks/prefill_profile.py,
#      bf16 and FP8 per channel, with cProfile.
#   CALL=52 (any one GPU, twenty-sixth session): every gpu-marked test of tests/, one step per file (a file the call
#      had no time for runs in a second call with ONLY="tests_FILE ..."); the tests that need two GPUs skip with
#      their reason.
#   CALL=56 (H200, first: issue 21 is the one whose bars an H200 call can close): qwen3-moe-mini at tp 1 (batch 1
#      and 8) and its rank of tp 2, Transformers' load of the same folder, the dense 8B bf16 row, then the MoE
#      rows again (the ratio's spread). Then 41, then 42's batch-8 rows.
#   CALL=57 (H200, next): the H200's own FP8 per-channel GEMV entries for tp 1 (issue 19's 1.6x and batch-8 bars),
#      swept, then tp 1 with and without them, PDL on at tp 1, and the 8B-width GPU tests through them.
#   CALL=58 (any GPU, first; ran on an H100 in the thirtieth session): the load's and the routing kernel's GPU
#      tests, qwen3-moe-mini's tp 1 and rank of tp 2 (their load phases: issue 21's 10 GB/s), Transformers' load of
#      the same folder, then both profiled with PDL off (additive kernel times), beside their rows with PDL on.
#   CALL=59 (any GPU, thirty-second session): the GEMV's fp16 form for FP8 per channel (config "X16" on a GEMV
#      entry): its GPU tests, then tp 1 and the rank of tp 2 with it set on their GEMMs against the shipped configs.
#   CALL=60 (any GPU, a short call): CALL=59's GEMMs alone (benchmarks/fp8_gemv_f16.py) and its GPU tests.
#   CALL=61 (any GPU, after 59 and 60 ran on an H100 in the thirty-third session): this GPU's own FP8 per-channel
#      entries at tp 1 and tp 2 widths, swept with the fp16 GEMV in the grid, then the rows with and without them.
#   CALL=62 (any GPU): the ranks of tp 8, 4 and 2 in bf16 profiled with PDL off (additive kernel times), beside the
#      rows of tp 8 and 4 with the defaults: where issue 18's narrow ranks spend the time beyond their GEMMs.
#   CALL=64 (any GPU, first): the ranks of tp 8 and 4 with the small GEMMs' weights and attention's cache asked of
#      L2 before the PDL wait, against neither, interleaved; the attention kernel's PDL test with it first.
#   CALL=65 (any GPU, after 64): qwen3-moe-mini at tp 1 and its rank of tp 2 with and without 64's prefetches.
#   CALL=66 (any GPU): six processes of the rank of tp 4, profiled: which kernel a fast process runs faster.
#   CALL=67 (any GPU, first in the thirty-sixth session): the FP8 eager prefill with its bound launches against the
#      full path, bf16 beside it (issue 19's prefill bar), with the lanes' and the GEMV's GPU tests.
#   CALL=68 (an H200, after 67): 67's prefill comparison in one process (benchmarks/prefill_ab.py), then CALL=58.
#   CALL=69 (not an H200): 68's prefill comparison, then CALL=66.
#   CALL=70 (any GPU, a short call): the lanes' GPU test and prefill_ab.py twice.
#   CALL=71 (any GPU): issue 18's dense rows (tp 1, ranks of tp 2, 4, 8 in bf16) and issue 21's MoE rows (tp 1, rank
#      of tp 2) with the GPU-timed decode rate (CUDA events around the decode steps) beside the wall-difference one,
#      twice, after the timing's GPU test.
#   CALL=63 (any GPU, a short call): the dense rank of tp 2 and tp 1 in bf16 with PDL on and off, interleaved.
#   CALL=53 (H100, next; on an H200 CALL=41 runs the same tests after its rows): the GPU tests of the twenty-sixth
#      session's per-decoder compile (decode_loop.own_code: Dynamo's recompile limit per model), which no GPU has
#      run: tests/test_gpu_fp8.py (whose ninth model failed to compile in CALL=52) and test_gpu_loop_requests.py
#      (without its torch._dynamo.reset() now), the loop's GPU tests, then tp 1 bf16 / FP8 and the MoE rows.
# Usage (device): cd <checkout> && OUT=... BUDGET=570 [CALL=41|42|45|...|55] bash benchmarks/next_cycle.sh
# Asking for nvidia-h200 may bring an H100; the twenty-third to twenty-seventh sessions' calls chose by the GPU.
# Next (after the thirty-eighth session: its H100 calls gave the rows' GPU-timed decode rates, within 0.4 % run to run,
# and the eos check's step queued ahead, +0.6 % at the rank of tp 8): 71 on any GPU (issue 18's and 21's rows by
# the GPU-timed rate, MoE's rank of tp 2 included, which call 2 had no time for; on an H200 also prefill_ab.py), then
# on an H200 61 (its own FP8 per-channel entries: about +5 % end to end on the H100, not issue 19's 1.31x to 1.6x
# alone). The one-liner:
#   G=$(nvidia-smi --query-gpu=name --format=csv,noheader); C=71
#   OUT=$OUT BUDGET=540 CALL=$C bash benchmarks/next_cycle.sh
# On an H200, entries from its sweep ($OUT/own/gemv_table.py) that win end to end go into gemv_table.py under an
# "H200" key, kept only where a second measurement agrees (benchmarks/device_table_merge.py's rule), and
# tests/test_fp8_kernel.py's device_table_key("NVIDIA H200") == "" assertion changes with them.
set -u
. "$(dirname "$0")/steps.sh"
export PYTHONPATH=$PWD
CK=${CK:-/tmp/ck}
CALL=${CALL:-41}
record_env
python -c "import torch._inductor.config as c; print('inductor enable_pdl:', hasattr(c.triton, 'enable_pdl'))" >> "$OUT/gpu.txt" 2>&1
T="python -m pytest -q -p no:cacheprovider -m gpu -rfE --durations=5"
# run_system with module constants set first (in-process): "X16_TP1=1" puts the fourth session's tp-1 M = 1 fp16
# entries back; "FOLD=1" sums splits of K in the GEMM; "PF=1" (with "PFL=lines") asks L2 for the GEMMs' weights
# before the PDL wait; HF_TP_PDL=0/1 is TPConfig.pdl; "GLOBAL_PDL=1" sets both PDL switches for the whole process
FLIP="import os, runpy, sys
from hf_tp.kernels import gemv_triton as gt
if os.environ.get('X16_TP1') == '1':
    for n, k, st, sp in ((28672, 4096, 3, 1), (4096, 14336, 3, 8)):
        gt.TABLE[('gemv', 1, n, k)] = dict(path='dot', BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=st, SPLIT=sp, X16=True)
if os.environ.get('LANES'):  # LANES=0: FP8 eager prefill calls take the full path every time (no bound launches)
    from hf_tp.kernels import fp8 as fp8_kernels
    fp8_kernels.PREFILL_LANES = os.environ['LANES'] == '1'
if os.environ.get('FOLD'):  # FOLD=1 / FOLD=0: the split-K sum in the GEMM or by the reduce kernel
    gt.FOLD_SPLIT = os.environ['FOLD'] == '1'
gt.PREFETCH_WEIGHTS = os.environ.get('PF') == '1'
if os.environ.get('DEVICE_TABLE') == '0':  # DEVICE_TABLE=0: gemv_table.TABLE alone, without this GPU's own entries
    gt._device_table = ''  # as if none were measured for it (DEVICE_TABLES itself stays: a sweep writes it out)
if os.environ.get('GEMV_ENTRIES'):  # JSON [[bucket, elem_bytes, N, K, (FP8 scale layout,) config], ...]: set first
    import json
    for *key, cfg in json.loads(os.environ['GEMV_ENTRIES']):
        gt.TABLE[tuple(key)] = cfg
gt.PREFETCH_MAX_LINES = int(os.environ.get('PFL', gt.PREFETCH_MAX_LINES))
if os.environ.get('KVPF'):  # KVPF=1: attention's split programs ask L2 for their cached keys and values first
    from hf_tp.kernels import decode_attention
    decode_attention.PREFETCH_KV = os.environ['KVPF'] == '1'
if os.environ.get('PFB'):  # PFB=bytes: only GEMMs whose whole weight has at most that many bytes prefetch
    gt.PREFETCH_MAX_WEIGHT_BYTES = int(os.environ['PFB'])
if os.environ.get('ADVANCE') == '0':  # the greedy selection and bookkeeping eager, as before the eighth session
    from hf_tp.generation import decode_loop
    decode_loop.COMPILE_ADVANCE = False
if os.environ.get('CHECK_AHEAD'):  # CHECK_AHEAD=0: the eos check syncs before the next step is queued (before 2026-12-08)
    from hf_tp.generation import decode_loop
    decode_loop.CHECK_AHEAD = os.environ['CHECK_AHEAD'] == '1'
if os.environ.get('SAMPLE'):  # SAMPLE=1: the sampling selection compiled (decode_loop.COMPILE_SAMPLING), 0: eager
    from hf_tp.generation import decode_loop
    decode_loop.COMPILE_SAMPLING = os.environ['SAMPLE'] == '1'
if os.environ.get('SORTFREE'):  # SORTFREE=1: whole-vocabulary sampling by radix select (SORT_FREE_SAMPLING)
    from hf_tp.generation import decode_loop
    decode_loop.SORT_FREE_SAMPLING = os.environ['SORTFREE'] == '1'
if os.environ.get('TOPK_KERNEL'):  # sampling's top-k candidates: 0 torch.topk, 1 sampling_topk's Triton kernels
    from hf_tp.generation import decode_loop
    decode_loop.TOPK_KERNEL = os.environ['TOPK_KERNEL'] == '1'
if os.environ.get('TWO_TERM_DECODE') or os.environ.get('TWO_TERM_PREFILL'):  # x as two FP8 terms up to these rows
    from hf_tp.kernels import fp8_triton
    fp8_triton.DECODE_TWO_TERM_MAX_M = int(os.environ.get('TWO_TERM_DECODE', 0))
    fp8_triton.PREFILL_TWO_TERM_MAX_M = int(os.environ.get('TWO_TERM_PREFILL', 0))
    fp8_triton.TWO_TERM_SCALED_MM = os.environ.get('TWO_TERM_MM') == '1'  # prefill's two terms by cuBLAS
if os.environ.get('FP8_GLU'):  # FP8_GLU=1: the FP8 gate/up GEMM makes silu * up and its fp16 copy in its epilogue
    from hf_tp.kernels import prologue_pass
    prologue_pass.FP8_GLU_EPILOGUE = os.environ['FP8_GLU'] == '1'
if os.environ.get('COMBO'):  # Inductor's horizontal fusion of independent kernels (rope, cache writes, mask)
    import torch._inductor.config as c
    c.combo_kernels = True
if os.environ.get('GLOBAL_PDL'):  # the form measured faster on 2026-12-04: both switches on for the whole process
    import torch._inductor.config as c
    from hf_tp.kernels import pdl
    c.triton.enable_pdl = True
    pdl._ACTIVE = True
script = os.environ.get('SCRIPT')  # a benchmark script by path (its arguments follow), else run_system
sys.argv[0] = script or 'run_system'
try:
    runpy.run_path(script, run_name='__main__') if script else runpy.run_module('hf_tp.bench.run_system', run_name='__main__')
finally:  # did Inductor generate PDL code? (its output code holds each kernel's source and launch options)
    from torch._inductor.codecache import PyCodeCache
    texts = [open(m.__file__).read() for m in list(PyCodeCache.modules) if getattr(m, '__file__', None)]
    print('inductor output code:', len(texts), 'modules;', sum(t.count('gdc_wait') for t in texts), 'gdc_wait;',
          sum(t.count(\"'launch_pdl': True\") for t in texts), 'launch_pdl True;',
          sum(t.count('def triton_per_') for t in texts), 'persistent and', sum(t.count('def triton_red_') for t in texts),
          'looped reductions', flush=True)"
row() {  # row NAME SECONDS_NEEDED WEIGHTS EXTRA_ARGS... : one run_system row into $OUT/e2e_NAME.jsonl (env flips apply)
  local name=$1 need=$2 w=$3; shift 3
  step "$name" "$need" python -c "$FLIP" --system hf_tp --mode compile --tp-size 1 --model "$CK/llama3-8b-$w" \
    --out "$OUT/e2e_$name.jsonl" "$@"
}
ab() {  # ab VAR NAME SECONDS_NEEDED WEIGHTS EXTRA_ARGS... : rows with VAR=0 and VAR=1, interleaved twice
  local var=$1 name=$2; shift 2
  for pass in "" b; do
    for v in 0 1; do ( export "$var=$v"; row "${name}$v$pass" "$@" ); done
  done
}
write_8b_ckpts() {  # the Llama-3-8B shape in bf16 and FP8 per channel, from the same draw, in the background
  write_ckpt llama3-8b "$CK/llama3-8b-bf16" 200 bf16 &
  write_ckpt llama3-8b "$CK/llama3-8b-fp8-channel" 240 fp8-channel &
}
if [ "$CALL" = 68 ]; then  # CALL=58 (issue 21 on this GPU) with issue 19's eager prefill first: bf16 and FP8 per
  # channel (lanes on and off) in one process, interleaved (benchmarks/prefill_ab.py), because separate processes
  # measured the host's drift (CALL=67, thirty-sixth session)
  write_8b_ckpts
  CALL=58 AB_FIRST=1
fi
if [ "$CALL" = 70 ]; then  # a short call (any GPU, thirty-seventh session): the prefill lanes without their views and
  # the lighter bound launch, their GPU test and the one-process prefill comparison alone
  write_8b_ckpts
  step tests_lane 90 $T tests/test_fp8_kernel.py -k "prefill_lane or launch_cache"
  wait
  step prefill_ab 60 python benchmarks/prefill_ab.py --bf16 "$CK/llama3-8b-bf16" --fp8 "$CK/llama3-8b-fp8-channel" \
    --json "$OUT/prefill_ab.json"
  step prefill_ab2 60 python benchmarks/prefill_ab.py --bf16 "$CK/llama3-8b-bf16" --fp8 "$CK/llama3-8b-fp8-channel" \
    --json "$OUT/prefill_ab2.json"
  CALL=done
fi
if [ "$CALL" = 71 ]; then  # any GPU (thirty-eighth session): issue 18's and 21's rows with the GPU-timed decode rate
  # (run_system's decode_tok_s_gpu: CUDA events around the decode steps, no prefill in it) beside decode_tok_s (a full
  # generate's wall minus a prefill-only one's: the eager prefill's host drift of tens of ms is in it, and the
  # narrower the rank, the shorter the decode it is set against), its GPU test first, then tp 1 and the ranks of
  # tp 2, 4 and 8 in bf16, qwen3-moe-mini at tp 1 and its rank of tp 2, and the same rows again
  write_ckpt llama3-8b "$CK/llama3-8b-bf16" 200 bf16 &
  write_ckpt qwen3-moe-mini "$CK/qwen3-moe-mini" 300 bf16 &
  H200=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -c H200)
  # on an H200, issue 19's prefill bar too (the viewless lanes: 0.9465x bf16 on the H100 in call 1), after the first pass
  [ "$H200" = 1 ] && write_ckpt llama3-8b "$CK/llama3-8b-fp8-channel" 240 fp8-channel &
  # the timing's GPU test (the whole file, with the eos checks that queue a step ahead, passed in the thirty-eighth
  # session's call 2: 7 passed on an H100)
  step tests_timing 60 $T tests/test_gpu_loop.py -k decode_timings
  wait
  M="--system hf_tp --mode compile --tp-size 1 --model $CK/qwen3-moe-mini --batches 1"
  for pass in "" b; do
    if [ "$pass" = b ] && [ "$H200" = 1 ]; then
      step prefill_ab 60 python benchmarks/prefill_ab.py --bf16 "$CK/llama3-8b-bf16" --fp8 "$CK/llama3-8b-fp8-channel" \
        --json "$OUT/prefill_ab.json"
    fi
    row "tp1_bf16$pass" 45 bf16 --batches 1
    row "r2_bf16$pass" 45 bf16 --simulate-tp 2 --batches 1
    step "moe_tp1$pass" 50 python -c "$FLIP" $M --out "$OUT/e2e_moe_tp1$pass.jsonl"
    step "moe_r2$pass" 50 python -c "$FLIP" $M --simulate-tp 2 --out "$OUT/e2e_moe_r2$pass.jsonl"
    row "r4_bf16$pass" 45 bf16 --simulate-tp 4 --batches 1
    row "r8_bf16$pass" 45 bf16 --simulate-tp 8 --batches 1
  done
  CALL=done
fi
if [ "$CALL" = 69 ]; then  # on a GPU other than an H200: 68's prefill comparison, then CALL=66 (issue 18's lead)
  write_8b_ckpts
  # the prefill lanes without their views and the lighter bound launch (thirty-seventh session): their GPU test
  step tests_lane 90 $T tests/test_fp8_kernel.py -k "prefill_lane or launch_cache"
  wait
  step prefill_ab 100 python benchmarks/prefill_ab.py --bf16 "$CK/llama3-8b-bf16" --fp8 "$CK/llama3-8b-fp8-channel" \
    --json "$OUT/prefill_ab.json"
  CALL=66
fi
if [ "$CALL" = 58 ]; then  # issue 21's rank of tp 2 (1.39-1.42x of 1.5x on the H200, twenty-ninth session): where its
  # time goes, with additive kernel times (PDL off: with it on, a kernel's time overlaps the one before it, 1720.5 µs
  # of kernels in 988.8 µs of wall), beside the rows with PDL on and off
  write_ckpt qwen3-moe-mini "$CK/qwen3-moe-mini" 300 bf16 &
  # the staged GPU load (qwen3_moe at tp 2: down_proj's columns now strided views of the file's map; 7 passed on an
  # H100 in the thirtieth session) and the routing kernel's tests (its installation is cached per forward since
  # then; its top-k rounds are integer maxima and its sorting network runs only on ties since the thirty-first
  # session: both run on CPU only), meanwhile
  step tests_load 150 $T tests/test_gpu_load.py tests/test_moe_routing.py
  wait
  if [ -n "${AB_FIRST:-}" ]; then
    step prefill_ab 100 python benchmarks/prefill_ab.py --bf16 "$CK/llama3-8b-bf16" --fp8 "$CK/llama3-8b-fp8-channel" \
      --json "$OUT/prefill_ab.json"
    rm -rf "$CK/llama3-8b-bf16" "$CK/llama3-8b-fp8-channel"  # the MoE rows' page cache
  fi
  M="--system hf_tp --mode compile --tp-size 1 --model $CK/qwen3-moe-mini --batches 1"
  step moe_tp1 60 python -c "$FLIP" $M --out "$OUT/e2e_moe_tp1.jsonl"
  step moe_r2 60 python -c "$FLIP" $M --simulate-tp 2 --out "$OUT/e2e_moe_r2.jsonl"
  # the load bar (>= 10 GB/s, faster than Transformers) after the thirtieth session's per-key changes
  step moe_hf_load 60 python -m hf_tp.bench.run_system --system transformers --mode eager --tp-size 1 \
    --model "$CK/qwen3-moe-mini" --batches 1 --new-tokens 4 --out "$OUT/e2e_moe_hf_load.jsonl"
  step moe_tp1_load2 60 python -c "$FLIP" $M --out "$OUT/e2e_moe_tp1_load2.jsonl"
  ( export HF_TP_PDL=0
    step moe_r2_nopdl_prof 70 python -c "$FLIP" $M --simulate-tp 2 --profile 64 --out "$OUT/e2e_moe_r2_nopdl_prof.jsonl"
    step moe_tp1_nopdl_prof 70 python -c "$FLIP" $M --profile 64 --out "$OUT/e2e_moe_tp1_nopdl_prof.jsonl" )
  step moe_r2_again 60 python -c "$FLIP" $M --simulate-tp 2 --out "$OUT/e2e_moe_r2_again.jsonl"
  step moe_tp1_again 60 python -c "$FLIP" $M --out "$OUT/e2e_moe_tp1_again.jsonl"
elif [ "$CALL" = 67 ]; then  # issue 19's "prefill not slower than bf16" (H200: eager prefill_ms 34.3 bf16 against
  # 35.9 FP8 per channel; the forward is host-bound): the FP8 layers' bound prefill launches (hf_tp.kernels.fp8,
  # "lanes", thirty-sixth session) against the full path, bf16 beside them, interleaved twice; their GPU test and
  # the GEMV's GPU tests first (not run since the thirty-fifth session's prefetch_lines refactor)
  write_8b_ckpts
  step tests_lane 90 $T tests/test_fp8_kernel.py -k "prefill_lane or launch_cache"
  step tests_gemv 150 $T tests/test_decode_gemm.py
  wait
  for pass in "" b; do
    step pf_bf16$pass 50 python benchmarks/prefill_profile.py --model "$CK/llama3-8b-bf16" --json "$OUT/pf_bf16$pass.json"
    step pf_fp8c_lanes$pass 50 python benchmarks/prefill_profile.py --model "$CK/llama3-8b-fp8-channel" \
      --json "$OUT/pf_fp8c_lanes$pass.json"
    step pf_fp8c_full$pass 50 python benchmarks/prefill_profile.py --model "$CK/llama3-8b-fp8-channel" --no-lanes \
      --json "$OUT/pf_fp8c_full$pass.json"
  done
  row tp1_bf16 45 bf16 --batches 1
  row tp1_fp8c 45 fp8-channel --batches 1
  ( export LANES=0; row tp1_fp8c_nolanes 45 fp8-channel --batches 1 )
elif [ "$CALL" = 66 ]; then  # issue 18's lead from the thirty-fifth session: one process of the rank of tp 4 ran
  # 603.15 tok/s over its three runs, the same command a minute later 542.43. Six processes of that row, each with
  # the profiler (kernel times per token; PDL on, the default there, so they overlap but still compare kernel by
  # kernel): a fast one beside a slow one shows which kernel differs
  write_ckpt llama3-8b "$CK/llama3-8b-bf16" 200 bf16
  for n in 1 2 3 4 5 6; do row r4_bf16_prof$n 55 bf16 --simulate-tp 4 --batches 1 --profile 64; done
  step r4_diff 5 python benchmarks/profile_diff.py "$OUT"/e2e_r4_bf16_prof*.jsonl  # kernel by kernel, side by side
elif [ "$CALL" = 65 ]; then  # issue 21's rank of tp 2 (1.39-1.42x of 1.5x on the H200) with CALL=64's prefetches
  # (PDL is on for MoE models at every width): at the rank of tp 2 the attention GEMMs' weights fit the 13 MB limit
  # (q/k/v 10.5 MB, o_proj 8.4 MB), at tp 1 only the router's does; tp 1 and the rank of tp 2 each way, twice
  write_ckpt qwen3-moe-mini "$CK/qwen3-moe-mini" 300 bf16
  M="--system hf_tp --mode compile --tp-size 1 --model $CK/qwen3-moe-mini --batches 1"
  export PFB=13631488
  for pass in "" b; do
    for v in none pfkv; do
      f=0; [ $v = pfkv ] && f=1
      ( export PF=$f KVPF=$f
        step moe_tp1_$v$pass 60 python -c "$FLIP" $M --out "$OUT/e2e_moe_tp1_$v$pass.jsonl"
        step moe_r2_$v$pass 60 python -c "$FLIP" $M --simulate-tp 2 --out "$OUT/e2e_moe_r2_$v$pass.jsonl" )
    done
  done
elif [ "$CALL" = 64 ]; then  # issue 18's narrow ranks (H200: tp 8 at 890.9 of 1000, tp 4 at 630.3 of 700 tok/s):
  # with PDL (on from tp 4), what the next kernel can read before its PDL wait, asked of L2 while the kernel before
  # (a norm, attention, the rope and cache write: latency-bound, the DRAM idle) runs: "pf" the GEMMs whose weight
  # is at most 13 MB (q/k/v and o_proj at tp 4 and 8), "pfkv" that and attention's cached keys and values; against
  # neither, interleaved twice at tp 8 (the sixth session's prefetch of every weight, gate/up included, was slower)
  step tests_prefetch 60 $T tests/test_decode_attention.py -k programmatic
  write_ckpt llama3-8b "$CK/llama3-8b-bf16" 200 bf16
  export PFB=13631488
  for pass in "" b; do
    ( export PF=0 KVPF=0; row r8_none$pass 45 bf16 --simulate-tp 8 --batches 1 )
    ( export PF=1 KVPF=0; row r8_pf$pass 45 bf16 --simulate-tp 8 --batches 1 )
    ( export PF=1 KVPF=1; row r8_pfkv$pass 45 bf16 --simulate-tp 8 --batches 1 )
  done
  ( export PF=0 KVPF=0; row r4_none 55 bf16 --simulate-tp 4 --batches 1 )
  ( export PF=1 KVPF=1; row r4_pfkv 55 bf16 --simulate-tp 4 --batches 1 )
elif [ "$CALL" = 63 ]; then  # issue 18's rank of tp 2 (393.8 of 420 tok/s on the H200): PDL on against off (the
  # default below tp 4 for dense models, pdl.PDL_MIN_TP_SIZE), interleaved twice, then tp 1 the same way. PDL was
  # measured at the rank of tp 2 only in the seventh session (+0.9 %), before Inductor's kernels took it too
  write_ckpt llama3-8b "$CK/llama3-8b-bf16" 200 bf16
  ab HF_TP_PDL r2_bf16_pdl 45 bf16 --simulate-tp 2 --batches 1
  ab HF_TP_PDL tp1_bf16_pdl 45 bf16 --batches 1
elif [ "$CALL" = 62 ]; then  # issue 18's narrow ranks (the H200's ranks of tp 4 and 8 at 630.3 and 890.9 tok/s of 700
  # and 1000, twenty-ninth session): where their time goes, with additive kernel times (PDL off), beside their rows
  # with the defaults (PDL on at tp >= 4); the last profile of the rank of tp 8 is the tenth session's
  write_ckpt llama3-8b "$CK/llama3-8b-bf16" 200 bf16
  row r8_bf16 45 bf16 --simulate-tp 8 --batches 1
  ( export HF_TP_PDL=0
    row r8_bf16_nopdl_prof 60 bf16 --simulate-tp 8 --batches 1 --profile 64
    row r4_bf16_nopdl_prof 60 bf16 --simulate-tp 4 --batches 1 --profile 64 )
  row r4_bf16 45 bf16 --simulate-tp 4 --batches 1
  ( export HF_TP_PDL=0; row r2_bf16_nopdl_prof 60 bf16 --simulate-tp 2 --batches 1 --profile 64 )
  row r8_bf16_again 45 bf16 --simulate-tp 8 --batches 1
elif [ "$CALL" = 61 ]; then  # issue 19's FP8 per channel with this GPU's own entries, the GEMV's fp16 form in the
  # sweep's grid (CALL=59 on an H100, thirty-third session: 4 warps in fp16 took tp 1 from 1.52-1.55x to 1.58x bf16;
  # per GEMM, down -17 % and gate/up -15 %): one sweep at tp-1 and tp-2 widths (batch 1) into this GPU's
  # DEVICE_TABLES key (an empty "H200" key is put in first where the GPU has none), its entries' GPU test, then
  # tp 1 and the rank of tp 2 with the shipped table and with the swept one, interleaved, and bf16 for the ratio
  write_8b_ckpts
  KEY=$(python -c "import torch; from hf_tp.kernels import gemv_triton as gt; print(gt.device_table_key(torch.cuda.get_device_name()))")
  if [ -z "$KEY" ]; then
    KEY=H200
    sed -i 's/^DEVICE_TABLES: dict\[str, dict\[tuple, dict\]\] = {$/&\n    "H200": {},/' hf_tp/kernels/gemv_table.py
  fi
  cp hf_tp/kernels/gemv_table.py /tmp/gemv_table_shipped.py
  mkdir -p "$OUT/own"
  # the prefill lanes without their views (thirty-seventh session): their GPU test, and prefill_ab.py after the wait
  step tests_lane 90 $T tests/test_fp8_kernel.py -k "prefill_lane or launch_cache"
  step sweep_own 150 timeout 180 python benchmarks/fp8_gemm.py --out "$OUT/own/sweep.json" --tps 1,2 --ms 1 --sweep \
    --precompile 15 --kinds fp8 --fp8-scales channel --gemms qkv,o,gate_up,down --device-table "$KEY"
  wait
  step prefill_ab 60 python benchmarks/prefill_ab.py --bf16 "$CK/llama3-8b-bf16" --fp8 "$CK/llama3-8b-fp8-channel" \
    --json "$OUT/prefill_ab.json"
  use_table() {  # use_table shipped|swept: which gemv_table.py the next rows import
    if [ "$1" = swept ] && [ -f "$OUT/own/gemv_table.py" ]; then cp "$OUT/own/gemv_table.py" hf_tp/kernels/gemv_table.py
    else cp /tmp/gemv_table_shipped.py hf_tp/kernels/gemv_table.py; fi
  }
  use_table swept
  step tests_own 40 $T tests/test_fp8_kernel.py -k every_device_table
  row tp1_fp8c_swept 45 fp8-channel --batches 1
  use_table shipped; row tp1_fp8c_shipped 45 fp8-channel --batches 1
  row tp1_bf16 40 bf16 --batches 1
  use_table swept; row r2_fp8c_swept 45 fp8-channel --batches 1 --simulate-tp 2
  use_table shipped; row r2_fp8c_shipped 45 fp8-channel --batches 1 --simulate-tp 2
  row tp1_fp8c_shippedb 40 fp8-channel --batches 1
  use_table swept; row tp1_fp8c_sweptb 40 fp8-channel --batches 1
elif [ "$CALL" = 60 ]; then  # CALL=59's short form, no checkpoint (for a call with little time): the fp16 GEMV
  # against the shipped configs per GEMM at tp-1 and tp-2 widths (GPU time), then its GPU tests
  step f16_gemv 90 python benchmarks/fp8_gemv_f16.py --tps 1,2 --out "$OUT/f16_gemv.json"
  step tests_f16 60 $T tests/test_fp8_kernel.py -k "gemv_fp16_form or every_device_table"
elif [ "$CALL" = 59 ]; then  # issue 19's FP8 per-channel GEMV in fp16 (gemv_triton._gemv_f16_sums, thirty-second
  # session: 30 instructions per 16 weights in the sm_90 build against 80 for fp32 sums, where the H200's tp-1 GEMV
  # read at 63 % of its copy bandwidth): its GPU tests while the checkpoints are written, then tp 1 and the rank
  # of tp 2 in FP8 per channel with the fp16 form set on three of their GEMMs (GEMV_ENTRIES: 4 rows x 1 KB, 8 warps as
  # TABLE's GEMV, and 4 warps) against the shipped configs, interleaved, bf16 for the ratio, and one profile
  write_8b_ckpts
  step tests_f16 100 $T tests/test_fp8_kernel.py -k "gemv_fp16_form or every_device_table or fp16_form_at"
  wait
  f16_entries() {  # f16_entries WARPS N,K ...: GEMV_ENTRIES JSON, the fp16 form at these per-channel shapes
    local warps=$1; shift
    python -c "import json, sys; print(json.dumps([['gemv', 1, *map(int, s.split(',')), 'channel', dict(path='gemv',
      BLOCK_N=4, BLOCK_K=1024, num_warps=int(sys.argv[1]), num_stages=1, SPLIT=1, X16=True)] for s in sys.argv[2:]]))" \
      "$warps" "$@"
  }
  # q/k/v, gate/up, down at tp 1; the rank of tp 2's below. Not o_proj: its x comes from the attention kernel, so
  # its fp16 copy would be a kernel of its own (the others' copies fuse into the norm and silu * mul kernels)
  TP1="6144,4096 28672,4096 4096,14336"
  R2="3072,4096 14336,4096 4096,7168"
  # shellcheck disable=SC2086
  F16_TP1=$(f16_entries 8 $TP1); F16_TP1_W4=$(f16_entries 4 $TP1); F16_R2=$(f16_entries 8 $R2)
  row tp1_fp8c_shipped 45 fp8-channel --batches 1
  ( export GEMV_ENTRIES=$F16_TP1; row tp1_fp8c_f16 45 fp8-channel --batches 1 )
  row tp1_bf16 40 bf16 --batches 1
  ( export GEMV_ENTRIES=$F16_TP1_W4; row tp1_fp8c_f16w4 45 fp8-channel --batches 1 )
  ( export GEMV_ENTRIES=$F16_R2; row r2_fp8c_f16 45 fp8-channel --batches 1 --simulate-tp 2 )
  row r2_fp8c_shipped 45 fp8-channel --batches 1 --simulate-tp 2
  row tp1_fp8c_shippedb 45 fp8-channel --batches 1
  ( export GEMV_ENTRIES=$F16_TP1; row tp1_fp8c_f16b 45 fp8-channel --batches 1 )
  ( export GEMV_ENTRIES=$F16_TP1 HF_TP_PDL=0; row tp1_fp8c_f16_prof 50 fp8-channel --batches 1 --profile 64 )
elif [ "$CALL" = 57 ]; then  # issue 19's tp-1 FP8 bars on the H200 (1.29-1.33x at batch 1, 1.18x at batch 8 in the
  # twenty-ninth session; the GEMV at 63 % of the copy bandwidth): the H200's own per-channel entries, swept here
  # (TABLE's FP8 configs were swept with block scales; the H100's per-channel sweep gave 5 % end to end), then tp 1
  # with and without them, interleaved twice, PDL on at tp 1, bf16 for the ratio, and the 8B-width GPU tests
  # through the entries. The sweep needs a DEVICE_TABLES key this GPU's name contains: an empty "H200" key is put
  # into this device's copy of gemv_table.py only (the sweep's own gemv_table.py, with the entries, comes back).
  write_8b_ckpts
  sed -i 's/^DEVICE_TABLES: dict\[str, dict\[tuple, dict\]\] = {$/&\n    "H200": {},/' hf_tp/kernels/gemv_table.py
  mkdir -p "$OUT/h200c"
  # MS=1 (a short call): the batch-1 entries only, and the first rows at batch 1
  step sweep_h200c 100 timeout 130 python benchmarks/fp8_gemm.py --out "$OUT/h200c/sweep.json" --tps 1 --ms "${MS:-1,8}" --sweep \
    --precompile 15 --kinds fp8 --fp8-scales channel --gemms qkv,o,gate_up,down --device-table H200
  wait
  if [ -f "$OUT/h200c/gemv_table.py" ]; then cp "$OUT/h200c/gemv_table.py" hf_tp/kernels/gemv_table.py; fi
  ( export DEVICE_TABLE=0; row tp1_fp8c_default 45 fp8-channel --batches "${MS:-1,8}" )
  row tp1_fp8c_h200 45 fp8-channel --batches "${MS:-1,8}"
  step tests_8b 90 $T tests/test_gpu_fp8.py -k 8b
  ( export DEVICE_TABLE=0; row tp1_fp8c_defaultb 40 fp8-channel --batches 1 )
  row tp1_fp8c_h200b 40 fp8-channel --batches 1
  ( export DEVICE_TABLE=0 HF_TP_PDL=1; row tp1_fp8c_pdl 40 fp8-channel --batches 1 )
  row tp1_bf16 40 bf16 --batches 1
elif [ "$CALL" = 55 ]; then  # TPConfig.compile_prefill after the twenty-seventh session's changes (gloo on CUDA eager,
  # weights' shapes static): its GPU tests, the FP8 prefill compiled, then rows with and without it (ttft_s)
  write_8b_ckpts
  # (test_gpu_loop.py and test_gpu_fp8.py's first five models passed with it in the twenty-eighth session's call)
  ( export HF_TP_COMPILE_PREFILL=1; step tests_compile_prefill 150 $T tests/test_gpu_fp8.py --log-cli-level=WARNING \
    -k "channel or pdl or glu" )
  wait
  P="python benchmarks/prefill_profile.py --compile"
  step prefill_c_fp8c 80 $P --model "$CK/llama3-8b-fp8-channel" --json "$OUT/prefill_c_fp8c.json"
  step prefill_c_fp8c_mm 80 $P --model "$CK/llama3-8b-fp8-channel" --two-term 1000000 --scaled-mm \
    --json "$OUT/prefill_c_fp8c_mm.json"
  step prefill_c_bf16 80 $P --model "$CK/llama3-8b-bf16" --json "$OUT/prefill_c_bf16.json"
  ( export HF_TP_COMPILE_PREFILL=1; row cp1_bf16 100 bf16 --batches 1 )
  ( export HF_TP_COMPILE_PREFILL=0; row cp0_bf16 60 bf16 --batches 1 )
elif [ "$CALL" = 54 ]; then  # the GPU tests of the per-decoder compile, the all-gather layout and compile_prefill,
  # then the 8B prefill forward compiled (bf16, FP8 per channel two ways)
  write_8b_ckpts
  step tests_own_code 180 $T tests/test_gpu_fp8.py tests/test_gpu_loop_requests.py tests/test_gpu.py
  ( export HF_TP_COMPILE_PREFILL=1; step tests_compile_prefill 90 $T tests/test_gpu_loop.py )
  wait
  P="python benchmarks/prefill_profile.py --compile"
  step prefill_c_bf16 80 $P --model "$CK/llama3-8b-bf16" --json "$OUT/prefill_c_bf16.json"
  step prefill_c_fp8c 80 $P --model "$CK/llama3-8b-fp8-channel" --json "$OUT/prefill_c_fp8c.json"
  step prefill_c_fp8c_mm 80 $P --model "$CK/llama3-8b-fp8-channel" --two-term 1000000 --scaled-mm \
    --json "$OUT/prefill_c_fp8c_mm.json"
  ( export HF_TP_COMPILE_PREFILL=1; row cp_bf16 60 bf16 --batches 1 )
  ( export HF_TP_COMPILE_PREFILL=1; row cp_fp8c 60 fp8-channel --batches 1 )
elif [ "$CALL" = 53 ]; then  # the GPU tests of the per-decoder compile, then the H100 rows beside them
  write_8b_ckpts
  write_ckpt qwen3-moe-mini "$CK/qwen3-moe-mini" 300 bf16 &
  step tests_own_code 150 $T tests/test_gpu_fp8.py tests/test_gpu_loop_requests.py
  step tests_loop 120 $T tests/test_gpu_loop.py tests/test_decode_loop.py
  wait
  row tp1_bf16 60 bf16 --batches 1
  row tp1_fp8c 60 fp8-channel --batches 1
  M="--system hf_tp --mode compile --tp-size 1 --model $CK/qwen3-moe-mini --batches 1"
  step moe_tp1 70 python -c "$FLIP" $M --out "$OUT/e2e_moe_tp1.jsonl"
  step moe_r2 70 python -c "$FLIP" $M --simulate-tp 2 --out "$OUT/e2e_moe_r2.jsonl"
elif [ "$CALL" = 52 ]; then  # the whole GPU suite, file by file, the kernels' files first
  for f in decode_attention decode_gemm fp8_kernel gemm_norms persistent_norms prologue_pass moe_kernel moe_routing \
      sort_free decode_loop gpu gpu_fp8 gpu_load gpu_loop gpu_loop_requests gpu_exit gpu_nccl_graph gpu_orchestration; do
    step "tests_$f" 45 $T -rfEs "tests/test_$f.py"
  done
elif [ "$CALL" = 51 ]; then  # profiles of the bars still short on the H100 (issues 19 and 21), with rows beside them
  write_8b_ckpts
  write_ckpt qwen3-moe-mini "$CK/qwen3-moe-mini" 300 bf16 &
  wait
  row tp1_bf16 60 bf16 --batches 1
  row tp1_fp8c 60 fp8-channel --batches 1
  row tp1_fp8c_prof 70 fp8-channel --batches 1 --profile 64
  step prefill_bf16 60 python benchmarks/prefill_profile.py --model "$CK/llama3-8b-bf16" --json "$OUT/prefill_bf16.json" \
    --cprofile 3
  step prefill_fp8c 60 python benchmarks/prefill_profile.py --model "$CK/llama3-8b-fp8-channel" \
    --json "$OUT/prefill_fp8c.json" --cprofile 3
  M="--system hf_tp --mode compile --tp-size 1 --model $CK/qwen3-moe-mini --batches 1"
  step moe_tp1 70 python -c "$FLIP" $M --out "$OUT/e2e_moe_tp1.jsonl"
  step moe_r2 70 python -c "$FLIP" $M --simulate-tp 2 --out "$OUT/e2e_moe_r2.jsonl"
  step moe_r2_prof 80 python -c "$FLIP" $M --simulate-tp 2 --profile 64 --out "$OUT/e2e_moe_r2_prof.jsonl"
  step moe_tp1_prof 80 python -c "$FLIP" $M --profile 64 --out "$OUT/e2e_moe_tp1_prof.jsonl"
elif [ "$CALL" = 50 ]; then  # FP8 entries keyed by scale layout (twenty-fourth session), on the H100: their tests,
  # then block-scaled FP8 end to end as shipped (TABLE's configs, plus the rank of tp 2's block entry for down)
  # against the per-channel entries applied to block weights (what ran before the layout key; OLD_BLOCK, saved in
  # $OUT/old_block.json), interleaved twice at tp 1 and the rank of tp 2; then the 8B cases and the MoE kernels' GPU
  # tests with what is left
  write_ckpt llama3-8b "$CK/llama3-8b-fp8-block" 240 fp8-block &
  step tests_layout 60 $T tests/test_fp8_kernel.py -k "device_table or scale_layout"
  OLD_BLOCK=$(python -c "import json; from hf_tp.kernels.gemv_table import DEVICE_TABLES as D
print(json.dumps([[*k[:4], 'block', v] for k, v in D['H100 80GB HBM3'].items() if k[4:] == ('channel',)]))")
  echo "$OLD_BLOCK" > "$OUT/old_block.json"
  [ -n "$OLD_BLOCK" ] || { echo "CALL=50: OLD_BLOCK is empty" | tee -a "$OUT/log.txt"; pack; exit 1; }
  wait
  for pass in "" b; do
    row "tp1_fp8b_layout$pass" 50 fp8-block --batches 1
    GEMV_ENTRIES=$OLD_BLOCK row "tp1_fp8b_channel_entries$pass" 50 fp8-block --batches 1
    row "r2_fp8b_layout$pass" 45 fp8-block --simulate-tp 2 --batches 1
    GEMV_ENTRIES=$OLD_BLOCK row "r2_fp8b_channel_entries$pass" 45 fp8-block --simulate-tp 2 --batches 1
  done
  step tests_8b 70 $T tests/test_gpu_fp8.py -k 8b
  step tests_moe 150 $T tests/test_moe_kernel.py
elif [ "$CALL" = 49 ]; then  # the ranks of tp 4 and 8 in FP8 with and without the H100 entries the 48th call's
  # sweeps added (tp 4: o, gate/up, down; tp 8: q/k/v, gate/up, down), interleaved twice; the entry test first, and
  # the MoE expert blocks sweep call 48 had no time for while the checkpoint is written
  write_ckpt llama3-8b "$CK/llama3-8b-fp8-channel" 240 fp8-channel &
  step tests_device_table 100 $T tests/test_fp8_kernel.py -k device_table
  step moe_blocksa 60 python benchmarks/moe_switch.py --out "$OUT/moe_blocksa.jsonl" --widths 768,384 --tokens 1 --sweep
  wait
  for pass in "" b; do
    for n in 4 8; do
      DEVICE_TABLE=0 row "r${n}_fp8c_default$pass" 45 fp8-channel --simulate-tp $n --batches 1
      row "r${n}_fp8c_h100$pass" 45 fp8-channel --simulate-tp $n --batches 1
    done
  done
elif [ "$CALL" = 48 ]; then  # more H100 entries: each sweep twice (benchmarks/device_table_merge.py keeps a shape's
  # winner only where both runs, and both FP8 scale layouts, agree), in priority order: FP8 per channel at tp 4 and
  # 8 widths; block scales at tp 1 and 2 (the H100 entries of 2026-12-06 were chosen on per-channel sweeps);
  # qwen3-moe-mini's bf16 attention and router GEMMs at tp 1 and 2 (issue 21's rows); block scales at tp 4 and 8
  S="python benchmarks/fp8_gemm.py --ms 1 --sweep --precompile 15"
  H="H100 80GB HBM3"  # gemv_table.DEVICE_TABLES' key
  F="--kinds fp8 --gemms qkv,o,gate_up,down"
  sweep() {  # sweep NAME SECONDS ARGS...: one sweep into $OUT/NAME/sweep.json (its gemv_table.py beside it)
    local name=$1 need=$2; shift 2
    mkdir -p "$OUT/$name"
    step "sweep_$name" "$need" $S "$@" --out "$OUT/$name/sweep.json" --device-table "$H"
  }
  for run in a b; do sweep "c48$run" 90 $F --tps 4,8 --fp8-scales channel; done
  for run in a b; do sweep "b12$run" 90 $F --tps 1,2 --fp8-scales block; done
  for run in a b; do sweep "moe$run" 70 --model qwen3-moe-mini --kinds bf16 --gemms qkv,o,router --tps 1,2; done
  # the MoE expert kernels' blocks (moe_decode.GATE_UP_BLOCKS / DOWN_BLOCKS, swept on an H200), twice on the H100
  for run in a b; do step "moe_blocks$run" 60 python benchmarks/moe_switch.py --out "$OUT/moe_blocks$run.jsonl" \
    --widths 768,384 --tokens 1 --sweep; done
  for run in a b; do sweep "b48$run" 90 $F --tps 4,8 --fp8-scales block; done
  step merge_fp8 20 python benchmarks/device_table_merge.py "$OUT"/c48?/sweep.json "$OUT"/b12?/sweep.json \
    "$OUT"/b48?/sweep.json
  step merge_moe 20 python benchmarks/device_table_merge.py "$OUT"/moe?/sweep.json
elif [ "$CALL" = 47 ]; then  # GPU tests: the H100 entries end to end at the 8B widths; the two decode-GEMM tests that
  # failed in the twenty-third session's hand-run call (without this script's PYTHONPATH); the loop, its GEMM
  # passes and the MoE kernels
  step tests_8b 200 $T tests/test_gpu_fp8.py -k 8b  # one layer at 8B widths: the decode loop through the H100 entries
  step tests_rerun 200 $T tests/test_decode_gemm.py -k "gpu_decode_loop_with_kernel or two_gloo_ranks_on_one_gpu"
  step tests_gemm 200 $T tests/test_decode_gemm.py tests/test_gpu_loop.py tests/test_prologue_pass.py tests/test_gemm_norms.py
  step tests_moe 150 $T tests/test_moe_kernel.py
elif [ "$CALL" = 46 ]; then  # the rank of tp 2 in FP8 with and without this GPU's own entries, interleaved twice,
  # with bf16 for the ratio, and tp 1 at batch 8; the table's GPU tests first
  write_8b_ckpts
  step tests_device_table 150 $T tests/test_fp8_kernel.py -k "device_table or glu_epilogue or pdl"
  wait
  for pass in "" b; do
    DEVICE_TABLE=0 row "r2_fp8c_default$pass" 50 fp8-channel --simulate-tp 2 --batches 1
    row "r2_fp8c_h100$pass" 50 fp8-channel --simulate-tp 2 --batches 1
  done
  row r2_bf16 45 bf16 --simulate-tp 2 --batches 1
  row tp1_fp8c_h100_b8 60 fp8-channel --batches 8
  row tp1_bf16_b8 60 bf16 --batches 8
elif [ "$CALL" = 45 ]; then  # tp-1 FP8 with and without this GPU's own entries (gemv_table.DEVICE_TABLES), tested,
  # interleaved twice (DEVICE_TABLE=0: TABLE alone), and bf16 for the ratio
  write_8b_ckpts
  step tests_device_table 150 $T tests/test_fp8_kernel.py -k "device_table or fp16_form or glu_epilogue or folded"
  wait
  for pass in "" b; do
    DEVICE_TABLE=0 row "tp1_fp8c_default$pass" 60 fp8-channel --batches 1
    row "tp1_fp8c_h100$pass" 60 fp8-channel --batches 1
  done
  row tp1_bf16 60 bf16 --batches 1
elif [ "$CALL" = 56 ]; then  # issue 21's H200 bars in one call, the closest issue to done: qwen3-moe-mini at tp 1
  # (batch 1 and 8, each with its floor), its rank of tp 2, Transformers loading the same folder from the same warm
  # page cache (its decode of 4 tokens is not a bar), and the dense 8B bf16 row beside them (the issue's sanity row)
  write_ckpt qwen3-moe-mini "$CK/qwen3-moe-mini" 300 bf16 &
  write_ckpt llama3-8b "$CK/llama3-8b-bf16" 200 bf16 &
  wait
  M="--system hf_tp --mode compile --tp-size 1 --model $CK/qwen3-moe-mini"
  step moe_tp1 90 python -c "$FLIP" $M --batches 1,8 --out "$OUT/e2e_moe_tp1.jsonl"
  step moe_r2 70 python -c "$FLIP" $M --batches 1 --simulate-tp 2 --out "$OUT/e2e_moe_r2.jsonl"
  step moe_hf_load 90 python -m hf_tp.bench.run_system --system transformers --mode eager --tp-size 1 \
    --model "$CK/qwen3-moe-mini" --batches 1 --new-tokens 4 --out "$OUT/e2e_moe_hf_load.jsonl"
  row tp1_bf16 60 bf16 --batches 1
  step moe_tp1_again 90 python -c "$FLIP" $M --batches 1 --out "$OUT/e2e_moe_tp1_again.jsonl"
  step moe_r2_again 70 python -c "$FLIP" $M --batches 1 --simulate-tp 2 --out "$OUT/e2e_moe_r2_again.jsonl"
elif [ "$CALL" = 41 ]; then  # issues 18 and 19's dense bars as their H200 targets state them, one call (run on an H200)
  write_8b_ckpts
  wait
  row tp1_bf16 60 bf16 --batches 1
  row tp1_fp8c 60 fp8-channel --batches 1
  row r2_bf16 45 bf16 --simulate-tp 2 --batches 1
  row r2_fp8c 50 fp8-channel --simulate-tp 2 --batches 1
  row r4_bf16 45 bf16 --simulate-tp 4 --batches 1
  row r8_bf16 45 bf16 --simulate-tp 8 --batches 1
  row tp1_bf16_4k 70 bf16 --batches 1 --prompt-len 4096
  step tests_own_code 150 $T tests/test_gpu_fp8.py tests/test_gpu_loop_requests.py  # see CALL=53
  # with what is left: the H200's FP8 per-channel sweep at tp 1 and 2 with today's grid (the H100 found the fp16
  # form with 128-row tiles faster at tp-1 gate/up, a config TABLE's H200 sweep may not have tried)
  step sweep_fp8c_h200 100 python benchmarks/fp8_gemm.py --out "$OUT/gemm_fp8c_h200.json" --tps 1,2 --ms 1 --sweep \
    --precompile 15 --kinds fp8 --fp8-scales channel --gemms qkv,o,gate_up,down
elif [ "$CALL" = 42 ]; then  # issue 21's MoE bars and issue 19's batch 8, one call (after 41, on an H200)
  write_ckpt qwen3-moe-mini "$CK/qwen3-moe-mini" 300 bf16 &
  write_8b_ckpts
  wait
  M="--system hf_tp --mode compile --tp-size 1 --model $CK/qwen3-moe-mini --batches 1"
  step moe_tp1 70 python -c "$FLIP" $M --out "$OUT/e2e_moe_tp1.jsonl"
  step moe_r2 70 python -c "$FLIP" $M --simulate-tp 2 --out "$OUT/e2e_moe_r2.jsonl"
  row tp1_bf16_b8 60 bf16 --batches 8
  row tp1_fp8c_b8 60 fp8-channel --batches 8
elif [ "$CALL" != done ]; then
  echo "next_cycle.sh: no CALL=$CALL here (41, 42, 45-71; earlier calls: benchmarks/RESULTS.md)" | tee -a "$OUT/log.txt"
  exit 2
fi
echo "done, $(left) s of the budget left" | tee -a "$OUT/log.txt"
tail -n 3 "$OUT"/tests_*.txt 2>/dev/null
tail -n 15 "$OUT"/requests_*.txt 2>/dev/null
python -c "
import glob, json
for f in sorted(glob.glob('$OUT/e2e_*.jsonl')):
    for l in open(f):
        r = json.loads(l); print(f.split('e2e_')[1][:-6], r.get('simulated_tp', 1), r['batch'], r['decode_tok_s'], r['ttft_s'],
                                 r.get('decode_tok_s_runs'), 'gpu', r.get('decode_tok_s_gpu'), r.get('decode_tok_s_gpu_runs'))"
pack
