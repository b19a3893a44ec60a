"""The requests chat UIs and eval harnesses send, served by hf_tp's decode loop (issue 20, section 3):
repetition_penalty, min_p, output_scores / output_logits, num_return_sequences with sampling,
stop_strings with a tokenizer, and models with sliding-window / hybrid caches (Gemma 2, Gemma 3,
Mistral with sliding_window) well past their window. At tp 1, 2 and 3 on CPU (gloo, fp32), one process launch
per tp size, forced on with HF_TP_FAST_DECODE=1.

Truth: Transformers' generate on the unsplit model from the same folder, with the same arguments:
greedy tokens identical, scores and logits within 1e-5 (the -inf entries at the same places).
Sampling draws other random numbers than Transformers, so its tokens are checked for agreement
between ranks and reproducibility, and its scores against Transformers' processors applied, step by
step, to the loop's own sampled sequences."""

from __future__ import annotations

import pytest
import torch

from conftest import (load_reference, run_ranks_once, save_tiny_model, sliding_window_configs, tiny_config,
                      tiny_tokenizer)

PAD = 0
NEW = 20
PROMPT = 9
TOL = 1e-5
SAMPLING = dict(do_sample=True, temperature=0.8, top_k=0, top_p=0.95, min_p=0.1, repetition_penalty=1.2,
                num_return_sequences=2, max_new_tokens=10, pad_token_id=PAD)
SAMPLED_OUTPUTS = dict(return_dict_in_generate=True, output_scores=True, output_logits=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    tok = tiny_tokenizer()
    # 9 query / 3 KV heads: uneven at tp 2; vocab 319 = 11 x 29: padded at tp 2 and 3.
    config = tiny_config("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3, vocab_size=len(tok))
    path = save_tiny_model(tmp_path_factory.mktemp("loop_requests") / "m", config, seed=11)
    tok.save_pretrained(path)
    return str(path)


WINDOW = 8  # sliding window of the models below: a 12-token prompt and 16 new tokens are 3.5 windows
SLIDING_PROMPT = 12
SLIDING_NEW = 16


# name -> generate kwargs; the loop serves every one of them (its sliding layers are as long as the cache).
SLIDING_CASES = {
    "greedy": dict(do_sample=False, max_new_tokens=SLIDING_NEW, pad_token_id=PAD),
    "penalty_logits": dict(do_sample=False, max_new_tokens=SLIDING_NEW, pad_token_id=PAD, repetition_penalty=1.3,
                           return_dict_in_generate=True, output_logits=True),
}


def sliding_batch() -> dict:
    """12-token prompts in the sliding models' vocabulary (101); the second row left-padded by 3."""
    ids = torch.randint(5, 101, (2, SLIDING_PROMPT), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = PAD, 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def sliding_folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sliding")
    return {name: str(save_tiny_model(root / name, config, seed=2))
            for name, config in sliding_window_configs(WINDOW).items()}


@pytest.fixture(scope="module")
def batch(folder) -> dict[str, torch.Tensor]:
    vocab = load_reference(folder).config.vocab_size
    ids = torch.randint(5, vocab, (2, PROMPT), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = PAD, 0  # second row left-padded: its padding is not "seen" by the penalty
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def reference(folder, batch):
    from transformers import AutoTokenizer

    model, tok = load_reference(folder), AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        free = model.generate(**batch, do_sample=False, max_new_tokens=NEW, pad_token_id=PAD, repetition_penalty=1.5)
    new = free[:, PROMPT:]
    # Stop strings taken from the penalized greedy text: the first cleanly decoded token from row 0's 5th and
    # from row 1's 11th, so the rows stop at different steps (earlier if the text occurs earlier), neither a
    # multiple of 8 (test_stop_strings_are_exercised checks). The third, 20 characters long, never occurs: the
    # loop checks the steps whose sequences are shorter than that one by one, the later ones in one call on a
    # batch of windows, and row 0 stops in the first part, row 1 in the second.
    def clean_from(row: int, step: int) -> str:
        while "\ufffd" in tok.decode(new[row, step]) or not tok.decode(new[row, step]).strip():
            step += 1
        return tok.decode(new[row, step])[-3:]

    stops = [clean_from(0, 4), clean_from(1, 10), "z" * 20]
    unused_eos = int(torch.ones(model.config.vocab_size).index_fill_(0, free.flatten(), 0).nonzero()[0])
    return {"model": model, "tok": tok, "stops": stops, "eos": unused_eos}


def cases(stops: list[str], eos: int) -> dict[str, tuple[dict, bool]]:
    """name -> (generate kwargs, whether hf_tp's loop serves it). ``tokenizer=True`` stands for the tokenizer."""
    greedy = dict(do_sample=False, max_new_tokens=NEW, pad_token_id=PAD)
    outputs = dict(return_dict_in_generate=True, output_scores=True, output_logits=True)
    stop = dict(stop_strings=stops, tokenizer=True, repetition_penalty=1.5)
    row0 = dict(input_ids="row0", attention_mask="row0")
    return {
        "penalty": ({**greedy, "repetition_penalty": 1.3}, True),
        # < 1 rewards repetition; with eos, min_new_tokens, scores and logits.
        "penalty_reward_outputs": ({**greedy, **outputs, "repetition_penalty": 0.7, "eos_token_id": [eos, 7],
                                    "min_new_tokens": 6}, True),
        "scores_only": ({**greedy, "return_dict_in_generate": True, "output_scores": True}, True),
        "min_p_greedy": ({**greedy, "min_p": 0.5}, True),  # a warper: greedy ignores it, as Transformers does
        # top_k=1 sampling is deterministic: the n copies equal Transformers' exactly (tokens and warped scores).
        "best_of_3_top_k1": ({**greedy, **outputs, "do_sample": True, "top_k": 1, "num_return_sequences": 3,
                              "repetition_penalty": 1.2}, True),
        "stop_strings_eos": ({**greedy, **stop, "eos_token_id": eos}, True),  # finished rows are padded
        "stop_strings_no_eos": ({**greedy, **stop, "eos_token_id": None}, True),  # finished rows run on
        "stop_strings_one_row_outputs": ({**greedy, **stop, **outputs, **row0, "eos_token_id": None}, True),
        "stop_strings_two_rows_outputs": ({**greedy, **stop, **outputs, "eos_token_id": None}, False),
        "no_repeat_ngram": ({**greedy, "no_repeat_ngram_size": 2}, False),
        "beams": ({**greedy, "num_beams": 2}, False),
        "custom_processor": ({**greedy, "logits_processor": "custom"}, False),
    }


def _resolve(kwargs: dict, batch: dict, tokenizer) -> dict:
    from transformers import LogitsProcessorList, TemperatureLogitsWarper

    out = {**batch, **kwargs}
    if out.get("tokenizer") is True:
        out["tokenizer"] = tokenizer
    if isinstance(out.get("input_ids"), str):  # "row0": the batch's first row alone
        out["input_ids"], out["attention_mask"] = batch["input_ids"][:1], batch["attention_mask"][:1]
    if isinstance(out.get("logits_processor"), str):  # "custom": a processor object of the caller's
        out["logits_processor"] = LogitsProcessorList([TemperatureLogitsWarper(0.5)])
    return out


def _plain(result) -> dict:
    """sequences, and stacked scores / logits (steps, rows, vocab) when present."""
    if torch.is_tensor(result):
        return {"sequences": result}
    return {"sequences": result.sequences,
            **{k: torch.stack(result[k]) for k in ("scores", "logits") if result.get(k) is not None}}


def _load(folder: str, tp: int):
    import hf_tp

    if tp == 1:  # hf_tp's layers and decode loop with no collectives (what `hf-tp bench` runs at tp 1)
        from hf_tp.assembly import load_parallel_model
        from hf_tp.parallel.comm import TPGroup

        return load_parallel_model(folder, TPGroup(tp_rank=0, tp_size=1, device=torch.device("cpu")),
                                   dtype=torch.float32, progress=False)
    return hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=tp, device="cpu", dtype=torch.float32)


def _compiled_steps(model, batch: dict, steps: int, compiled: bool = True, **settings):
    """The loop's compiled forward (what the GPU captures: fullgraph, collectives traced) run step by step
    through a session, and the number of graphs Dynamo compiled for it (``compiled=False``: the same steps
    eagerly; ``settings``: generate's, greedy by default)."""
    from torch._dynamo.utils import counters

    from hf_tp.generation.decode_loop import plan_request

    kwargs = {**dict(attention_mask=batch["attention_mask"], do_sample=False, max_new_tokens=steps, pad_token_id=PAD),
              **settings}
    request, reason = plan_request(model, (batch["input_ids"],), kwargs)
    assert request is not None, reason
    decoder = model._hf_tp_decoder()
    prompt = batch["input_ids"].shape[1]
    session = decoder._session(batch["input_ids"].shape[0], prompt + steps)
    model._hf_tp_in_generate = True  # as inside generate: inputs were checked once, not per step
    try:
        with torch.no_grad():
            session.start(request)
            for _ in range(steps - 1):
                session._decode_step(decoder.compiled_forward if compiled else decoder.eager_forward)
    finally:
        model._hf_tp_in_generate = False
    return torch.cat([batch["input_ids"], session.out[:, :steps]], dim=1), counters["stats"]["unique_graphs"]


# Sampling settings whose selection the compiled step traces: the whole vocabulary sorted (top-k off) with every
# processor, and the top-k candidates' path.
COMPILED_SAMPLING = {
    "whole_vocabulary": dict(do_sample=True, temperature=0.8, top_k=0, top_p=0.95, min_p=0.1, repetition_penalty=1.2),
    "top_k": dict(do_sample=True, temperature=0.8, top_k=5, top_p=0.9),
}


def _compiled_sampling_steps(model, batch: dict) -> dict:
    """Per setting: the tokens of the compiled steps and of the eager steps from the same seed, whether the
    sampling selection was compiled (not left eager by a failed trace), and the graphs the compiled run added."""
    from hf_tp.generation import decode_loop

    decode_loop.COMPILE_SAMPLING = True  # the default; set in case a test before flipped it
    out = {}
    decoder = model._hf_tp_decoder()
    for name, settings in COMPILED_SAMPLING.items():
        torch.manual_seed(11)
        eager, _ = _compiled_steps(model, batch, 6, compiled=False, **settings)
        torch.manual_seed(11)
        _, before = _compiled_steps(model, batch, 6, compiled=False, **settings)  # graphs so far
        torch.manual_seed(11)
        tokens, after = _compiled_steps(model, batch, 6, **settings)
        out[name] = dict(eager=eager, compiled=tokens, graphs=after - before,
                         traced="sample" in decoder._compiled_advance and "sample" not in decoder._advance_failed,
                         enabled=decode_loop.COMPILE_SAMPLING)
    return out


def requests_on_ranks(folder: str, batch: dict, stops: list[str], eos: int, sliding: dict[str, str]) -> dict:
    import os

    os.environ["HF_TP_FAST_DECODE"] = "1"
    os.environ["HF_TP_FUSE"] = "1"  # q/k/v and gate/up as one GEMM each, as on CUDA
    from conftest import count_decode_loop_calls
    from transformers import AutoTokenizer

    calls = count_decode_loop_calls()
    tp = int(os.environ["WORLD_SIZE"])
    model = _load(folder, tp)
    tok = AutoTokenizer.from_pretrained(folder)
    out, served = {}, {}
    for name, (kwargs, _) in cases(stops, eos).items():
        before = len(calls)
        out[name] = _plain(model.generate(**_resolve(kwargs, batch, tok)))
        served[name] = len(calls) > before
    out["served"] = served
    before = len(calls)
    torch.manual_seed(7)
    out["sample_a"] = _plain(model.generate(**batch, **SAMPLING, **SAMPLED_OUTPUTS))
    torch.manual_seed(7)
    out["sample_b"] = _plain(model.generate(**batch, **SAMPLING))  # reproducible, also without outputs
    torch.manual_seed(100 + int(os.environ["RANK"]))  # ranks seeded differently: rank 0's seed is broadcast
    out["sample_rank_seeds"] = _plain(model.generate(**batch, **SAMPLING))
    out["sampling_served"] = len(calls) - before
    small = sliding_batch()
    for arch, path in sliding.items():
        sliding_model = _load(path, tp)
        for name, kwargs in SLIDING_CASES.items():
            before = len(calls)
            out[f"{arch}_{name}"] = _plain(sliding_model.generate(**small, **kwargs))
            out["served"][f"{arch}_{name}"] = len(calls) > before
        if tp == 2 and arch == "gemma3_text":  # local and global layers in one compiled step, past the window
            out["gemma3_compiled"] = _compiled_steps(sliding_model, small, SLIDING_NEW)
    if tp == 2:
        out["sampling_compiled"] = _compiled_sampling_steps(model, batch)
    from hf_tp.generation import decode_loop

    decode_loop.SORT_FREE_SAMPLING = True  # off by default until measured on a GPU
    torch.manual_seed(7)
    out["sample_sort_free"] = _plain(model.generate(**batch, **SAMPLING, **SAMPLED_OUTPUTS))
    decode_loop.SORT_FREE_SAMPLING = False
    return out


_RUNS: dict = {}


@pytest.fixture(scope="module", params=[1, 2, 3], ids=["tp1", "tp2", "tp3"])
def ranks(request, folder, batch, reference, sliding_folders):
    return run_ranks_once(_RUNS, requests_on_ranks, request.param, folder, batch, reference["stops"], reference["eos"],
                          sliding_folders, timeout=600)


def _assert_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), f"{what}: -inf at other places"
    assert torch.equal(got[~finite], want[~finite]), what
    err = float((got[finite] - want[finite]).abs().max()) if finite.any() else 0.0
    assert err <= TOL, f"{what}: max abs difference {err:.2e} > {TOL}"


CASES = list(cases(["x"], 0))


@pytest.mark.parametrize("case", CASES)
def test_requests_match_transformers_generate(ranks, reference, batch, case):
    kwargs = _resolve(cases(reference["stops"], reference["eos"])[case][0], batch, reference["tok"])
    with torch.no_grad():
        want = _plain(reference["model"].generate(**kwargs))
    for rank, out in enumerate(ranks):
        got = out[case]
        assert sorted(got) == sorted(want), f"rank {rank} {case}: fields {sorted(got)} != {sorted(want)}"
        assert torch.equal(got["sequences"], want["sequences"]), \
            f"rank {rank} {case}:\n{got['sequences'].tolist()}\n{want['sequences'].tolist()}"
        for field in ("scores", "logits"):
            if field in want:
                _assert_close(got[field], want[field], f"rank {rank} {case} {field}")


def test_loop_served_the_supported_requests(ranks, reference):
    expected = {name: served for name, (_, served) in cases(reference["stops"], reference["eos"]).items()}
    expected.update({f"{arch}_{name}": True for arch in sliding_window_configs(WINDOW) for name in SLIDING_CASES})
    for out in ranks:
        assert out["served"] == expected
        assert out["sampling_served"] == 3


def test_stop_strings_are_exercised(reference, batch):
    """The stop-string cases above check a real stop: both rows stop, at different steps, before NEW
    tokens and off the loop's check interval (so the host check had to look back and trim)."""
    kwargs = _resolve(cases(reference["stops"], reference["eos"])["stop_strings_no_eos"][0], batch, reference["tok"])
    with torch.no_grad():
        stopped = reference["model"].generate(**kwargs)
    length = stopped.shape[1] - PROMPT
    assert length < NEW and length % 8 != 0, length
    with torch.no_grad():
        one = reference["model"].generate(**{**kwargs, "input_ids": batch["input_ids"][:1],
                                             "attention_mask": batch["attention_mask"][:1]})
    assert one.shape[1] < stopped.shape[1]  # row 0 stops earlier than row 1


def test_sampling_agrees_across_ranks_and_is_reproducible(ranks):
    first = ranks[0]
    for rank, out in enumerate(ranks):
        for key in ("sample_a", "sample_b", "sample_rank_seeds", "sample_sort_free"):
            same = torch.equal(out[key]["sequences"], first[key]["sequences"])
            assert same, f"rank {rank} sampled other tokens ({key})"
    seqs = first["sample_a"]["sequences"]
    assert torch.equal(seqs, first["sample_b"]["sequences"])
    assert seqs.shape[0] == 4  # 2 prompts x 2 samples, each prompt's samples next to each other
    assert torch.equal(seqs[0::2, :PROMPT], seqs[1::2, :PROMPT])
    assert not torch.equal(seqs[0::2], seqs[1::2])  # the two samples of a prompt were drawn independently


@pytest.mark.parametrize("run", ["sample_a", "sample_sort_free"], ids=["sorted", "sort_free"])
def test_sampled_scores_are_transformers_processors(ranks, reference, batch, run):
    """Each step's scores (and raw logits) of the sampled run equal what Transformers' generate computes
    for that step: its own processors (penalty, temperature, top-p, min-p) on the same prefix. "sort_free":
    the loop's top-p threshold by radix select (decode_loop.SORT_FREE_SAMPLING), not by a sort."""
    model = reference["model"]
    one_each = {k: v for k, v in SAMPLING.items() if k != "num_return_sequences"}
    ids = batch["input_ids"].repeat_interleave(2, dim=0)
    mask = batch["attention_mask"].repeat_interleave(2, dim=0)
    for rank, out in enumerate(ranks):
        sampled = out[run]
        seqs = sampled["sequences"]
        assert sampled["scores"].shape[0] == seqs.shape[1] - PROMPT
        for step in range(seqs.shape[1] - PROMPT):
            prefix = seqs[:, :PROMPT + step]
            prefix_mask = torch.cat([mask, torch.ones(ids.shape[0], step, dtype=torch.long)], dim=1)
            with torch.no_grad():
                want = model.generate(prefix, attention_mask=prefix_mask, **{**one_each, "max_new_tokens": 1},
                                      **SAMPLED_OUTPUTS)
            _assert_close(sampled["scores"][step], want.scores[0], f"rank {rank} sampled scores, step {step}")
            _assert_close(sampled["logits"][step], want.logits[0], f"rank {rank} sampled logits, step {step}")
        # min_p and top_p did remove tokens (the check above compares where -inf is)
        assert bool(torch.isinf(sampled["scores"]).any())


@pytest.mark.parametrize("arch", list(sliding_window_configs(WINDOW)))
@pytest.mark.parametrize("case", list(SLIDING_CASES))
def test_sliding_window_models_match_transformers(ranks, sliding_folders, arch, case):
    """Past the window the loop serves them (test_loop_served_the_supported_requests) with Transformers'
    tokens, and logits within 1e-5, though its sliding layers keep every position and Transformers' keep
    only the window: the model's own sliding-window mask hides the rest."""
    with torch.no_grad():
        want = _plain(load_reference(sliding_folders[arch]).generate(**sliding_batch(), **SLIDING_CASES[case]))
    assert want["sequences"].shape[1] == SLIDING_PROMPT + SLIDING_NEW
    for rank, out in enumerate(ranks):
        got = out[f"{arch}_{case}"]
        assert sorted(got) == sorted(want), f"rank {rank} {arch} {case}: fields {sorted(got)} != {sorted(want)}"
        assert torch.equal(got["sequences"], want["sequences"]), \
            f"rank {rank} {arch} {case}:\n{got['sequences'].tolist()}\n{want['sequences'].tolist()}"
        if "logits" in want:
            _assert_close(got["logits"], want["logits"], f"rank {rank} {arch} {case} logits")


@pytest.mark.parametrize("arch", list(sliding_window_configs(WINDOW)))
def test_the_sliding_window_changes_the_tokens(sliding_folders, arch):
    """The comparison above would not notice a loop that ignored the window if the window changed nothing:
    the same weights with a window longer than the whole sequence give other tokens in every case."""
    for kwargs in SLIDING_CASES.values():
        with torch.no_grad():
            windowed = load_reference(sliding_folders[arch]).generate(**sliding_batch(), **kwargs)
            unbounded = load_reference(sliding_folders[arch], sliding_window=1000).generate(**sliding_batch(), **kwargs)
        sequences = [getattr(out, "sequences", out) for out in (windowed, unbounded)]
        assert not torch.equal(*sequences), f"{arch} {kwargs}: the window changed no token"


@pytest.mark.parametrize("setting", list(COMPILED_SAMPLING))
def test_compiled_sampling_step_matches_eager_steps(ranks, setting):
    """The sampling selection compiled with the step (StaticDecoder.advance: fullgraph, its random draw the
    generator's own) gives the eager steps' tokens from the same seed, on every rank; one graph per setting."""
    if "sampling_compiled" not in ranks[0]:
        pytest.skip("the compiled sampling step is checked once, by the tp 2 ranks (tp 1 and 3 trace the same code)")
    for rank, out in enumerate(ranks):
        got = out["sampling_compiled"][setting]
        assert got["enabled"], "decode_loop.COMPILE_SAMPLING is off: nothing to check"
        assert got["traced"], f"rank {rank}: the sampling selection was not compiled (left eager)"
        assert torch.equal(got["compiled"], got["eager"]), f"rank {rank}: {got['compiled'].tolist()} != {got['eager'].tolist()}"
        # the forward was compiled for this shape already by the greedy case; the selection adds its graph
        assert got["graphs"] >= 1, f"rank {rank}: no graph compiled for the sampling selection"
    assert torch.equal(ranks[0]["sampling_compiled"][setting]["compiled"], ranks[1]["sampling_compiled"][setting]["compiled"])


def test_gemma3_compiled_step_matches_eager(ranks):
    """Gemma 3's local and global layers, its local layers' cache as long as the global ones': the compiled
    forward (fullgraph) gives the eager tokens at tp 2 past the window, as one graph for every step (the
    sliding-window mask is computed from the cache's position tensor: no shape changes at the window)."""
    if "gemma3_compiled" not in ranks[0]:
        pytest.skip("the compiled Gemma 3 step is checked once, by the tp 2 ranks (compiling it at tp 1 and 3 too adds minutes and no coverage)")
    want = ranks[0]["gemma3_text_greedy"]["sequences"]
    for rank, out in enumerate(ranks):
        tokens, graphs = out["gemma3_compiled"]
        # fullgraph, one shape: the forward, and the greedy selection and bookkeeping (StaticDecoder.advance)
        assert graphs == 2, f"rank {rank}: {graphs} compiled graphs (two expected)"
        assert torch.equal(tokens, want), f"rank {rank}: {tokens.tolist()} != {want.tolist()}"
