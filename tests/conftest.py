"""Shared test helpers: tiny configs per architecture, tiny random checkpoints on disk, and
``run_ranks``, which runs a function in real spawned processes joined by a gloo process group.

Test modules import the helpers directly (``from conftest import run_ranks, tiny_config``);
rank functions live at module level in the test files so that spawned processes can import them.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import queue
import socket
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import transformers

# Every rank is its own process; with two cores, one thread per process avoids oversubscription.
RANK_THREADS = 1

# --------------------------------------------------------------------------------------------
# Tiny configs
# --------------------------------------------------------------------------------------------

# vocab 101 is prime: not divisible by 2 or 3, so the vocab-parallel layers need padding.
_COMMON = dict(
    vocab_size=101,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=3,  # GQA, valid at tp 1, 2 (uneven: 2 + 1 KV heads), 3 and 6
    max_position_embeddings=128,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=None,  # tiny random models never stop early: every generate runs max_new_tokens
    pad_token_id=0,
    initializer_range=0.1,  # spreads the logits so greedy decoding has no near-ties
)

_ARCH = {
    "llama": (transformers.LlamaConfig, {}),
    "mistral": (transformers.MistralConfig, {"sliding_window": None}),
    "qwen2": (transformers.Qwen2Config, {}),  # q/k/v projections carry biases
    # Qwen3: explicit head_dim (16) != hidden_size / num_attention_heads (8); per-head q/k RMSNorm.
    "qwen3": (transformers.Qwen3Config, {"head_dim": 16}),
}

ARCHS = tuple(_ARCH)


def tiny_config(arch: str, **overrides) -> transformers.PretrainedConfig:
    """A 2-layer config of ``arch`` small enough to save, load and run in well under a second."""
    cls, extra = _ARCH[arch]
    kwargs = {**_COMMON, **extra, **overrides}
    return cls(**kwargs)


def sliding_window_configs(window: int) -> dict[str, transformers.PretrainedConfig]:
    """Tiny configs of the sliding-window / hybrid-cache models the decode loop serves, keyed by model_type:
    Gemma 2 (attention and final-logit softcapping, local and global layers alternating), Gemma 3 text (a
    local layer with its own rope base and a global one) and Mistral (every layer sliding)."""
    base = {k: v for k, v in _COMMON.items() if k != "tie_word_embeddings"}  # each family's own default
    return {
        "gemma2": transformers.Gemma2Config(**base, head_dim=16, sliding_window=window, attn_logit_softcapping=20.0,
                                            final_logit_softcapping=15.0),
        "gemma3_text": transformers.Gemma3TextConfig(**base, head_dim=16, sliding_window=window,
                                                     layer_types=["sliding_attention", "full_attention"]),
        "mistral": transformers.MistralConfig(**base, sliding_window=window),
    }


def save_tiny_model(path, config, seed: int = 0, max_shard_size: str | None = "50KB") -> Path:
    """Save a seeded random fp32 model of ``config`` to ``path``.

    The default ``max_shard_size`` gives a multi-file checkpoint (model.safetensors.index.json
    plus several shards); ``max_shard_size=None`` gives one model.safetensors.
    """
    path = Path(path)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # Transformers initialises biases to 0 and norm weights to 1, which would hide a bias added
        # on every rank or a norm applied to the wrong slice: perturb every 1-D parameter.
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(path, **({"max_shard_size": max_shard_size} if max_shard_size else {"max_shard_size": "10GB"}))
    files = sorted(p.name for p in path.glob("*.safetensors"))
    if max_shard_size:
        assert (path / "model.safetensors.index.json").is_file() and len(files) > 1, files
    else:
        assert files == ["model.safetensors"], files
    return path


def load_reference(path, **kwargs) -> transformers.PreTrainedModel:
    """The unsplit Transformers model from the same folder, fp32, eval mode."""
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).eval()


def gpu_loop_and_transformers_tokens(folder, tp_config):
    """(hf_tp's model of ``folder`` at tp 1 on cuda:0 in fp32 with ``tp_config``, its greedy tokens through the
    decode loop, Transformers' tokens from the unsplit model): 2 prompts of 11 tokens, 24 new ones. The step is
    compiled here (no FX-graph cache), so graph passes and Inductor choices run."""
    import torch._inductor.config as inductor_config

    from hf_tp.auto import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    device = torch.device("cuda", 0)
    ours = load_parallel_model(str(folder), TPGroup(0, 1, device), dtype=torch.float32, progress=False,
                               tp_config=tp_config)
    ref = load_reference(folder).to(device)
    ids = torch.randint(1, 101, (2, 11), generator=torch.Generator().manual_seed(5)).to(device)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                  pad_token_id=0)
    with inductor_config.patch(fx_graph_cache=False):
        got = ours.generate(**kwargs)
    with torch.no_grad():
        want = ref.generate(**kwargs)
    return ours, got, want


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max|got - ref| / max|ref|, the SPEC 4.5 measure."""
    got, ref = got.detach().double(), ref.detach().double()
    return float((got - ref).abs().max() / ref.abs().max())


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer(texts=("What is the capital of France?", "The capital of France is Paris.",
                          "Hello world, tell me a story about a lighthouse.")) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (about 300 tokens) trained here in milliseconds, with a chat template:
    real text in and out for pipeline tests, no download. Pair it with tiny_config(vocab_size=len(tok))."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(list(texts) * 5, trainer)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """Factory: ``tiny_checkpoint(arch, name=..., sharded=True, seed=0, **config_overrides)`` -> folder."""

    def make(arch: str, name: str | None = None, sharded: bool = True, seed: int = 0, **overrides) -> Path:
        folder = tmp_path / (name or arch)
        return save_tiny_model(folder, tiny_config(arch, **overrides), seed=seed, max_shard_size="50KB" if sharded else None)

    return make


@pytest.fixture(scope="session")
def demo_path() -> str:
    """The demo model's safetensors folder (SmolLM2-135M-Instruct), converted from its GGUF here, once per
    session, when $HF_TP_CACHE does not hold it yet: a test that uses the demo model gets the same thing on a
    fresh machine as on one with a warm cache, and never meets the conversion's progress output in what it
    reads (the conversion writes to this process's stderr, which pytest captures)."""
    from hf_tp.demo import demo_model_path

    return str(demo_model_path())


# --------------------------------------------------------------------------------------------
# run_ranks
# --------------------------------------------------------------------------------------------


def count_decode_loop_calls() -> list:
    """In a rank process: every later StaticDecoder.generate call (hf_tp's decode loop) appends its request's
    max_new_tokens to the returned list, so a test can tell a request the loop served from one that fell back."""
    from hf_tp.generation.decode_loop import StaticDecoder

    calls = []
    original = StaticDecoder.generate

    def counting(self, request):
        calls.append(request.max_new_tokens)
        return original(self, request)

    StaticDecoder.generate = counting
    return calls


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Ranks start from a fork server that imported these once (set_forkserver_preload): each rank then starts in a
# fraction of a second instead of importing torch and Transformers again (5 s a process on a 2-core host). The
# server imports nothing that reads the environment at import time for hf_tp or Triton (TRITON_INTERPRET, HF_TP_*):
# each rank takes the test's environment and working directory first, then unpickles its function and arguments
# (importing the test module), so that what they import sees the test's environment (_rank_main).
RANK_PRELOAD = ["torch", "torch.distributed", "transformers", "safetensors.torch"]
_RANK_CONTEXT = []


def _rank_context():
    if not _RANK_CONTEXT:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(RANK_PRELOAD)
        _RANK_CONTEXT.append(ctx)
    return _RANK_CONTEXT[0]


def _rank_main(rank: int, world_size: int, port: int, call: bytes, results, env: dict, cwd: str) -> None:
    """Entry point of one rank: the test's environment and working directory (a forked rank has the fork
    server's), launcher env vars, then ``call`` (the pickled function and arguments) loaded and run, report,
    tear down."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
    )
    torch.set_num_threads(RANK_THREADS)
    try:
        fn, args = pickle.loads(call)
        value = fn(*args)
        buf = io.BytesIO()
        torch.save(value, buf)  # plain bytes: no shared-memory tensors outliving this process
        results.put((rank, True, buf.getvalue()))
    except BaseException:  # noqa: BLE001 - reported to the parent with its traceback
        results.put((rank, False, traceback.format_exc()))
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn, world_size: int, *args, timeout: float = 180.0, env: dict | None = None) -> list:
    """Run ``fn(*args)`` in ``world_size`` processes (from a fork server: ``_rank_context``) set up as a launcher would (RANK,
    WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT on a free 127.0.0.1 port), in the test's environment
    or ``env``.

    Returns the per-rank return values, in rank order. If any rank raises, exits without
    reporting, or the run exceeds ``timeout`` seconds (all children are then killed), raises
    one AssertionError with every failing rank's traceback prefixed by ``[rank r]``.
    """
    ctx = _rank_context()
    results = ctx.Queue()
    port = _free_port()
    env, cwd, call = dict(os.environ if env is None else env), os.getcwd(), pickle.dumps((fn, args))
    procs = [ctx.Process(target=_rank_main, args=(r, world_size, port, call, results, env, cwd), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    reports: dict[int, tuple[bool, object]] = {}
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while len(reports) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            try:
                rank, ok, payload = results.get(timeout=min(remaining, 0.5))
                reports[rank] = (ok, payload)
            except queue.Empty:
                # A rank that died without reporting (segfault, os._exit) will never report.
                dead = [r for r, p in enumerate(procs) if r not in reports and p.exitcode is not None]
                if dead:
                    try:  # its report may still be in flight
                        rank, ok, payload = results.get(timeout=1.0)
                        reports[rank] = (ok, payload)
                        continue
                    except queue.Empty:
                        pass
                    for r in dead:
                        reports[r] = (False, f"exited with code {procs[r].exitcode} without reporting a result\n")
        for p in procs:
            p.join(timeout=max(1.0, deadline - time.monotonic()) if not timed_out else 0)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(timeout=10)
        results.close()
        results.join_thread()
    assert not any(p.is_alive() for p in procs), "rank processes survived kill()"

    failures = [f"[rank {r}] {payload}" for r, (ok, payload) in sorted(reports.items()) if not ok]
    if timed_out:
        failures += [f"[rank {r}] timed out after {timeout:.0f} s without reporting (hung); all ranks were killed"
                     for r in range(world_size) if r not in reports]
    if failures:
        raise AssertionError(f"run_ranks({getattr(fn, '__name__', fn)}, world_size={world_size}) failed:\n" + "\n".join(failures))
    return [torch.load(io.BytesIO(reports[r][1]), weights_only=False) for r in range(world_size)]


def run_ranks_once(cache: dict, fn, world_size: int, *args, timeout: float = 180.0) -> list:
    """``run_ranks`` memoised per world size in ``cache`` (a module-level dict), so several tests
    share one multi-rank run; a failed run raises its AssertionError in every test that uses it."""
    if world_size not in cache:
        try:
            cache[world_size] = run_ranks(fn, world_size, *args, timeout=timeout)
        except AssertionError as exc:
            cache[world_size] = exc
    if isinstance(cache[world_size], AssertionError):
        raise cache[world_size]
    return cache[world_size]


def _alone(call: bytes, env: dict):
    """A process's own call, not a rank's: the given environment without the launcher variables _rank_main set,
    torch's default threads, then ``call`` (the pickled function and arguments) loaded and run."""
    os.environ.clear()
    os.environ.update(env)
    torch.set_num_threads(os.cpu_count() or 1)
    fn, args = pickle.loads(call)
    return fn(*args)


def run_alone(fn, *args, env: dict | None = None, timeout: float = 600.0):
    """``fn(*args)`` in one fresh process, forked from the ranks' server (no imports of torch and Transformers of
    its own), in the test's environment or ``env``; returns its value, or raises AssertionError with its
    traceback."""
    env = dict(os.environ if env is None else env)
    return run_ranks(_alone, 1, pickle.dumps((fn, args)), env, timeout=timeout, env=env)[0]


def _script_output(script: str, argv: list) -> str:
    """``python -c script *argv`` inside this process: what it printed."""
    import contextlib

    sys.argv = ["-c", *argv]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            exec(compile(script, "<script>", "exec"), {"__name__": "__main__"})
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise
    return out.getvalue()


def run_script(script: str, *argv: str, env: dict | None = None, timeout: float = 600.0) -> str:
    """``python -c script *argv`` as a fresh process would run it, forked from the ranks' server (run_alone), with
    the repository and tests/ importable: its standard output. A failure raises AssertionError with the
    script's traceback."""
    return run_alone(_script_output, script, list(argv), env=env, timeout=timeout)


def _skip_if_not_interpretable(exc: BaseException) -> None:
    text = str(exc).lower()
    if "interpret" in text and "not supported" in text:
        pytest.skip(f"Triton's interpreter cannot run the kernels here: {str(exc)[-300:]}")


def run_interpreter_script(script: str, *args: str, timeout: int = 600) -> object:
    """Run ``script`` (Python source) as a fresh process with TRITON_INTERPRET=1 (run_script); returns the JSON
    of its last stdout line. Skips where this Triton cannot interpret the kernels."""
    try:
        out = run_script(script, *args, env=dict(os.environ, TRITON_INTERPRET="1"), timeout=timeout)
    except AssertionError as exc:
        _skip_if_not_interpretable(exc)
        raise
    return json.loads(out.strip().splitlines()[-1])


def run_interpreted(fn, *args):
    """Run fn(*args) in a fresh process with TRITON_INTERPRET=1 (hf_tp's Triton kernels on CPU; run_alone); skip
    if this Triton cannot interpret them."""
    try:
        return run_alone(fn, *args, env=dict(os.environ, TRITON_INTERPRET="1"))
    except AssertionError as exc:
        _skip_if_not_interpretable(exc)
        raise


def capture_graph(fn, *args, warmup: int = 3):
    """``fn(*args)`` run ``warmup`` times on a side stream (compiling it and filling the allocator's pool), then
    captured in a CUDA graph: returns (graph, the captured call's output), for tests that replay on new inputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*args)
    return graph, out
