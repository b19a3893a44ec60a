"""The loop's new request kinds (issue 20 section 3) with compile + CUDA graphs on one GPU (a TP group of
one), against Transformers' generate on the same GPU, fp32: each variant of the captured step (repetition
penalty, scores / logits buffers, min_p sampling, best-of-n, stop strings, sliding-window models past their
window) is captured and replayed. Skipped without CUDA. (CPU, tp 1-3: tests/test_loop_requests.py.)"""

import pytest
import torch

from conftest import load_reference, save_tiny_model, sliding_window_configs, tiny_config, tiny_tokenizer
from hf_tp.generation.decode_loop import Variant

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")]

PAD = 0
# Inductor fuses and reorders the forward's reductions: fp32 logits move by ~1e-6, not by 1e-4.
TOL = 1e-4


def _ours_and_reference(folder, device):
    from hf_tp.auto import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    ours = load_parallel_model(str(folder), TPGroup(0, 1, device), dtype=torch.float32, progress=False)
    return ours, load_reference(folder).to(device)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = tiny_tokenizer()
    folder = save_tiny_model(tmp_path_factory.mktemp("gpu_requests") / "m",
                             tiny_config("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3,
                                         vocab_size=len(tok)), seed=11)
    device = torch.device("cuda", 0)
    ours, ref = _ours_and_reference(folder, device)
    ids = torch.randint(5, len(tok), (2, 12), generator=torch.Generator().manual_seed(3)).to(device)
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = PAD, 0
    return ours, ref, tok, {"input_ids": ids, "attention_mask": mask}, device


def _close(got, want, what):
    got, want = torch.stack(got), torch.stack(want)
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), what
    assert float((got[finite] - want[finite]).abs().max()) <= TOL, what


def test_captured_variants_match_transformers(setup):
    ours, ref, tok, batch, _ = setup
    greedy = dict(do_sample=False, max_new_tokens=40, pad_token_id=PAD)
    outputs = dict(return_dict_in_generate=True, output_scores=True, output_logits=True)
    with torch.no_grad():
        free = ref.generate(**batch, **greedy, repetition_penalty=1.5)
    def clean_from(row: int, step: int) -> str:  # a token's text that the tokenizer can match (no partial bytes)
        while "\ufffd" in tok.decode(free[row, step]) or not tok.decode(free[row, step]).strip():
            step += 1
        return tok.decode(free[row, step])[-2:]

    stops = [clean_from(0, 12 + 9), clean_from(1, 12 + 21)]
    requests = {
        "penalty": dict(greedy, repetition_penalty=1.3),
        "penalty_outputs": dict(greedy, **outputs, repetition_penalty=0.8, min_new_tokens=5, eos_token_id=[7]),
        "best_of_3_top_k1": dict(greedy, **outputs, do_sample=True, top_k=1, num_return_sequences=3,
                                 repetition_penalty=1.2),
        "stop_strings": dict(greedy, repetition_penalty=1.5, stop_strings=stops, tokenizer=tok, eos_token_id=3),
    }
    for name, kwargs in requests.items():
        for _ in range(2):  # the capturing call, then a replay of the captured graph
            with torch.no_grad():
                want = ref.generate(**batch, **kwargs)
            got = ours.generate(**batch, **kwargs)
            if torch.is_tensor(want):
                assert torch.equal(got, want), (name, got[:, 12:].tolist(), want[:, 12:].tolist())
                continue
            assert torch.equal(got.sequences, want.sequences), name
            _close(got.scores, want.scores, f"{name} scores")
            _close(got.logits, want.logits, f"{name} logits")
    decoder = ours._hf_tp_static_decoder
    captured = {variant for session in decoder.sessions.values() for variant, graph in session.graphs.items()
                if graph is not None}
    # Stop strings are checked between steps, outside the graph: that request replays the penalty graph.
    expected = {Variant(do_sample=False, penalty=True, scores=False, logits=False, min_p=False),
                Variant(do_sample=False, penalty=True, scores=True, logits=True, min_p=False),
                Variant(do_sample=True, penalty=True, scores=True, logits=True, min_p=False, candidates=64)}
    assert decoder.use_graphs and captured == expected, captured


def test_min_p_sampling_reproducible_including_the_capturing_call(setup):
    ours, _, _, batch, _ = setup
    kwargs = dict(do_sample=True, temperature=0.8, top_k=0, top_p=0.95, min_p=0.1, repetition_penalty=1.2,
                  num_return_sequences=2, max_new_tokens=30, pad_token_id=PAD)
    runs = []
    for seed in (7, 7, 7, 8):
        torch.manual_seed(seed)
        runs.append(ours.generate(**batch, **kwargs))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[1], runs[2])
    assert not torch.equal(runs[2], runs[3])


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text", "mistral"])
def test_sliding_window_model_captured_past_its_window(tmp_path, arch):
    """Sliding window 8, 12-token prompts (one left-padded), 16 new tokens: the loop captures the step with
    the sliding layers as long as the cache, and the model's sliding-window mask gives Transformers' tokens
    (Transformers' own generate keeps only the window in those layers)."""
    device = torch.device("cuda", 0)
    config = sliding_window_configs(8)[arch]
    ours, ref = _ours_and_reference(save_tiny_model(tmp_path / arch, config, seed=2), device)
    ids = torch.randint(5, 101, (2, 12), generator=torch.Generator().manual_seed(4)).to(device)
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = PAD, 0
    kwargs = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16, pad_token_id=PAD,
                  repetition_penalty=1.3, return_dict_in_generate=True, output_logits=True)
    for _ in range(2):  # the capturing call, then a replay of the captured graph
        with torch.no_grad():
            want = ref.generate(**kwargs)
        got = ours.generate(**kwargs)
        assert torch.equal(got.sequences, want.sequences), (arch, got.sequences.tolist(), want.sequences.tolist())
        _close(got.logits, want.logits, f"{arch} logits")
    decoder = ours._hf_tp_static_decoder
    assert decoder.use_graphs and any(g is not None for s in decoder.sessions.values() for g in s.graphs.values())
