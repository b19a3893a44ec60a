"""hf_tp's split-KV decode attention (hf_tp/kernels/decode_attention.py) and its attention hook
(hf_tp/parallel/decode_attention.py), against the reference computation and Transformers' own generate.

On CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, read when a kernel is defined), in spawned
processes so that the setting cannot leak into other tests; the interpreter's bf16 dot products are wrong (Triton
3.9), so the CPU tests are fp32. On CUDA (``gpu``): bf16 at Llama-3-8B's head shapes (a rank of tp 1 and of tp 2)
and 256- and 8192-slot caches, captured in a CUDA graph and replayed after the cache filled further, and the
decode loop's greedy tokens with the kernel against Transformers' (fp32) and against the sdpa loop (bf16)."""

from __future__ import annotations


import pytest
import torch

from conftest import (capture_graph, load_reference, run_interpreted, run_ranks, save_tiny_model, sliding_window_configs,
                      tiny_config)
from hf_tp.config import TPConfig

PAD = 0


def _mask(batch: int, slots: int, fills: list[int], pads: list[int]) -> torch.Tensor:
    """sdpa's decode mask: row b attends slots pads[b] .. fills[b] - 1 (left padding, then the filled part)."""
    mask = torch.zeros(batch, 1, 1, slots, dtype=torch.bool)
    for row in range(batch):
        mask[row, ..., pads[row]:fills[row]] = True
    return mask


# (batch, query heads, kv heads, slots, head dim, split length or None for the default sizing)
_CPU_SHAPES = [
    (2, 6, 3, 40, 16, 16),   # GQA of 2, three splits (the last one partial), padding in row 1
    (1, 4, 1, 64, 24, 32),   # head dim 24 (not a power of two), a group of 4
    (3, 4, 4, 48, 16, None),  # no grouping; default sizing on the interpreter's 4 "SMs"
    (2, 2, 1, 96, 32, 512),  # one split: the direct path without the reduce kernel
]


def _kernel_check() -> list[str]:
    from hf_tp.kernels.decode_attention import (decode_attention, decode_attention_forward,
                                                decode_attention_reference)

    failures = []
    gen = torch.Generator().manual_seed(0)
    for batch, q_heads, kv_heads, slots, head_dim, split in _CPU_SHAPES:
        q = torch.randn(batch, q_heads, 1, head_dim, generator=gen)
        k, v = (torch.randn(batch, kv_heads, slots, head_dim, generator=gen) for _ in range(2))
        fills = [slots - 5 - 9 * row for row in range(batch)]  # a partly filled cache, a different length per row
        pads = [0] + [3 + row for row in range(1, batch)]  # left padding in the later rows
        mask = _mask(batch, slots, fills, pads)
        if batch > 1:
            mask[1, ..., pads[1] + 2] = False  # a hole: the kernel reads the mask, not just a range
        masks = {"mask": mask, "none": None, "broadcast": mask[:1]}
        if batch > 1:
            empty = mask.clone()
            empty[1, ..., :] = False  # a row that attends nothing: zeros, not NaN
            masks["empty row"] = empty
        for name, m in masks.items():
            got = decode_attention_forward(q, k, v, m, head_dim ** -0.5, split_len=split)
            ref = decode_attention_reference(q, k, v, m, head_dim ** -0.5)
            if name == "empty row":
                ref[1] = 0.0
            err = float((got - ref).abs().max())
            if not err < 1e-5:
                failures.append(f"{(batch, q_heads, kv_heads, slots, head_dim, split)} {name}: max err {err:.2e}")
        via_op = decode_attention(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, mask, 0.3)  # strided query
        err = float((via_op - decode_attention_reference(q, k, v, mask, 0.3)).abs().max())
        if not err < 1e-5:
            failures.append(f"custom op, strided query: max err {err:.2e}")
    return failures


def _within_bf16_ulp(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Every element of a and b (bf16 values, as fp32) within one bf16 ulp of the larger magnitude; below 2**-10,
    within the ulp at 2**-10 (an fp32 sum's last-bit noise on terms of order 1 is far below it)."""
    big = torch.maximum(a.abs(), b.abs()).clamp_min(2.0 ** -10)
    return bool(((a - b).abs() <= 2.0 ** (torch.floor(torch.log2(big)) - 7)).all())


# (batch, query heads, kv heads, slots, head dim, split length, fused): several splits each; fused: whether the
# last split program combines (fused_combine_fits), else the reduce kernel runs even with fused_reduce=True
_FUSED_SHAPES = [
    (1, 8, 2, 112, 24, 16, True),    # a group of 4, seven splits, head dim 24
    (2, 6, 3, 40, 16, 16, True),     # GQA of 2, three splits, the last one partial; more pairs: the counters grow
    (3, 4, 4, 48, 16, 16, True),     # no grouping, batch 3
    (1, 4, 2, 256, 16, 16, True),    # 16 splits: FUSED_MAX_SPLITS
    (1, 16, 2, 128, 128, 16, True),  # a group of 8, 8 splits, head dim 128: the largest tile (FUSED_MAX_TILE)
    (1, 16, 2, 256, 128, 16, False),  # a group of 8, 16 splits, head dim 128: too large a tile, two kernels
    (1, 2, 1, 304, 16, 16, False),   # 19 splits: two kernels, more than one step of the combine (REDUCE_CHUNK)
]


def _fused_check() -> list[str]:
    """The fused reduce (the last split program of each (sequence, KV head) combines) against the reference and
    against the two-kernel path (to rounding: the sums run in another order), the same bits on a second call,
    and the reduce kernel launched only where the fused combine does not fit. Calls follow one another on the
    same counters, which must be back at zero after each. Then bf16 (one shape): fused and two-kernel within one
    bf16 ulp (both combine the same partials; the interpreter's bf16 dots are not checked here)."""
    import hf_tp.kernels.decode_attention as kernel

    _, _, reduce = kernel._kernels()
    launches = []
    run = reduce.run
    reduce.run = lambda *args, **kwargs: launches.append(1) or run(*args, **kwargs)
    kernel.MIN_COUNTERS = 1  # a small first buffer: the second shape makes it grow
    failures = []
    gen = torch.Generator().manual_seed(1)
    for batch, q_heads, kv_heads, slots, head_dim, split, fuses in _FUSED_SHAPES:
        shape = (batch, q_heads, kv_heads, slots, head_dim, split)
        if kernel.fused_combine_fits(q_heads // kv_heads, -(-slots // split), head_dim) != fuses:
            failures.append(f"{shape}: fused_combine_fits is not {fuses}")
        q = torch.randn(batch, q_heads, 1, head_dim, generator=gen)
        k, v = (torch.randn(batch, kv_heads, slots, head_dim, generator=gen) for _ in range(2))
        fills = [slots - 3 - 7 * row for row in range(batch)]
        pads = [0] + [split + 2 + row for row in range(1, batch)]  # left padding over a whole first split
        mask = _mask(batch, slots, fills, pads)
        hole = mask.clone()
        hole[0, ..., split:2 * split] = False  # an empty split between kept ones (the later rows: the first split)
        hole[0, ..., 1] = False
        empty = mask.clone()
        empty[-1] = False  # a row that attends nothing: zeros
        for name, m in {"mask": mask, "none": None, "empty split": hole, "empty row": empty}.items():
            ref = kernel.decode_attention_reference(q, k, v, m, head_dim ** -0.5)
            if name == "empty row":
                ref[-1] = 0.0
            before = len(launches)
            fused = [kernel.decode_attention_forward(q, k, v, m, head_dim ** -0.5, split_len=split)
                     for _ in range(2 if name == "mask" else 1)]
            expected = 0 if fuses else len(fused)
            if len(launches) != before + expected:
                failures.append(f"{shape} {name}: {len(launches) - before} reduce launches, not {expected}")
            before = len(launches)
            two = kernel.decode_attention_forward(q, k, v, m, head_dim ** -0.5, split_len=split, fused_reduce=False)
            if len(launches) != before + 1:
                failures.append(f"{shape} {name}: the two-kernel path did not launch the reduce kernel")
            err = float((fused[0] - ref).abs().max())
            if not err < 1e-5:
                failures.append(f"{shape} {name}: max err {err:.2e}")
            if not torch.allclose(fused[0], two, atol=1e-6, rtol=1e-6):
                failures.append(f"{shape} {name}: fused and two-kernel differ by {float((fused[0] - two).abs().max())}")
            if not all(torch.equal(out, fused[0]) for out in fused):
                failures.append(f"{shape} {name}: two fused calls differ")
        held = kernel._COUNTERS[q.device]
        if fuses and held[-1].numel() < batch * kv_heads or any(int(c.abs().sum()) for c in held):
            failures.append(f"{shape}: counters {[c.tolist() for c in held]}")
    if len(kernel._COUNTERS[torch.device("cpu")]) < 2:
        failures.append("the counter buffer never grew")
    q = torch.randn(2, 8, 1, 32, generator=gen).bfloat16()
    k, v = (torch.randn(2, 2, 80, 32, generator=gen).bfloat16() for _ in range(2))
    mask = _mask(2, 80, [77, 60], [0, 20])
    fused, two = (kernel.decode_attention_forward(q, k, v, mask, 32 ** -0.5, split_len=16, fused_reduce=f).float()
                  for f in (True, False))
    if not _within_bf16_ulp(fused, two):
        failures.append(f"bf16: fused and two-kernel differ by more than one ulp: {float((fused - two).abs().max())}")
    if any(int(c.abs().sum()) for c in kernel._COUNTERS[q.device]):
        failures.append("bf16: counters not back at zero")
    return failures


def _loop_check(folder: str, new_tokens: int, batch: dict):
    """tp 1, decode_attention='triton', the decode loop forced on: tokens, resolved option, kernel calls."""
    import hf_tp.kernels.decode_attention as kernels
    from hf_tp.assembly import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    calls = []
    original = kernels.decode_attention_forward

    def counting(*args, **kwargs):
        calls.append(args[0].shape[2])
        return original(*args, **kwargs)

    kernels.decode_attention_forward = counting
    model = load_parallel_model(folder, TPGroup(tp_rank=0, tp_size=1, device=torch.device("cpu")), dtype=torch.float32,
                                progress=False, tp_config=TPConfig(fast_decode=True, decode_attention="triton"))
    with torch.no_grad():
        tokens = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=PAD)
    return model.hf_tp_config.decode_attention, model.config._attn_implementation, len(calls), tokens


def _tp2_rank(folder: str, new_tokens: int, batch: dict):
    """One rank of tp 2 (gloo); the option comes from the environment variable the test sets, as for a launcher
    run (TRITON_INTERPRET too: it must be set before Triton is imported)."""
    import hf_tp
    import hf_tp.kernels.decode_attention as kernels

    kv_heads = []
    original = kernels.decode_attention_forward

    def counting(*args, **kwargs):
        kv_heads.append(args[1].shape[1])
        return original(*args, **kwargs)

    kernels.decode_attention_forward = counting
    model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=2, device="cpu", dtype=torch.float32)
    tokens = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=PAD)
    return model.hf_tp_config.decode_attention, tokens, kv_heads



@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    # 6 query heads over 3 KV heads: GQA at tp 1, and 2 + 1 KV heads (uneven) at tp 2.
    return str(save_tiny_model(tmp_path_factory.mktemp("decode_attention") / "m", tiny_config("llama"), seed=5))


@pytest.fixture(scope="module")
def batch() -> dict:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 101, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = PAD, 0  # the second prompt is shorter: left-padded
    return {"input_ids": ids, "attention_mask": mask}


def test_kernel_matches_reference_interpreted():
    pytest.importorskip("triton")
    failures = run_interpreted(_kernel_check)
    assert not failures, "\n".join(failures)


def test_fused_reduce_matches_reference_and_two_kernels():
    pytest.importorskip("triton")
    failures = run_interpreted(_fused_check)
    assert not failures, "\n".join(failures)


def test_fused_reduce_counters_are_reserved_not_allocated_by_a_call(monkeypatch):
    """On CUDA a call never allocates the counters: it may run inside a CUDA graph pool (a capture, or the warm-up
    of torch.compile's CUDA-graph trees), which could hand the block out again. Too few reserved (at load,
    reserve_counters): the two-kernel path."""
    from hf_tp.kernels import decode_attention as kernel

    device = torch.device("cuda", 0)
    held = torch.zeros(4, dtype=torch.int32)  # stands for the device's buffer (no CUDA here)
    monkeypatch.setattr(kernel, "_COUNTERS", {device: [held]})
    assert kernel._counters(device, 4) is held
    assert kernel._counters(device, 5) is None and kernel._COUNTERS[device] == [held]
    monkeypatch.setattr(kernel, "_COUNTERS", {})
    assert kernel._counters(device, 1) is None and device not in kernel._COUNTERS


def test_decode_loop_with_kernel_matches_transformers_interpreted(folder, batch):
    pytest.importorskip("triton")
    new_tokens = 8
    with torch.no_grad():
        expected = load_reference(folder).generate(**batch, max_new_tokens=new_tokens, do_sample=False,
                                                   pad_token_id=PAD)
    mode, implementation, calls, tokens = run_interpreted(_loop_check, folder, new_tokens, batch)
    assert mode == "triton" and implementation == "hf_tp_sdpa_decode"
    assert calls == 2 * (new_tokens - 1)  # every decode step of both layers; the prefill went to sdpa
    assert torch.equal(tokens, expected)


@pytest.mark.parametrize("arch", ["mistral", "gemma3_text"])
def test_decode_loop_with_kernel_serves_sliding_layers_interpreted(tmp_path, arch):
    """Sliding window 8, 12-token prompts (one left-padded), 10 new tokens: the loop's sliding layers are as long
    as the cache and the model's mask keeps only the window, which the kernel reads (Mistral: every layer sliding;
    Gemma 3: a local and a global layer). Every decode step of both layers goes through the kernel, with
    Transformers' tokens (its sliding layers keep only the window)."""
    pytest.importorskip("triton")
    folder = str(save_tiny_model(tmp_path / arch, sliding_window_configs(8)[arch], seed=2))
    ids = torch.randint(5, 101, (2, 12), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = PAD, 0
    batch, new_tokens = {"input_ids": ids, "attention_mask": mask}, 10
    with torch.no_grad():
        expected = load_reference(folder).generate(**batch, max_new_tokens=new_tokens, do_sample=False,
                                                   pad_token_id=PAD)
    mode, implementation, calls, tokens = run_interpreted(_loop_check, folder, new_tokens, batch)
    assert mode == "triton" and implementation == "hf_tp_sdpa_decode"
    assert calls == 2 * (new_tokens - 1)
    assert torch.equal(tokens, expected), (tokens.tolist(), expected.tolist())


def test_decode_loop_with_kernel_at_tp2_matches_transformers_interpreted(folder, batch, monkeypatch):
    pytest.importorskip("triton")
    for name, value in (("TRITON_INTERPRET", "1"), ("HF_TP_DECODE_ATTENTION", "triton"), ("HF_TP_FAST_DECODE", "1")):
        monkeypatch.setenv(name, value)  # inherited by the spawned ranks
    new_tokens = 6
    with torch.no_grad():
        expected = load_reference(folder).generate(**batch, max_new_tokens=new_tokens, do_sample=False,
                                                   pad_token_id=PAD)
    results = run_ranks(_tp2_rank, 2, folder, new_tokens, batch, timeout=600)
    for rank, (mode, tokens, kv_heads) in enumerate(results):
        assert mode == "triton"
        assert kv_heads == [2 - rank] * 2 * (new_tokens - 1)  # uneven split: 2 + 1 KV heads, every decode step
        assert torch.equal(tokens, expected)


def test_split_length_stays_within_the_kernels_limits():
    """Every split length the rule picks is a power of two between the floors and MAX_SPLIT_LEN (the kernel reads a
    split's mask as one vector, in tiles of min(BLOCK_N, split)); short caches get 64-slot splits, long ones at
    least 128; when the batch's KV heads fill the SMs, one split per cache up to MAX_SPLIT_LEN slots."""
    from hf_tp.kernels import decode_attention as kernel

    for sms in (1, 78, 132):
        for batch in (1, 2, 8, 32, 1024):
            for kv_heads in (1, 2, 4, 8):
                for slots in (1, 63, 64, 200, 256, 1000, 2048, 2049, 8192, 100_000):
                    length = kernel.split_length(batch, kv_heads, slots, sms)
                    floor = kernel.SHORT_MIN_SPLIT_LEN if slots <= kernel.SHORT_CACHE else kernel.MIN_SPLIT_LEN
                    assert length & (length - 1) == 0 and floor <= length <= kernel.MAX_SPLIT_LEN, (batch, slots)
                    if batch * kv_heads >= sms and slots <= kernel.MAX_SPLIT_LEN:
                        assert -(-slots // length) == 1, (sms, batch, kv_heads, slots, length)
    # The measured choices (one H200, 132 SMs): short caches 64, long caches of one sequence 128, batch 32 one split
    assert kernel.split_length(1, 4, 256, 132) == 64 and kernel.split_length(1, 4, 8192, 132) == 128
    assert kernel.split_length(32, 8, 512, 132) == 512


def test_hook_serves_only_calls_the_kernel_computes():
    from hf_tp.parallel.decode_attention import kernel_applies

    q, k = torch.zeros(2, 8, 1, 64), torch.zeros(2, 2, 32, 64)
    mask = torch.ones(2, 1, 1, 32, dtype=torch.bool)
    assert kernel_applies(q, k, k, mask, {"dropout": 0.0, "scaling": 0.125})
    assert kernel_applies(q, k, k, None, {}) and kernel_applies(q, k, k, mask[:1], {})
    # sdpa ignores sliding_window as well: the window is in the mask, which the kernel reads
    assert kernel_applies(q, k, k, mask, {"sliding_window": 16, "softcap": None})
    refused = {
        "prefill": (torch.zeros(2, 8, 3, 64), k, k, mask, {}),
        "float mask": (q, k, k, torch.zeros(2, 1, 1, 32), {}),
        "per-head mask": (q, k, k, torch.ones(2, 8, 1, 32, dtype=torch.bool), {}),
        "mask of another length": (q, k, k, torch.ones(2, 1, 1, 16, dtype=torch.bool), {}),
        "softcap": (q, k, k, mask, {"softcap": 30.0}),
        "sinks": (q, k, k, mask, {"s_aux": torch.zeros(8)}),
        "dropout": (q, k, k, mask, {"dropout": 0.1}),
        "mixed dtypes": (q, k.half(), k.half(), mask, {}),
        "int8": (q.to(torch.int8), k.to(torch.int8), k.to(torch.int8), mask, {}),
        "head dim 512": (torch.zeros(2, 8, 1, 512), torch.zeros(2, 2, 32, 512), torch.zeros(2, 2, 32, 512), mask, {}),
        "partial groups": (torch.zeros(2, 6, 1, 64), torch.zeros(2, 4, 32, 64), torch.zeros(2, 4, 32, 64), mask, {}),
    }
    for name, (query, key, value, m, kwargs) in refused.items():
        assert not kernel_applies(query, key, value, m, kwargs), name


def test_hook_falls_back_to_sdpa_unchanged():
    """Calls the kernel does not serve get Transformers' sdpa function itself: same output, bit for bit."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from hf_tp.parallel.decode_attention import sdpa_decode_attention

    class Attention(torch.nn.Module):
        num_key_value_groups, is_causal = 2, True

    gen = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 4, 5, 16, generator=gen), torch.randn(1, 2, 5, 16, generator=gen), torch.randn(1, 2, 5, 16, generator=gen)
    for mask, kwargs in ((None, {"dropout": 0.0, "scaling": 0.25}), (torch.zeros(1, 1, 5, 5), {"scaling": 0.25}),
                         # a decode call with a float mask (sdpa's additive form): sliding_window passed on, unused
                         (torch.zeros(1, 1, 1, 5), {"softcap": None, "sliding_window": 3})):
        query = q if mask is None or mask.shape[2] == 5 else q[:, :, :1]
        want, _ = sdpa_attention_forward(Attention(), query, k, v, mask, **{k_: v_ for k_, v_ in kwargs.items()
                                                                              if k_ != "sliding_window"})
        got, weights = sdpa_decode_attention(Attention(), query, k, v, mask, **kwargs)
        assert weights is None and torch.equal(got, want)


def test_install_switches_sdpa_models_only(tiny_checkpoint, monkeypatch):
    from hf_tp.assembly import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    folder = str(tiny_checkpoint("llama"))
    tp = TPGroup(tp_rank=0, tp_size=1, device=torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # "triton" is accepted on the CPU (no kernel runs here)
    monkeypatch.delenv("HF_TP_DECODE_ATTENTION", raising=False)
    config = TPConfig(decode_attention="triton")
    model = load_parallel_model(folder, tp, dtype=torch.float32, progress=False, tp_config=config)
    assert model.config._attn_implementation == "hf_tp_sdpa_decode" and model.hf_tp_config.decode_attention == "triton"
    eager = load_parallel_model(folder, tp, dtype=torch.float32, progress=False, tp_config=config,
                                attn_implementation="eager")
    assert eager.config._attn_implementation == "eager" and eager.hf_tp_config.decode_attention == "sdpa"
    plain = load_parallel_model(folder, tp, dtype=torch.float32, progress=False,
                                tp_config=TPConfig())
    assert plain.config._attn_implementation == "sdpa" and plain.hf_tp_config.decode_attention == "sdpa"
    # The name never reaches a saved config (Transformers does not serialize the implementation).
    assert "hf_tp_sdpa_decode" not in model.config.to_json_string()


def test_decode_attention_option_resolves_once():
    pytest.importorskip("triton")
    assert TPConfig().resolve("cpu", 2, environ={}).decode_attention == "sdpa"
    assert TPConfig().resolve("cuda", 1, environ={}).decode_attention == "triton"
    assert TPConfig(decode_attention="sdpa").resolve("cuda", 1, environ={}).decode_attention == "sdpa"
    assert TPConfig().resolve("cuda", 2, environ={"HF_TP_DECODE_ATTENTION": "sdpa"}).decode_attention == "sdpa"
    interpreted = TPConfig(decode_attention="triton").resolve("cpu", 1, environ={"TRITON_INTERPRET": "1"})
    assert interpreted.decode_attention == "triton"
    with pytest.raises(ValueError, match="needs Triton on CUDA"):
        TPConfig(decode_attention="triton").resolve("cpu", 1, environ={})
    with pytest.raises(ValueError, match="decode_attention"):
        TPConfig(decode_attention="flash")


# -- GPU ------------------------------------------------------------------------------------------------------

# (batch, query heads, kv heads, slots, filled slots per row): a rank of tp 1 and of tp 2 of Llama-3-8B
_GPU_SHAPES = [
    (1, 32, 8, 256, [200]),
    (1, 16, 4, 256, [131]),
    (1, 16, 4, 8192, [4096]),
    (1, 32, 8, 8192, [8192]),
    (8, 32, 8, 8192, [4096, 4000, 1, 8192, 300, 2049, 4097, 64]),
]


@pytest.mark.parametrize("shape", _GPU_SHAPES, ids=lambda s: f"b{s[0]}-{s[1]}x{s[2]}-{s[3]}")
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_bf16_matches_reference_and_sdpa(shape):
    import torch.nn.functional as F

    from hf_tp.kernels.decode_attention import decode_attention, decode_attention_reference

    batch, q_heads, kv_heads, slots, fills = shape
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(batch, q_heads, 1, 128, device="cuda", generator=gen).bfloat16()
    k, v = (torch.randn(batch, kv_heads, slots, 128, device="cuda", generator=gen).bfloat16() for _ in range(2))
    pads = [min(7 * row, fill - 1) for row, fill in enumerate(fills)]
    mask = _mask(batch, slots, fills, pads).cuda()
    got = decode_attention(q, k, v, mask, 128 ** -0.5).float()
    ref = decode_attention_reference(q, k, v, mask, 128 ** -0.5).float()
    group = q_heads // kv_heads
    sdpa = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                          attn_mask=mask, scale=128 ** -0.5).transpose(1, 2).float()
    err, sdpa_err = float((got - ref).abs().max()), float((sdpa - ref).abs().max())
    assert err <= max(2 * sdpa_err, 1e-2), (err, sdpa_err)  # bf16 output rounding: as close as sdpa's own


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_in_cuda_graph_follows_the_filling_cache():
    """Captured once, replayed after more slots were filled and the mask changed: no host sync, no shape that
    depends on the fill."""
    from hf_tp.kernels.decode_attention import decode_attention, decode_attention_reference

    batch, q_heads, kv_heads, slots = 2, 16, 4, 8192
    q = torch.randn(batch, q_heads, 1, 128, device="cuda").bfloat16()
    k, v = (torch.randn(batch, kv_heads, slots, 128, device="cuda").bfloat16() for _ in range(2))
    mask = _mask(batch, slots, [100, 100], [0, 10]).cuda()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        decode_attention(q, k, v, mask, 0.1)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, k, v, mask, 0.1)
    for fills in ([101, 101], [3000, 3000], [8192, 8192]):
        mask.copy_(_mask(batch, slots, fills, [0, 10]).cuda())
        q.normal_()
        graph.replay()
        torch.cuda.synchronize()
        ref = decode_attention_reference(q, k, v, mask, 0.1)
        assert float((out.float() - ref.float()).abs().max()) < 1e-2, fills


@pytest.mark.parametrize("shape", [(8, 32, 8, 8192, 128), (4, 16, 4, 256, 64), (64, 32, 8, 1024, 64),
                                   (2, 8, 8, 256, 64), (1, 32, 4, 256, 64)],
                         ids=["64-splits", "4-splits", "16-splits", "no-gqa-4-splits", "group-8-4-splits"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_reduce_in_cuda_graph_matches_two_kernels(shape):
    """The fused reduce's last program reads partials that other programs of the same launch wrote (an acq_rel
    counter, loads through L2). Both paths captured in one graph and replayed with new queries and masks: close to
    the reference and to each other within one bf16 ulp (no stale partial read; the two combines sum in another
    order, so not bit for bit) at every replay; the counters are zero after each. 4 short splits: the programs of a
    pair finish almost together, fused (fused_combine_fits). 16 splits over 512 (sequence, KV head) pairs: 8192
    programs, fused (FUSED_MAX_SPLITS, and the largest tile at a group of 4). 64 splits over 64 pairs: above
    FUSED_MAX_SPLITS, both calls take the two-kernel path (the same bits)."""
    import hf_tp.kernels.decode_attention as kernel

    batch, q_heads, kv_heads, slots, split = shape
    kernel.reserve_counters(torch.device("cuda", torch.cuda.current_device()), batch * kv_heads)  # as at load
    fuses = kernel.fused_combine_fits(q_heads // kv_heads, slots // split, 128)
    assert fuses == (slots // split <= kernel.FUSED_MAX_SPLITS)
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(batch, q_heads, 1, 128, device="cuda").bfloat16()
    k, v = (torch.randn(batch, kv_heads, slots, 128, device="cuda").bfloat16() for _ in range(2))
    mask = torch.ones(batch, 1, 1, slots, dtype=torch.bool, device="cuda")

    def both():
        return [kernel.decode_attention_forward(q, k, v, mask, 0.1, split_len=split, fused_reduce=fused)
                for fused in (True, False)]

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        both()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fused, two = both()
    for replay in range(30):
        fills = torch.randint(1, slots + 1, (batch,), generator=gen).tolist()
        pads = [int(torch.randint(0, fill, (1,), generator=gen)) if replay % 2 else 0 for fill in fills]
        mask.copy_(_mask(batch, slots, fills, pads).cuda())
        q.normal_()
        graph.replay()
        torch.cuda.synchronize()
        ref = kernel.decode_attention_reference(q, k, v, mask, 0.1).float()
        # bf16: 1e-2, or two ulps of outputs above 1 (a few kept slots: outputs of the size of v's values)
        assert torch.allclose(fused.float(), ref, atol=1e-2, rtol=2.0 ** -6), (replay, fills, pads)
        assert _within_bf16_ulp(fused.float(), two.float()), (replay, float((fused.float() - two.float()).abs().max()))
        if not fuses:
            assert torch.equal(fused, two), replay
        assert not kernel._COUNTERS[q.device][-1].any(), replay


def _gpu_model(folder: str, dtype, mode: str):
    from hf_tp.assembly import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    return load_parallel_model(folder, TPGroup(0, 1, torch.device("cuda", 0)), dtype=dtype, progress=False,
                               tp_config=TPConfig(decode_attention=mode))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_loop_with_kernel_matches_transformers_fp32(tmp_path):
    folder = str(save_tiny_model(tmp_path / "m", tiny_config("llama", hidden_size=72, num_attention_heads=9,
                                                                 num_key_value_heads=3)))
    ours, ref = _gpu_model(folder, torch.float32, "triton"), load_reference(folder).cuda()
    assert ours.hf_tp_config.decode_attention == "triton" and ours.config._attn_implementation == "hf_tp_sdpa_decode"
    ids = torch.randint(1, 101, (2, 14), generator=torch.Generator().manual_seed(3)).cuda()
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = PAD, 0
    with torch.no_grad():
        want = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=40, do_sample=False, pad_token_id=PAD)
    got = ours.generate(input_ids=ids, attention_mask=mask, max_new_tokens=40, do_sample=False, pad_token_id=PAD)
    assert ours._hf_tp_static_decoder.use_graphs  # the kernel ran inside the captured step
    assert torch.equal(got, want), (got[:, 14:].tolist(), want[:, 14:].tolist())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_loop_bf16_with_kernel_matches_sdpa_loop(tmp_path):
    """bf16, head dim 128, 8 query heads over 2 KV heads, a 300-token padded batch (two splits or more): the
    kernel's loop against the sdpa loop. Identical tokens, or a first divergence at a near-tie of the sdpa
    loop's own logits (bf16 attention by two kernels rounds differently)."""
    config = tiny_config("llama", hidden_size=1024, intermediate_size=2048, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=512, max_position_embeddings=1024,
                         initializer_range=0.02)
    folder = str(save_tiny_model(tmp_path / "m", config, max_shard_size=None))
    ids = torch.randint(1, 512, (2, 300), generator=torch.Generator().manual_seed(4)).cuda()
    mask = torch.ones_like(ids)
    ids[1, :37], mask[1, :37] = PAD, 0
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=64, do_sample=False, pad_token_id=PAD)
    sdpa = _gpu_model(folder, torch.bfloat16, "sdpa")
    want = sdpa.generate(**kwargs, return_dict_in_generate=True, output_logits=True)
    del sdpa
    ours = _gpu_model(folder, torch.bfloat16, "triton")
    got = ours.generate(**kwargs)
    assert ours._hf_tp_static_decoder.use_graphs
    new_got, new_want = got[:, 300:], want.sequences[:, 300:]
    for row in range(2):
        differ = (new_got[row] != new_want[row]).nonzero()
        if len(differ):
            step = int(differ[0])
            logits = want.logits[step][row].float()
            gap = float(logits[new_want[row, step]] - logits[new_got[row, step]])
            assert gap < 0.02 * float(logits.abs().max()), (row, step, gap)


def test_split_kernel_asks_l2_for_the_cache_before_its_wait_in_the_sm90_build(monkeypatch):
    """decode_attention.PREFETCH_KV, built for sm_90 on this CPU host: the prefetches (CCTL.E.PF2) all come before
    the PDL wait (ACQBULK), none without PREFETCH, and no spills either way."""
    triton = pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"this Triton cannot build for NVIDIA GPUs here: {exc}")
    from test_decode_gemm import _hopper_build

    import hf_tp.kernels.decode_attention as kernel

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # compiled kernels, whatever this process ran before
    _, split, _ = kernel._kernels.__wrapped__()
    pointers = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "mask_ptr": "*u8", "out_ptr": "*bf16",
                "part_o_ptr": "*fp32", "part_lse_ptr": "*fp32", "counter_ptr": "*i32"}
    # the rank of tp 8 of the Llama-3-8B shape at a 256-slot cache: 4 query heads on one KV head, 4 splits of 64
    shape = dict(GROUP=4, HEAD_DIM=128, BLOCK_G=16, BLOCK_D=128, BLOCK_N=64, SPLIT_LEN=64, HAS_MASK=True,
                 DIRECT=False, PRECISION="tf32", FUSED=True, BLOCK_GC=4, BLOCK_S=4, PDL=True)
    for prefetch in (False, True):
        try:
            built = _hopper_build(split, pointers, dict(shape, PREFETCH=prefetch, ROW_LINES=2, LINE=64),
                                  kernel.NUM_WARPS, kernel.NUM_STAGES, floats=("scale",))
        except (TypeError, AttributeError) as exc:  # another Triton's compile API: nothing to check here
            pytest.skip(f"Triton {triton.__version__}'s ASTSource/compile API differs: {exc}")
        if built is None:
            pytest.skip("no cuobjdump to read the build with")
        regs, stack, sass = built
        assert stack == 0, (prefetch, regs, stack)
        if prefetch:
            assert "CCTL.E.PF2" in sass and sass.rindex("CCTL.E.PF2") < sass.index("ACQBULK")
        else:
            assert "CCTL.E.PF2" not in sass and "ACQBULK" in sass


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("prefetch", [False, True], ids=["wait", "prefetch_kv"])
def test_programmatic_dependent_launch_gives_the_same_bits(monkeypatch, prefetch):
    """hf_tp.kernels.pdl (TPConfig.pdl): the split kernel and the reduce kernel wait for the kernel before them, so the
    fused and the two-kernel paths, each right after kernels that write the query and a cache slot, give the bits
    they give without PDL, eagerly and replayed from a CUDA graph; also with the cache asked of L2 before the wait
    (decode_attention.PREFETCH_KV)."""
    import hf_tp.kernels.decode_attention as kernel
    from hf_tp.kernels import pdl

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs a Hopper or later GPU")
    monkeypatch.setattr(kernel, "PREFETCH_KV", prefetch)
    batch, q_heads, kv_heads, slots, split = 2, 16, 4, 512, 64
    kernel.reserve_counters(torch.device("cuda", torch.cuda.current_device()), batch * kv_heads)
    gen = torch.Generator(device="cuda").manual_seed(4)
    k, v = (torch.randn(batch, kv_heads, slots, 128, device="cuda", generator=gen).bfloat16() for _ in range(2))
    mask = _mask(batch, slots, [500, 300], [0, 7]).cuda()
    base = torch.randn(batch, q_heads, 1, 128, device="cuda", generator=gen)
    new_key = torch.randn(batch, kv_heads, 128, device="cuda", generator=gen)
    scale = torch.ones((), device="cuda")

    def both():
        q = (base * scale).bfloat16()  # kernels right before each attention call, writing what it reads
        outs = []
        for fused in (True, False):
            k[:, :, 299] = (new_key * scale).bfloat16()  # a kept slot of both rows, as a step's cache write
            outs.append(kernel.decode_attention_forward(q, k, v, mask, 0.1, split_len=split, fused_reduce=fused))
        return outs

    results = {}
    for on in (False, True):
        monkeypatch.setattr(pdl, "_ACTIVE", on)
        assert bool(pdl.launch_args(base.device)) is on, "this GPU and Triton should launch with PDL"
        scale.fill_(1.0)
        eager = [t.clone() for t in both()]
        graph, outs = capture_graph(both)
        replayed = []
        for factor in (0.5, 2.0):
            scale.fill_(factor)
            graph.replay()
            replayed.append([t.clone() for t in outs])
        results[on] = (eager, replayed)
    assert all(torch.equal(a, b) for a, b in zip(results[False][0], results[True][0]))
    for without, with_pdl in zip(results[False][1], results[True][1]):
        assert all(torch.equal(a, b) for a, b in zip(without, with_pdl))
