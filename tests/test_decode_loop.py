"""hf_tp's own decode loop (hf_tp/generation/decode_loop.py) at tp 2 on CPU (gloo), forced on with
HF_TP_FAST_DECODE=1, with q/k/v and gate/up fused into one GEMM each (HF_TP_FUSE=1, the CUDA default) (on CPU it runs without compile and CUDA graphs; the selection, eos, padding,
min/max length and streamer logic is the same code the GPU graph captures).

Truth: Transformers' generate on the unsplit model, same folder, same arguments."""

from __future__ import annotations

import itertools

import pytest
import torch

from conftest import load_reference, run_ranks_once, save_tiny_model, tiny_config

PAD = 0
NEW = 24
SAMPLING = dict(do_sample=True, temperature=0.7, top_k=5, top_p=0.9, max_new_tokens=NEW, pad_token_id=PAD)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    config = tiny_config("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3)
    return str(save_tiny_model(tmp_path_factory.mktemp("decode_loop") / "m", config, seed=5))


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 101, (2, 10), generator=gen)
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = PAD, 0  # second row left-padded
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def reference(folder, batch):
    model = load_reference(folder)
    with torch.no_grad():
        free = model.generate(**batch, do_sample=False, max_new_tokens=NEW, pad_token_id=PAD)
    new = free[:, batch["input_ids"].shape[1]:]
    # eos ids that occur in the greedy continuation: row 0's 4th and row 1's 9th new token, so generation
    # stops early, at a step that is not a multiple of the loop's check interval.
    eos = [int(new[0, 3]), int(new[1, 8])]
    return {"model": model, "free": free, "eos": eos}


def cases(eos: list[int]) -> dict[str, tuple[dict, bool]]:
    """name -> (generate kwargs, whether hf_tp's loop serves it; the others go to Transformers' generate).
    The model's generation_config carries eos_token_id=eos[:1] (set on both models by the test)."""
    greedy = dict(do_sample=False, max_new_tokens=NEW, pad_token_id=PAD)
    unused = [i for i in range(101, 109)]  # ids outside the prompts' range that greedy never picks first
    return {
        "greedy": ({**greedy, "eos_token_id": None}, True),  # explicit None overrides the model's eos
        "model_eos": (greedy, True),
        "eos": ({**greedy, "eos_token_id": eos}, True),
        "eos_min_new": ({**greedy, "eos_token_id": eos, "min_new_tokens": 12}, True),
        "eos_0d_tensor": ({**greedy, "eos_token_id": torch.tensor(eos[1])}, True),
        "pad_none": ({**greedy, "eos_token_id": eos, "pad_token_id": None}, True),  # pads with eos[0]
        "default_length": (dict(do_sample=False, pad_token_id=PAD), True),  # 20 new tokens
        "max_length": (dict(do_sample=False, pad_token_id=PAD, max_length=15, eos_token_id=None), True),
        "one_token": ({**greedy, "max_new_tokens": 1}, True),
        "return_dict": ({**greedy, "eos_token_id": eos, "return_dict_in_generate": True}, True),
        # top_p=0 keeps only the most likely token (Transformers' min_tokens_to_keep=1): sampling that equals greedy.
        "top_p_zero": ({**greedy, "eos_token_id": eos, "do_sample": True, "top_k": 0, "top_p": 0.0}, True),
        "nine_eos_ids": ({**greedy, "eos_token_id": unused + [eos[0]]}, False),
        "penalty": ({**greedy, "repetition_penalty": 1.3}, True),  # more requests: tests/test_loop_requests.py
        "ngram_fallback": ({**greedy, "no_repeat_ngram_size": 2}, False),
        # Falls back: Transformers infers the mask from the pad id (the batch's second row is padded).
        "padded_no_mask": ({**greedy, "attention_mask": None}, False),
        "logits_to_keep_fallback": ({**greedy, "logits_to_keep": 1}, False),  # a forward argument
    }


def generate_on_ranks(folder: str, batch: dict, eos: list[int]) -> dict:
    import os

    os.environ["HF_TP_FAST_DECODE"] = "1"
    os.environ["HF_TP_FUSE"] = "1"  # q/k/v and gate/up as one GEMM each, as on CUDA
    import torch.distributed as dist

    import hf_tp
    from conftest import count_decode_loop_calls

    calls = count_decode_loop_calls()
    model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=2, device="cpu", dtype=torch.float32)
    attention = model.model.layers[0].self_attn
    fused = attention.q_proj.shared_input
    assert fused is not None and fused is attention.v_proj.shared_input, "q/k/v were not fused"
    assert attention.k_proj.weight.data_ptr() == fused.weight[fused.sizes[0]:].data_ptr()  # a view, not a copy
    model.generation_config.eos_token_id = eos[0]
    out, served = {}, {}
    for name, (kwargs, _) in cases(eos).items():
        before = len(calls)
        result = model.generate(**{**batch, **kwargs})  # a case may override the batch's attention_mask
        if not torch.is_tensor(result):  # an output object: its type, fields and cache length travel back
            cache = result.get("cache", result.get("past_key_values"))
            out[f"{name}_object"] = (type(result).__name__, sorted(result.keys()), type(cache).__name__,
                                     int(cache.get_seq_length()))
            result = result.sequences
        out[name] = result
        served[name] = len(calls) > before
    out["served"] = served

    class Collect:
        def __init__(self):
            self.parts, self.ended = [], False

        def put(self, value):
            self.parts.append(value.clone())

        def end(self):
            self.ended = True

    streamer = Collect()
    out["streamed_result"] = model.generate(**batch, streamer=streamer, eos_token_id=eos, do_sample=False,
                                            max_new_tokens=NEW, pad_token_id=PAD)
    out["streamed"] = (streamer.parts, streamer.ended)
    torch.manual_seed(7)
    out["sample_a"] = model.generate(**batch, **SAMPLING)
    torch.manual_seed(7)
    out["sample_b"] = model.generate(**batch, **SAMPLING)
    torch.manual_seed(100 + dist.get_rank())  # ranks seeded differently: rank 0's seed is broadcast
    out["sample_rank_seeds"] = model.generate(**batch, **SAMPLING)
    return out


_RUNS: dict = {}


@pytest.fixture(scope="module")
def ranks(folder, batch, reference):
    return run_ranks_once(_RUNS, generate_on_ranks, 2, folder, batch, reference["eos"], timeout=300)


CASES = list(cases([0, 0]))


def _reference_generate(reference, batch, kwargs):
    model = reference["model"]
    model.generation_config.eos_token_id = reference["eos"][0]
    try:
        with torch.no_grad():
            out = model.generate(**{**batch, **kwargs})
            return out if torch.is_tensor(out) else out.sequences
    finally:
        model.generation_config.eos_token_id = None


@pytest.mark.parametrize("case", CASES)
def test_loop_matches_transformers_generate(ranks, reference, batch, case):
    want = _reference_generate(reference, batch, cases(reference["eos"])[case][0])
    for rank, out in enumerate(ranks):
        got = out[case]
        assert got.shape == want.shape and torch.equal(got, want), f"rank {rank} {case}:\n{got.tolist()}\n{want.tolist()}"


def test_return_dict_is_transformers_output(ranks, reference, batch):
    """return_dict_in_generate=True: the same output type and fields as Transformers', with a cache that
    holds every position but the last token's (the single-controller workers rely on it)."""
    model = reference["model"]
    with torch.no_grad():
        want = model.generate(**batch, **cases(reference["eos"])["return_dict"][0])
    for out in ranks:
        kind, keys, cache_kind, length = out["return_dict_object"]
        assert (kind, keys) == (type(want).__name__, sorted(want.keys()))
        assert cache_kind == "StaticCache" and length == out["return_dict"].shape[1] - 1


def test_early_stop_is_exercised(reference, batch):
    stopped = _reference_generate(reference, batch, cases(reference["eos"])["eos"][0])
    assert stopped.shape[1] < batch["input_ids"].shape[1] + NEW  # so the eos case above checks the trim
    full = _reference_generate(reference, batch, cases(reference["eos"])["greedy"][0])
    assert full.shape[1] == batch["input_ids"].shape[1] + NEW  # eos_token_id=None really overrode the model's


def test_loop_served_the_supported_requests(ranks, reference):
    expected = {name: served for name, (_, served) in cases(reference["eos"]).items()}
    for out in ranks:
        assert out["served"] == expected


def test_streamer_gets_prompt_then_every_token(ranks, batch):
    for out in ranks:
        parts, ended = out["streamed"]
        result = out["streamed_result"]
        assert ended
        assert torch.equal(parts[0], batch["input_ids"])
        assert torch.equal(torch.stack(parts[1:], dim=1), result[:, batch["input_ids"].shape[1]:])


def test_sampling_same_on_every_rank_and_inside_top_k(ranks, reference, batch):
    first = ranks[0]
    for rank, out in enumerate(ranks[1:], start=1):
        for key in ("sample_a", "sample_b", "sample_rank_seeds"):
            assert torch.equal(out[key], first[key]), f"rank {rank} sampled other tokens ({key})"
    assert torch.equal(first["sample_a"], first["sample_b"])
    assert not torch.equal(first["sample_a"], reference["free"])  # it sampled
    # Every sampled token is among the 5 most likely under the unsplit model, given what came before.
    sampled = first["sample_a"]
    mask = torch.cat([batch["attention_mask"], torch.ones(2, NEW, dtype=torch.long)], dim=1)
    with torch.no_grad():
        logits = reference["model"](input_ids=sampled, attention_mask=mask).logits
    prompt = batch["input_ids"].shape[1]
    top5 = logits[:, prompt - 1:-1].topk(5, dim=-1).indices
    assert (top5 == sampled[:, prompt:].unsqueeze(-1)).any(-1).all()


def test_sliding_window_models_get_full_length_static_layers():
    """Sliding-window layers become plain static layers as long as the cache (Transformers' sliding layer keeps
    only the window and rolls it on a Python int, which a CUDA graph would freeze), so the loop takes such models
    past their window (tests/test_loop_requests.py checks their tokens); every layer's position is the device
    tensor a graph replays. Flash attention is left to Transformers: it would read the filled positions from
    the loop's static mask (compat.flash_attention)."""
    import transformers
    from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer

    from hf_tp.compat import static_cache
    from hf_tp.generation.decode_loop import plan_request

    ids = torch.tensor([[5, 6, 7]])
    gemma3 = transformers.Gemma3TextConfig(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                           num_attention_heads=6, num_key_value_heads=3, head_dim=16, sliding_window=4,
                                           layer_types=["sliding_attention", "full_attention"])
    for config, sliding in ((tiny_config("mistral", sliding_window=4), True), (gemma3, True),
                            (tiny_config("llama"), False)):
        model = transformers.AutoModelForCausalLM.from_config(config)
        request, reason = plan_request(model, (ids,), dict(max_new_tokens=9, do_sample=False))
        assert request is not None, reason
        theirs = transformers.StaticCache(config=config, max_cache_len=256).layers
        assert any(type(layer) is StaticSlidingWindowLayer for layer in theirs) == sliding
        cache = static_cache(config, 256)
        assert [(type(layer), layer.max_cache_len) for layer in cache.layers] == [(StaticLayer, 256)] * 2
        model.config._attn_implementation = "flash_attention_2"
        request, reason = plan_request(model, (ids,), dict(max_new_tokens=9, do_sample=False))
        assert request is None and "flash attention" in reason


def compiled_steps_on_ranks(folder: str, batch: dict):
    """The loop's compiled forward (what the GPU captures in its graph: fullgraph, the TP collectives
    traced as functional collectives), run step by step at tp 2 on CPU, against the loop's eager steps."""
    import os

    os.environ["HF_TP_FAST_DECODE"] = "1"
    os.environ["HF_TP_FUSE"] = "1"
    import hf_tp
    from hf_tp.generation.decode_loop import plan_request

    model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=2, device="cpu", dtype=torch.float32)
    kwargs = dict(attention_mask=batch["attention_mask"], do_sample=False, max_new_tokens=12, pad_token_id=PAD)
    eager = model.generate(batch["input_ids"], **kwargs)
    decoder = model._hf_tp_decoder()
    request, reason = plan_request(model, (batch["input_ids"],), kwargs)
    assert request is not None, reason
    session = decoder._session(*batch["input_ids"].shape[:1], batch["input_ids"].shape[1] + 12)
    model._hf_tp_in_generate = True  # as inside generate: inputs were checked once, not per step
    try:
        with torch.no_grad():
            session.start(request)
            for _ in range(11):
                session._decode_step(decoder.compiled_forward)
    finally:
        model._hf_tp_in_generate = False
    from torch._dynamo.utils import counters

    return eager, torch.cat([batch["input_ids"], session.out[:, :12]], dim=1), counters["stats"]["unique_graphs"]


def test_compiled_step_at_tp2_matches_eager_steps(folder, batch):
    from conftest import run_ranks

    for rank, (eager, compiled, graphs) in enumerate(run_ranks(compiled_steps_on_ranks, 2, folder, batch, timeout=500)):
        # fullgraph, one shape: the forward, and the greedy selection and bookkeeping (StaticDecoder.advance)
        assert graphs == 2, f"rank {rank}: {graphs} compiled graphs (two expected)"
        assert torch.equal(eager, compiled), f"rank {rank}: {eager.tolist()} != {compiled.tolist()}"


# Settings Transformers' generate raises on. The loop must refuse them (the fallback then raises
# Transformers' error) rather than answer: each used to be served.
REJECTED = {
    "top_k_negative": dict(do_sample=True, top_k=-1),
    "top_k_float": dict(do_sample=True, top_k=2.0),
    "top_p_negative": dict(do_sample=True, top_p=-0.5),
    "temperature_int": dict(do_sample=True, temperature=2),
    "min_new_tokens_float": dict(min_new_tokens=3.0, eos_token_id=5),
    "bad_words_empty": dict(bad_words_ids=[]),
    "sequence_bias_empty": dict(sequence_bias={}),
    "stop_strings_empty": dict(stop_strings=[]),  # no tokenizer given
    "stop_strings_no_tokenizer": dict(stop_strings=["a"]),
    "repetition_penalty_zero": dict(repetition_penalty=0.0),
    "repetition_penalty_int": dict(repetition_penalty=2),
    "min_p_above_one": dict(do_sample=True, min_p=1.5),
    "greedy_num_return_sequences": dict(num_return_sequences=2),
}


@pytest.fixture(scope="module")
def plain_model():
    import transformers

    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(tiny_config("llama")).eval()


@pytest.mark.parametrize("case", REJECTED)
def test_settings_transformers_rejects_are_refused(plain_model, case):
    from hf_tp.generation.decode_loop import plan_request

    ids = torch.tensor([[5, 6, 7]])
    kwargs = dict(max_new_tokens=4, **REJECTED[case])
    with pytest.raises(ValueError), torch.no_grad():
        plain_model.generate(ids, **kwargs)
    request, reason = plan_request(plain_model, (ids,), kwargs)
    assert request is None, f"{case} was served; Transformers raises on it"


def _selector(vocab: int, temperature: float, top_k: int, top_p: float, min_p: float = 0.0, session_out=None,
              device: str = "cpu"):
    """A _Session's token selection alone (no model, no cache), sampling with these settings; with
    ``session_out`` (a list) the session is appended to it and keeps each step's warped scores."""
    from hf_tp.generation.decode_loop import Variant, _Session, sampling_candidates

    session = object.__new__(_Session)
    long = dict(dtype=torch.long, device=device)
    session.step, session.min_new = torch.zeros((), **long), torch.zeros((), **long)
    session.eos_in_vocab = torch.zeros(vocab, dtype=torch.bool, device=device)
    session.vocab_positions = torch.arange(vocab, device=device)
    session.best_position = session.vocab_positions == vocab - 1
    candidates = sampling_candidates(True, top_k)
    session.variant = Variant(do_sample=True, penalty=False, scores=session_out is not None, logits=False,
                              min_p=min_p > 0, candidates=candidates, whole_top_k=top_k > 0 and not candidates)
    session.cut_ties = torch.zeros((), dtype=torch.bool, device=device)
    session._last_candidate = {}
    if session_out is not None:
        session_out.append(session)
    session.temperature = torch.tensor(temperature, device=device)
    session.top_k = torch.tensor(top_k, device=device)
    session.top_p_rest = torch.tensor(1 - top_p if top_p < 1 else -1.0, device=device)
    session.min_p = torch.tensor(min_p, device=device)
    return session._select


@pytest.mark.parametrize("top_k,top_p", [(2, 1.0), (3, 1.0), (2, 0.95)])
def test_sampling_keeps_top_k_ties(top_k, top_p):
    """TopKLogitsWarper keeps every token whose logit equals the k-th largest (it compares values);
    with bf16 logits such ties are common. The loop must sample from the same set of tokens."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0, -1.0]])  # the 2nd..4th tie
    warped = TemperatureLogitsWarper(0.9)(None, logits)
    warped = TopKLogitsWarper(top_k)(None, warped)
    if top_p < 1.0:
        warped = TopPLogitsWarper(top_p)(None, warped)
    want = set(torch.nonzero(warped[0].softmax(-1) > 0).flatten().tolist())
    assert len(want) > top_k  # the ties are kept by Transformers
    torch.manual_seed(0)
    got = set(_selector(logits.shape[1], 0.9, top_k, top_p)(logits.expand(4096, -1)).tolist())
    assert got == want  # every kept token has probability > 0.1: 4096 draws see them all


def _transformers_warped(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                         min_p: float) -> torch.Tensor:
    """Transformers' sampling processors, in its order (temperature, top-k, top-p, min-p), on ``logits``."""
    from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper,
                                                         TopPLogitsWarper)

    warped = TemperatureLogitsWarper(temperature)(None, logits)
    for warper in ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p < 1 else []) + (
            [MinPLogitsWarper(min_p)] if min_p > 0 else []):
        warped = warper(None, warped)
    return warped


def _select_with_scores(session, select, logits: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """Run one selection step keeping its warped scores; check them against Transformers' ``warped`` (the same
    tokens kept, the same values) and that the chosen tokens are kept ones. Returns the kept mask."""
    session.scores = torch.zeros(1, *logits.shape, device=logits.device)
    torch.manual_seed(0)
    chosen = select(logits)
    got = session.scores[0]
    assert torch.equal(torch.isinf(got), torch.isinf(warped))  # the same tokens kept
    kept = ~torch.isinf(warped)
    assert torch.allclose(got[kept], warped[kept], rtol=0, atol=1e-6)
    assert bool(kept[torch.arange(logits.shape[0]), chosen].all())  # the sample is a kept token
    return kept


@pytest.mark.parametrize("top_k,top_p,min_p", [(5, 1.0, 0.0), (50, 0.9, 0.0), (50, 0.95, 0.05), (200, 0.8, 0.0)])
def test_top_k_sampling_on_candidates_is_transformers_warpers(top_k, top_p, min_p):
    """Under top-k the loop warps only the largest logits (topk, not a sort of the vocabulary): the warped
    scores, back in vocabulary order, equal Transformers' processors on the whole vocabulary, ties at the
    k-th logit included while they fit the candidates' spare room."""
    _check_top_k_warpers(top_k, top_p, min_p, "cpu")


def _check_top_k_warpers(top_k: int, top_p: float, min_p: float, device: str) -> None:
    from hf_tp.generation.decode_loop import sampling_candidates

    vocab = 3000
    gen = torch.Generator().manual_seed(top_k)
    logits = torch.randn(3, vocab, generator=gen) * 2
    kth = logits[2].topk(top_k).values[-1]
    tied = torch.nonzero(logits[2] < kth).flatten()[:5]
    logits[2, tied] = kth  # row 2: five more tokens tie with its k-th largest logit
    warped = _transformers_warped(logits, 0.7, top_k, top_p, min_p)
    sessions = []
    select = _selector(vocab, 0.7, top_k, top_p, min_p, session_out=sessions, device=device)
    session = sessions[0]
    assert session.variant.candidates == sampling_candidates(True, top_k) > top_k  # the topk path ran
    _select_with_scores(session, select, logits.to(device), warped.to(device))
    assert not bool(session.cut_ties)


@pytest.mark.parametrize("top_k,top_p,min_p", [(0, 0.9, 0.0), (0, 0.95, 0.05), (1500, 0.9, 0.0), (1500, 1.0, 0.1)])
def test_sort_free_whole_vocabulary_sampling_is_transformers_warpers(monkeypatch, top_k, top_p, min_p):
    """decode_loop.SORT_FREE_SAMPLING: over the whole vocabulary (top_k off, or above the largest candidate
    count) the warped scores, thresholds found by radix select, equal Transformers' processors."""
    from hf_tp.generation import decode_loop

    monkeypatch.setattr(decode_loop, "SORT_FREE_SAMPLING", True)
    vocab = 3000
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(top_k + 1)) * 2
    warped = _transformers_warped(logits, 0.7, top_k, top_p, min_p)
    sessions = []
    select = _selector(vocab, 0.7, top_k, top_p, min_p, session_out=sessions)
    session = sessions[0]
    assert session.variant.candidates == 0 and session.variant.whole_top_k == (top_k > 0)
    kept = _select_with_scores(session, select, logits, warped)
    assert bool(kept.sum(-1).gt(1).all()) and bool((~kept).any())  # each filter left a choice and removed some


@pytest.mark.parametrize("sort_free", [False, True], ids=["sorted", "sort_free"])
def test_selection_compiled_by_inductor_draws_the_eager_tokens(monkeypatch, sort_free):
    """The sampling selection as StaticDecoder.advance compiles it on CUDA (Inductor, ``fallback_random``),
    here through Inductor's CPU backend: the same tokens as eager from the same seed, over the whole vocabulary
    (top-p and min-p, by sort or by radix select) and on the top-k candidates."""
    from hf_tp.generation import decode_loop

    monkeypatch.setattr(decode_loop, "SORT_FREE_SAMPLING", sort_free)
    vocab = 3000
    logits = torch.randn(2, vocab, generator=torch.Generator().manual_seed(2)) * 3
    for top_k, top_p, min_p in ((0, 0.9, 0.05), (20, 0.9, 0.0)):
        select = _selector(vocab, 0.7, top_k, top_p, min_p)
        compiled = torch.compile(select, fullgraph=True, dynamic=False, options={"fallback_random": True})
        for seed in (1, 2, 3):
            torch.manual_seed(seed)
            want = select(logits)
            torch.manual_seed(seed)
            assert torch.equal(compiled(logits), want), (top_k, seed)


def _sampling_top_check(piece: int, chunk: int, cases) -> list:
    """In a TRITON_INTERPRET=1 process: sampling_topk's kernels with pieces of at least ``piece`` logits and
    merges read in ``chunk``s against torch.topk, for each (rows, width, count) and radix digits of 4 and 8
    bits; returns the failures."""
    from hf_tp.kernels import sampling_topk

    sampling_topk.PIECE, sampling_topk.CHUNK = piece, chunk
    failures = []
    for (rows, width, count), bits in itertools.product(cases, (4, 8)):
        sampling_topk.DIGIT_BITS = bits
        gen = torch.Generator().manual_seed(width)
        logits = (torch.randn(rows, width, generator=gen) * 2).to(torch.bfloat16).float()  # bf16 values: ties
        logits[rows - 1, ::3] = float("-inf")
        logits[0, -5:] = 50.0  # the best five in the short last piece, tied
        values, positions = sampling_topk.top_candidates_triton(logits, count)
        ties_in_order = all(bool((positions[r, :-1] < positions[r, 1:])[values[r, :-1] == values[r, 1:]].all())
                            for r in range(rows))
        if not (torch.equal(values, logits.topk(count, dim=-1).values)
                and torch.equal(logits.gather(-1, positions), values) and ties_in_order
                and positions[0, :5].tolist() == list(range(width - 5, width))):
            failures.append((rows, width, count, bits))
    return failures


def test_sampling_top_kernel_is_topk():
    """The Triton top-k candidates (Triton's interpreter on CPU; small pieces and merge chunks so that small rows
    have several): torch.topk's values, descending, at positions holding them, equal logits in position order;
    ties across pieces and chunks, -inf logits, a last piece cut short and a row of one piece included."""
    from conftest import run_interpreted

    cases = [(3, 3000, 64), (2, 5000, 256), (1, 200, 64), (1, 2100, 1024)]
    assert run_interpreted(_sampling_top_check, 256, 256, cases) == []


def test_sampling_top_plan_keeps_torch_topk_outside_the_kernels_range():
    """Counts that are not powers of two or above MAX_COUNT, and rows the candidates would fill, go to
    torch.topk; larger counts get wider pieces (8 x count), up to MAX_PIECE."""
    from hf_tp.kernels import sampling_topk

    assert sampling_topk.plan(128256, 64) == sampling_topk.PIECE
    assert sampling_topk.plan(128256, 1024) == 8192
    assert sampling_topk.plan(128256, 2048) is None and sampling_topk.plan(128256, 48) is None
    assert sampling_topk.plan(64, 64) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows,count", [(1, 64), (4, 64), (4, 256), (2, 1024)])
def test_gpu_sampling_top_kernel_is_topk_at_llama3_vocabulary(monkeypatch, rows, count, bits):
    """On the GPU, at Llama 3's vocabulary (128256: 63 pieces at count 64), with radix digits of 4 and 8 bits, the
    kernels in a CUDA graph give torch.topk's values at positions holding them, equal logits in position order."""
    from conftest import capture_graph
    from hf_tp.kernels import sampling_topk

    monkeypatch.setattr(sampling_topk, "DIGIT_BITS", bits)

    logits = torch.zeros(rows, 128256, device="cuda")
    graph, (values, positions) = capture_graph(sampling_topk.sampling_top, logits, count)
    for seed in range(3):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        logits.copy_((torch.randn(rows, 128256, device="cuda", generator=gen) * 3).bfloat16().float())
        logits[0, -3:] = logits[0].max() + 1  # a tie at the top, in the last piece
        graph.replay()
        assert torch.equal(values, logits.topk(count, dim=-1).values), seed
        assert torch.equal(logits.gather(-1, positions), values), seed
        tied = values[:, :-1] == values[:, 1:]
        assert bool((positions[:, :-1] < positions[:, 1:])[tied].all()), seed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")
@pytest.mark.parametrize("top_k,top_p,min_p", [(50, 0.9, 0.0), (50, 0.95, 0.05), (200, 0.8, 0.0)])
def test_gpu_top_k_sampling_with_the_kernel_is_transformers_warpers(monkeypatch, top_k, top_p, min_p):
    """decode_loop.TOPK_KERNEL on a GPU: the selection's warped scores equal Transformers' processors (ties at
    the k-th logit included), as with torch.topk."""
    from hf_tp.generation import decode_loop

    monkeypatch.setattr(decode_loop, "TOPK_KERNEL", True)
    _check_top_k_warpers(top_k, top_p, min_p, "cuda")


def test_top_k_tie_larger_than_the_candidates_is_reported():
    """A tie at the k-th logit wider than the candidates' spare room cannot be sampled exactly from the
    candidates: the step says so (the loop warns after the call)."""
    vocab = 500
    logits = torch.zeros(1, vocab)
    logits[0, :3] = torch.tensor([3.0, 2.0, 1.0])  # top_k=5: the 4th and 5th largest tie with 494 others
    sessions = []
    select = _selector(vocab, 1.0, 5, 1.0, session_out=sessions)
    sessions[0].scores = torch.zeros(1, 1, vocab)
    select(logits)
    assert bool(sessions[0].cut_ties)
    logits[0, 3:5] = 0.5  # now no tie at the 5th: the candidates hold every token top-k keeps
    sessions[0].cut_ties.zero_()
    select(logits)
    assert not bool(sessions[0].cut_ties)


def test_first_argmax_is_argmax_with_ties_and_nans():
    """The loop's two-step argmax (ARGMAX_CHUNKS pieces, then their maxima) gives torch.argmax's index: the first
    maximum, across pieces and within one, a NaN counting as the maximum; sizes that do not split fall back."""
    from hf_tp.generation.decode_loop import ARGMAX_CHUNKS, first_argmax

    gen = torch.Generator().manual_seed(0)
    n = ARGMAX_CHUNKS * 37
    rows = torch.randn(12, n, generator=gen)
    rows[1] = 0.0  # all tied: index 0
    rows[2, [5, 900, n - 1]] = 50.0  # ties in different pieces: the first
    rows[3, [37 * 3 + 1, 37 * 3 + 2]] = 50.0  # ties inside one piece
    rows[4, 1000] = float("nan")  # a NaN is argmax's maximum
    rows[5, [40, 2000]] = float("nan")
    rows[6] = float("-inf")
    rows[7, 17] = float("inf")
    rows[8] = torch.randint(0, 3, (n,), generator=gen).float()  # many ties
    rows[9, n - 1] = 99.0  # the last index
    for values in (rows, rows.bfloat16(), torch.randn(3, n + 1, generator=gen), torch.randn(2, 64, generator=gen)):
        assert torch.equal(first_argmax(values), values.argmax(-1)), values.shape
    assert first_argmax(rows)[2] == 5 and first_argmax(rows)[4] == 1000


def test_one_length_for_every_cache_layer(folder, batch, reference):
    """The loop's cache counts its positions in one tensor for all layers, advanced once per forward
    (compat.static_cache with a shared length; Transformers' layers advance one tensor each, a kernel per layer
    per step on a GPU): Transformers' greedy tokens, twice from the same session; the cache generate returns
    counts its own positions again, so Transformers' forward continues from it with the unsplit model's logits."""
    from hf_tp.assembly import load_parallel_model
    from hf_tp.compat import shared_length_layer
    from hf_tp.config import TPConfig
    from hf_tp.parallel.comm import TPGroup

    if shared_length_layer() is None:
        pytest.skip("this Transformers' StaticLayer.update is not the form the shared length repeats")
    model = load_parallel_model(folder, TPGroup(0, 1, torch.device("cpu")), dtype=torch.float32, progress=False,
                                tp_config=TPConfig(fast_decode=True))
    greedy = dict(do_sample=False, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=None)
    with torch.no_grad():
        first = model.generate(**batch, **greedy, return_dict_in_generate=True)
        again = model.generate(**batch, **greedy)
    assert torch.equal(first.sequences, reference["free"]) and torch.equal(again, reference["free"])
    sessions = list(model._hf_tp_decoder().sessions.values())
    assert sessions and all(session.shared_length for session in sessions)
    assert all(layer.linked for layer in sessions[0].cache.layers)  # relinked by the second call
    cache = first.past_key_values if hasattr(first, "past_key_values") else first.cache
    lengths = [layer.cumulative_length for layer in cache.layers]
    assert first.sequences.shape[1] - 1 == int(lengths[0])  # every position but the last token's
    # The first call's cache object is the session's: unlink it as that call returned it, and continue it with
    # Transformers' forward on the unsplit model
    from hf_tp.compat import rewind_static_cache, unlink_shared_length

    rewind_static_cache(cache, first.sequences.shape[1] - 1)
    unlink_shared_length(cache)
    assert len({id(layer.cumulative_length) for layer in cache.layers}) == len(cache.layers)
    sequences = first.sequences
    mask = torch.cat([batch["attention_mask"], torch.ones(2, NEW, dtype=torch.long)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    full_mask = torch.ones(2, cache.layers[0].max_cache_len, dtype=torch.long)
    full_mask[:, :mask.shape[1]] = mask
    with torch.no_grad():
        want = reference["model"](input_ids=sequences, attention_mask=mask).logits[:, -1]
        got = reference["model"](input_ids=sequences[:, -1:], attention_mask=full_mask, position_ids=positions[:, -1:],
                                 past_key_values=cache, use_cache=True).logits[:, -1]
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    assert all(int(layer.cumulative_length) == sequences.shape[1] for layer in cache.layers)


def test_the_reason_for_leaving_the_loop_is_the_users_request(plain_model):
    """The handle's workers add their own cancel criterion to beam search calls; the log line used to name
    ``stopping_criteria`` as the reason, which the user never passed. The reason is their request; a criterion
    of theirs is still named beside it."""
    from transformers import StoppingCriteriaList

    from hf_tp.generation.decode_loop import plan_request
    from hf_tp.orchestration.cancel import CancelCriterion

    class Theirs(CancelCriterion):
        hf_tp_internal = False

    ids = torch.tensor([[5, 6, 7]])
    ours = StoppingCriteriaList([CancelCriterion(lambda: None)])
    request, reason = plan_request(plain_model, (ids,), dict(max_new_tokens=4, num_beams=2, stopping_criteria=ours))
    assert request is None and reason == "num_beams=2", reason
    theirs = StoppingCriteriaList([*ours, Theirs(lambda: None)])
    request, reason = plan_request(plain_model, (ids,), dict(max_new_tokens=4, num_beams=2, stopping_criteria=theirs))
    assert request is None and reason == "stopping_criteria,num_beams=2", reason
