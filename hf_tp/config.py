"""TPConfig: the options that change hf_tp's speed or numerics, resolved once per model.

Passed as ``from_pretrained(..., tp_size=2, tp_config=hf_tp.TPConfig(...))``, like Transformers'
``generation_config=``. ``from_pretrained`` resolves it once (defaults that depend on the device are
filled in, documented environment overrides applied), sends it to the workers in single-controller
mode, and keeps it as ``model.hf_tp_config``; the bench writes it into every row. Nothing under
hf_tp/parallel, hf_tp/generation or hf_tp/loading reads the environment: they get these values.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

# Environment variables that override a field, read once in resolve(): for a run that cannot change its
# code (a benchmark harness, a CI job). Values: 0/1 for booleans, numbers, or the option's string.
ENV_OVERRIDES = {
    "HF_TP_FAST_DECODE": "fast_decode",
    "HF_TP_CUDA_GRAPHS": "cuda_graphs",
    "HF_TP_ALLREDUCE": "allreduce",
    "HF_TP_ONE_SHOT_MAX_KB": "one_shot_max_kb",
    "HF_TP_REDUCE_FP32": "reduce_fp32",
    "HF_TP_FP32_LOGITS": "fp32_logits",
    "HF_TP_FUSE": "fuse",
    "HF_TP_LOAD_THREADS": "load_threads",
    "HF_TP_PINNED_LOAD": "pinned_load",
    "HF_TP_LOAD_CHUNK_MB": "load_chunk_mb",
    "HF_TP_LOAD_BUFFERS": "load_buffers",
    "HF_TP_MOE_DECODE": "moe_decode",
    "HF_TP_DECODE_ATTENTION": "decode_attention",
    "HF_TP_DECODE_GEMM": "decode_gemm",
    "HF_TP_PDL": "pdl",
    "HF_TP_COMBO_KERNELS": "combo_kernels",
    "HF_TP_GEMM_PROLOGUES": "gemm_prologues",
    "HF_TP_GEMM_EPILOGUES": "gemm_epilogues",
    "HF_TP_GEMM_NORMS": "gemm_norms",
    "HF_TP_PERSISTENT_NORMS": "persistent_norms",
    "HF_TP_FP8_WEIGHTS": "fp8_weights",
    "HF_TP_WEIGHTS": "weights",
    "HF_TP_FP8_ACTIVATIONS": "fp8_activations",
    "HF_TP_COMPILE_PREFILL": "compile_prefill",
}

# TPConfig.decode_gemm's default on CUDA with Triton: "triton". On one H200 (benchmarks/RESULTS.md, 2026-12-03,
# "skinny-M decode GEMMs measured") one Llama-3-8B layer's four decode GEMMs took 63.1 instead of 71.6 us at
# tp-2 widths (M = 1) and the rank of tp 2 decoded at 357.7 instead of 321.8 tok/s end to end.
DECODE_GEMM_DEFAULT = "triton"

# Options of the single-controller handle (how its workers are supervised and sized), passed to
# from_pretrained(..., tp_size=N, timeout_s=...) next to tp_config. They change neither speed nor numerics
# and mean nothing under a launcher, so they are not TPConfig fields; TPConfig(timeout_s=...) says where
# they go. hf_tp/orchestration takes them from here.
HANDLE_OPTIONS = ("timeout_s", "startup_timeout_s", "auto_restart", "max_memory_per_gpu", "kv_cache_tokens",
                  "collective_timeout_s")

# NVLink multicast off: on shared hosts a program that uses it can take the host's GPUs out of service.
DEFAULT_WORKER_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@dataclass(frozen=True)
class TPConfig:
    """Speed and numerics options of a tensor-parallel model. ``None`` means "the default for the device",
    filled in by :meth:`resolve`; the resolved values are what ``model.hf_tp_config`` shows.

    Decode:
      fast_decode: hf_tp's own decode loop (static cache, compiled step, one CUDA graph per token) for the
        requests it serves. Default: on for CUDA at tp_size 1; off at tp_size > 1 until the 2-GPU run confirms
        the captured step's tokens and a clean exit there (benchmarks/RESULTS.md); off on CPU, where there is
        nothing to compile or capture (True runs the loop without graphs, as the tests do).
        Read at each generate() call from ``model.hf_tp_config``.
      cuda_graphs: capture the loop's step in a CUDA graph (False: the loop runs eagerly; debugging).
      moe_decode: how mixture-of-experts layers compute small calls (decode steps): "triton" (hf_tp's kernels read
        only the experts the tokens chose, for calls of at most hf_tp.kernels.moe_decode.MOE_DECODE_MAX_TOKENS
        tokens; larger calls keep Transformers' grouped GEMM; and routers of a form hf_tp recognises choose the
        experts with one kernel, hf_tp.kernels.moe_routing, as torch.topk does on CUDA, ties included: which
        routers did is in ``model.hf_tp_moe_routing``) or "grouped" (Transformers' experts and routers always).
        Chosen once at load; experts modules the kernels cannot compute (quantized, biased, another activation)
        keep Transformers' forward either way. Default: "triton" on CUDA with Triton importable (measured faster
        on an H200 at batch 1 and 8, bf16 check passed: benchmarks/RESULTS.md 2026-12-03, docs/moe.md),
        "grouped" elsewhere.
        "triton" needs CUDA and Triton (or TRITON_INTERPRET=1 on CPU, for tests).
      decode_attention: how attention computes decode steps (one query token per sequence): "triton" (hf_tp's
        split-KV kernel, hf_tp.kernels.decode_attention: reads the KV cache only up to its filled slots, query
        heads of one KV head together, no copies of the cache; hf_tp.parallel.decode_attention lists the calls it
        serves, every other call goes to Transformers' sdpa unchanged) or "sdpa" (Transformers' sdpa always).
        Chosen once at load; applies to models loaded with sdpa attention (the default): a model loaded with
        another attn_implementation keeps it and shows "sdpa" here, as do GPUs older than compute capability 8.0.
        Default: "triton" on CUDA (one H200: Transformers' greedy tokens in fp32, the sdpa loop's in bf16 up to
        near-ties, 2-11x less attention time per layer; benchmarks/RESULTS.md 2026-12-03), "sdpa" on CPU.
        "triton" needs CUDA and Triton (or TRITON_INTERPRET=1 on CPU, for tests).
      decode_gemm: how the dense column/row-parallel linear layers (fused q/k/v and gate/up included) and the LM
        head compute calls of at most hf_tp.kernels.decode_gemm.DECODE_MAX_M (16) tokens, i.e. decode steps:
        "triton" (hf_tp's skinny-M kernels, hf_tp/kernels/gemv_triton.py, with a config per shape measured on an
        H200; deterministic, no atomics; the MoE routers' logits too, with moe_decode="triton") or "cublas"
        (torch's F.linear). Prefill, and eager calls on CUDA outside hf_tp's decode loop (Transformers' generate
        fallbacks: the kernels run in the loop and where a step is compiled or captured), keep cuBLAS; FP8
        layers have their own kernel (fp8_weights). Default: DECODE_GEMM_DEFAULT above ("triton", measured faster on an
        H200) on CUDA with Triton importable, "cublas" elsewhere. "triton" needs CUDA (compute capability 8.0+; a rank whose GPU is older
        falls back to "cublas" at load and shows it) and Triton, or TRITON_INTERPRET=1 on CPU (tests).
      pdl: programmatic dependent launch in the decode loop (Hopper and later): hf_tp's decode kernels (the GEMMs,
        decode attention, the MoE router and experts) and the kernels Inductor generates for the compiled step (where
        this torch has ``torch._inductor.config.triton.enable_pdl``) are launched so that a kernel is placed on the
        GPU while the one before it finishes, and waits for its results there (hf_tp/kernels/pdl.py). Tokens are
        the same bits either way. Default (None): on for models whose MoE experts run hf_tp's decode kernels and for
        dense models at tp_size >= 4 (``pdl.PDL_MIN_TP_SIZE``), or >= 2 where layers keep FP8 weights (half the
        bytes per GEMM), off for the others, decided at load (``resolve_pdl``) and shown in a launched model's
        ``hf_tp_config`` (the handle's shows None: each worker decides); True needs CUDA
        (older GPUs, and Triton without the launch, run without it). Measured on one H200 (benchmarks/RESULTS.md,
        2026-12-04, seventh session), batch 1: qwen3-moe-mini tp 1 609.9 -> 653.1 tok/s with it; the Llama-3-8B
        shape 222.4 -> 214.1 at tp 1 and 367.6 -> 363.8 at the rank of tp 2 (not faster); 774.3 -> 885.0 at the
        rank of tp 8 (2026-12-05); on one H100, 500.3 -> 515.0 at the rank of tp 4 (2026-12-05, thirteenth session),
        and FP8 per channel at the rank of tp 2, 426.3 / 429.5 -> 465.3 (2026-12-06, twenty-first session).
      combo_kernels: Inductor's combo kernels (``torch._inductor.config.combo_kernels``) for the decode loop's
        compiled step: independent small kernels of a layer (rope, the KV cache writes, the mask) launched as
        one. Same tokens (each element is computed as before). Default (None): on with CUDA, where one H200
        measured the rank of tp 2 of the Llama-3-8B shape at 370.1 -> 383.0 tok/s (benchmarks/RESULTS.md,
        2026-12-04, seventh session); off elsewhere (no compiled step on CPU).
      gemm_prologues: the decode loop's compiled step makes the MLP's silu(gate) * up inside the down projection's
        GEMM (an Inductor pass, hf_tp/kernels/prologue_pass.py, with decode_gemm="triton"): one kernel less per
        layer. Values as without it up to one bf16 unit in the last place of the activation (the GEMM's exp
        against Inductor's). Default: off, because it measured slower: one H200, Llama-3-8B shape, batch 1, rank
        of tp 2 382.9 -> 323.7 tok/s, tp 1 228.7 -> 194.9 (benchmarks/RESULTS.md, 2026-12-04, eighth session):
        every program of the down projection re-reads [gate | up] and computes silu on it. True needs CUDA, and
        turns gemm_epilogues' default off (the same activation, made in the other GEMM); both True is an error.
      gemm_epilogues: the decode loop's compiled step makes the MLP's silu(gate) * up in the epilogue of the fused
        gate/up GEMM (an Inductor pass, hf_tp/kernels/prologue_pass.py, with decode_gemm="triton", where that
        GEMM's config does not split K): one kernel less per layer, and each program computes both halves of its
        outputs, so nothing is read twice. Values as without it up to one bf16 unit in the last place of the
        activation (the GEMM's exp against Inductor's). Default: on with CUDA. One H200, Llama-3-8B shape, batch 1
        (benchmarks/RESULTS.md, 2026-12-04, eighth session; with the compiled greedy selection): rank of tp 2
        388.9 -> 400.0 tok/s, tp 1 230.3 -> 234.1, rank of tp 8 802.6 -> 811.3. Off elsewhere. FP8 gate/up GEMMs
        (with the down projection's fp16 x written beside) only where hf_tp.kernels.prologue_pass.FP8_GLU_EPILOGUE
        is set: off, not measured faster (one H100, 2026-12-06).
      gemm_norms: the decode loop's compiled step computes each Llama-style RMSNorm (and the residual add before
        it) inside the GEMM that reads its output (q/k/v, gate/up, an MoE block's router): every program computes
        its rows' statistic first and normalizes x as it loads it; one program writes the residual sum, and the
        normalized x where something else reads it too (an MoE block's experts). FP8 layers the same way. An
        Inductor pass, hf_tp/kernels/prologue_pass.py, with decode_gemm="triton"; other norm forms, such as
        Gemma's 1 + weight in bf16, are left as they are. Two kernels fewer per layer; values as without it up to
        the statistic's last bits. Default: off (slower on one H200 in every row: rank of tp 2 279.3 against
        395.3 tok/s; benchmarks/RESULTS.md 2026-12-05, docs/performance.md). True needs CUDA.
      persistent_norms: Inductor compiles the decode loop's step with each row reduction up to 8192 wide (a fused
        residual add + RMSNorm over the hidden size) held in registers and read once, where by default it loops
        over rows wider than 1024 and reads them twice (hf_tp/kernels/persistent_norms.py). The fp32 mean of
        squares is summed in another order, so values may differ in its last bits. Default: on with CUDA. On one
        H200 (benchmarks/RESULTS.md, 2026-12-04, eighth session), Llama-3-8B shape, batch 1: the four norm
        kernels of the rank of tp 2 took 140.2 µs per token (155.6 looped); tp 1 228.6 -> 234.5 tok/s, rank of
        tp 8 761.7 -> 777.9, rank of tp 2 392.2 -> 383.1 and 386.8 (the rows move by about 2 % from run to run).
        Off elsewhere (no compiled step on CPU).
      compile_prefill: the decode loop runs the prompt's forward (the prefill) compiled too: torch.compile with
        dynamic shapes (one compilation serves every prompt length and batch, apart from Dynamo's separate ones for
        a size of 1), no CUDA graph. An eager prefill is host-bound at short prompts (one H100, Llama-3-8B shape,
        128 tokens: 20.6 ms for 9.9 ms of GPU work; benchmarks/RESULTS.md, 2026-12-06); compiled, Inductor's
        generated code launches the kernels and fuses the norms and pointwise work. The first generate() pays the
        compilation. Values as the compiled decode step's (fused kernels may round differently in the last
        bits). A compile that fails leaves this model's prefill eager (the same collectives on every rank). The
        forward outside generate() (``model(...)``) stays eager. Measured on one H100 (benchmarks/RESULTS.md,
        2026-12-06, twenty-seventh session), that shape's 128-token bf16 prefill forward compiled: 12.0 ms (GPU
        busy 6.9), after a 70 s compilation (the 20.6 ms eager figure came from another H100 host, a session
        earlier: not the same run); the loop's GPU tests pass with it, and so does an FP8 per-channel model's
        (compiled, greedy tokens equal to the fp32 reference; twenty-eighth session). Default: off, until the
        compiled FP8 prefill's speed is measured on a GPU. Where the step does not compile (CUDA over gloo) it
        stays eager; on CPU True traces it without Inductor (tests).
      allreduce: "nccl" (NCCL kernels inside the graph) or "one_shot" (PyTorch symmetric memory: each GPU reads
        its peers' buffers over NVLink) for all-reduces of at most ``one_shot_max_kb`` in the compiled step.
      On CPU neither graphs nor a compiled step exist: resolve() sets cuda_graphs=False and allreduce="gloo"
      (the process group's own all-reduce), so ``model.hf_tp_config`` shows what runs there.
    Numerics:
      reduce_fp32: bf16/fp16 row-parallel partial sums all-reduced in fp32 and rounded once, as one GPU's GEMM
        rounds its fp32 accumulator once (twice the all-reduce bytes).
      fp32_logits: bf16/fp16 models return float32 logits (the LM head's fp32 accumulator): rounded to bf16, a
        near-tie between two tokens can resolve to the lower id depending on the GEMM's shape.
    Layout and loading:
      fuse: projections that read the same input (q/k/v, gate/up) computed as one GEMM (FP8 weights kept on the
        GPU too: one FP8 GEMM per group). Default: on for CUDA, off on CPU, where unsplit tensors can be views of
        the memory-mapped file and a fused copy would hold them twice in resident memory.
      load_threads: tensors a rank reads at once. Default min(4, cores).
      fp8_weights: what a rank does with an FP8 checkpoint's weights (docs/fp8.md). "dequantize": each slice is
        multiplied out to the model's dtype at load (float32 math, rounded once, as Transformers does on CPU);
        the layers are the bf16 ones. "keep": the column/row-parallel linear layers keep their slice in FP8 with
        its scales (about half the bytes of bf16) and multiply through hf_tp.parallel.fp8.fp8_linear; other
        weights (embeddings, LM head, MoE experts) are dequantized. "auto" (default): "dequantize" on CPU; on
        CUDA each rank picks "keep" when its GPU has FP8 (compute capability 8.9 or above) and hf_tp's FP8 GEMM
        kernel is available, else "dequantize", at load: ``model.hf_tp_config`` on a rank shows the choice.
        Checkpoints without FP8 weights ignore it.
      weights: "checkpoint" (default): weights as the checkpoint stores them. "fp8": the column/row-parallel
        linear layers whose checkpoint weights are not FP8 (bf16/fp16/fp32) are quantized at load, per rank after
        slicing, to FP8 in 128 x 128 blocks of the rank's slice, and kept FP8 as with fp8_weights="keep" (half
        the bytes of bf16; on CPU or without hf_tp's FP8 kernel it is as exact but slower than bf16).
      fp8_activations: layers that keep FP8 weights on the GPU quantize their input to FP8 at prefill sizes (more
        than 64 rows): per token and weight group (128 columns for block FP8, the row for per-channel), scale
        amax / 448, computed when called ("dynamic", the activation scheme FP8 checkpoints declare and vLLM and
        Transformers' GPU FP8 layers run), then multiply on the FP8 tensor cores. Time to first token drops below
        bf16's: one H100, one Llama-3-8B layer's four GEMMs at M = 128 / 512 / 2048, per-channel scales, 128 /
        237 / 867 us against bf16's 182 / 299 / 1137 (benchmarks/RESULTS.md, 2026-12-05, sixteenth session).
        The price is each GEMM's error: about 2.6 % of its output's norm on random data, against 0.2 % with the
        activations kept. Decode sizes stay weight-only either way. Default False: activations stay in the
        model's dtype, so the tokens follow the dequantized model's (docs/fp8.md, "Accuracy").
      pinned_load, load_chunk_mb, load_buffers: on CUDA, slices go through ``load_buffers`` pinned buffers of
        ``load_chunk_mb`` MB (32 and 4: on one H200 the Llama-3-8B shape loaded at 34 GB/s with 32 MB, 17.6 with
        8; benchmarks/RESULTS.md, 2026-12-04); False: plain copies. On CPU
        there is no host-to-device copy: resolve() sets pinned_load=False.
    Processes:
      worker_env: environment every rank gets, in single-controller workers and (set if absent) under a
        launcher, so both modes run NCCL the same way. Default: NVLink multicast off.

    Not here: ``timeout_s`` and the handle's other supervision options (HANDLE_OPTIONS) are arguments of
    ``from_pretrained``; ``TPConfig(timeout_s=...)`` raises a TypeError that says so.
    """

    fast_decode: bool | None = None
    cuda_graphs: bool = True
    allreduce: str = "nccl"
    one_shot_max_kb: float = 128.0
    reduce_fp32: bool = True
    fp32_logits: bool = True
    fuse: bool | None = None
    load_threads: int | None = None
    pinned_load: bool = True
    load_chunk_mb: float = 32.0
    load_buffers: int = 4
    fp8_weights: str = "auto"
    weights: str = "checkpoint"
    fp8_activations: bool = False
    worker_env: dict = field(default_factory=lambda: dict(DEFAULT_WORKER_ENV))
    moe_decode: str | None = None
    decode_attention: str | None = None
    decode_gemm: str | None = None
    pdl: bool | None = None
    combo_kernels: bool | None = None
    gemm_prologues: bool | None = None
    gemm_epilogues: bool | None = None
    gemm_norms: bool | None = None
    persistent_norms: bool | None = None
    compile_prefill: bool | None = None

    def __new__(cls, *args, **kwargs):
        misplaced = [name for name in HANDLE_OPTIONS if name in kwargs]
        if misplaced:
            given = ", ".join(f"{name}={kwargs[name]!r}" for name in misplaced)
            raise TypeError(
                f"TPConfig({given}): {', '.join(misplaced)} is an option of the single-controller handle, not of "
                f"TPConfig (which holds speed and numerics options). Pass it to from_pretrained: "
                f"hf_tp.AutoModelForCausalLM.from_pretrained(name, tp_size=2, {given}).")
        options = [f.name for f in dataclasses.fields(cls)]
        unknown = [name for name in kwargs if name not in options]
        if unknown:
            import difflib

            hints = [f"{name!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(name, options, 1))
                     else repr(name) for name in unknown]
            raise TypeError(f"TPConfig has no option {', '.join(hints)}. Its options: {', '.join(options)} "
                            f"(docs/api.md).")
        return super().__new__(cls)

    def __post_init__(self):
        if self.moe_decode not in (None, "triton", "grouped"):
            raise ValueError(f"TPConfig(moe_decode={self.moe_decode!r}): use 'triton', 'grouped' or None (the default "
                             "for the device).")
        if self.decode_attention not in (None, "triton", "sdpa"):
            raise ValueError(f"TPConfig(decode_attention={self.decode_attention!r}): use 'triton', 'sdpa' or None (the "
                             "default for the device).")
        if self.decode_gemm not in (None, "triton", "cublas"):
            raise ValueError(f"TPConfig(decode_gemm={self.decode_gemm!r}): use 'triton', 'cublas' or None (the "
                             "default for the device).")
        if self.allreduce not in ("nccl", "one_shot", "gloo"):
            raise ValueError(f"TPConfig(allreduce={self.allreduce!r}): use 'nccl' or 'one_shot' "
                             "('gloo' is what CPU models resolve to).")
        if self.fp8_weights not in ("auto", "dequantize", "keep"):
            raise ValueError(f"TPConfig(fp8_weights={self.fp8_weights!r}): use 'auto', 'dequantize' or 'keep'.")
        if self.weights not in ("checkpoint", "fp8"):
            raise ValueError(f"TPConfig(weights={self.weights!r}): use 'checkpoint' (as stored) or 'fp8' (quantized "
                             "to block FP8 at load).")
        if self.load_threads is not None and self.load_threads < 1:
            raise ValueError(f"TPConfig(load_threads={self.load_threads}): needs at least 1.")
        if self.load_buffers < 1 or self.load_chunk_mb <= 0 or self.one_shot_max_kb < 0:
            raise ValueError("TPConfig: load_buffers >= 1, load_chunk_mb > 0 and one_shot_max_kb >= 0 are required.")

    def resolve(self, device_type: str, tp_size: int, environ=None) -> "TPConfig":
        """This config with environment overrides applied and every ``None`` filled in for the device, but
        ``pdl`` on CUDA, which each rank decides at load (hf_tp.kernels.pdl.resolve_pdl)."""
        environ = os.environ if environ is None else environ
        changes = {}
        for name, attr in ENV_OVERRIDES.items():
            if environ.get(name, "") != "":
                changes[attr] = _parse(attr, environ[name], name)
        config = dataclasses.replace(self, **changes)
        filled = {}
        if config.fast_decode is None:
            filled["fast_decode"] = device_type == "cuda" and tp_size == 1
        if config.fuse is None:
            filled["fuse"] = device_type == "cuda"
        if config.load_threads is None:
            filled["load_threads"] = min(4, os.cpu_count() or 1)
        if device_type == "cpu":  # what applies there, whatever was asked for (no graph, no compiled step, no copy)
            filled.update(cuda_graphs=False, allreduce="gloo", pinned_load=False)
        elif config.allreduce == "gloo":
            raise ValueError("TPConfig(allreduce='gloo') is what a CPU model resolves to; on CUDA use 'nccl' or "
                             "'one_shot'.")
        # hf_tp's Triton kernels where they run (CUDA with Triton; the interpreter in tests), else the fallback
        triton_here = _triton_available() and (device_type == "cuda" or environ.get("TRITON_INTERPRET", "") == "1")
        for name, default, fallback, what in (
                ("moe_decode", "triton", "grouped", "hf_tp's MoE kernels need"),
                ("decode_attention", "triton", "sdpa", "hf_tp's decode attention kernel needs"),
                ("decode_gemm", DECODE_GEMM_DEFAULT, "cublas", "hf_tp's decode GEMM kernels need")):
            asked = getattr(config, name)
            if asked is None:
                filled[name] = default if device_type == "cuda" and _triton_available() else fallback
            elif asked == "triton" and not triton_here:
                raise ValueError(f"TPConfig({name}='triton'): {what} Triton on CUDA (device {device_type!r}, Triton "
                                 f"{'importable' if _triton_available() else 'not importable'}); use "
                                 f"{name}={fallback!r} here.")
        if device_type != "cuda":  # a CUDA launch; on CUDA, None is decided at load (resolve_pdl)
            filled["pdl"] = False
        if config.combo_kernels is None or device_type != "cuda":
            filled["combo_kernels"] = device_type == "cuda"
        if config.gemm_prologues is None or device_type != "cuda":
            filled["gemm_prologues"] = False  # opt-in: measured slower (see the docstring)
        if config.gemm_epilogues is None or device_type != "cuda":
            # the two are places for the same activation: asking for the prologue turns the default epilogue off
            filled["gemm_epilogues"] = device_type == "cuda" and not config.gemm_prologues
        elif config.gemm_epilogues and config.gemm_prologues:
            raise ValueError("TPConfig(gemm_prologues=True, gemm_epilogues=True): both make the MLP's silu(gate) * up, "
                             "in different GEMMs; choose one (gemm_epilogues is the default on CUDA).")
        if config.gemm_norms is None or device_type != "cuda":
            filled["gemm_norms"] = False  # opt-in until measured on a GPU (see the docstring)
        if config.persistent_norms is None or device_type != "cuda":
            filled["persistent_norms"] = device_type == "cuda"
        if config.compile_prefill is None:
            filled["compile_prefill"] = False  # opt-in until measured on a GPU (see the docstring)
        if config.fp8_weights == "auto" and device_type != "cuda":  # CUDA: each rank decides for its GPU at load
            filled["fp8_weights"] = "dequantize"
        return dataclasses.replace(config, **filled)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _parse(attr: str, text: str, name: str):
    kind = {f.name: f.type for f in dataclasses.fields(TPConfig)}[attr]
    try:
        if "bool" in kind:
            if text not in ("0", "1"):
                raise ValueError
            return text == "1"
        if "int" in kind:
            return int(text)
        if "float" in kind:
            return float(text)
        return text
    except ValueError:
        expected = ("0 or 1" if "bool" in kind else "an integer" if "int" in kind else "a number")
        raise ValueError(f"${name}={text!r} is not a valid value for TPConfig.{attr}: it takes {expected}.") from None
