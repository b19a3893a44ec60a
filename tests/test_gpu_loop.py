"""hf_tp's decode loop with compile + CUDA graphs on one GPU (a TP group of one), against Transformers'
generate on the same GPU. Skipped without CUDA."""

import pytest
import torch

from conftest import load_reference, save_tiny_model, tiny_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from hf_tp.auto import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    folder = save_tiny_model(tmp_path_factory.mktemp("gpu_loop") / "m",
                             tiny_config("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3))
    device = torch.device("cuda", 0)
    ours = load_parallel_model(str(folder), TPGroup(0, 1, device), dtype=torch.float32, progress=False)
    return ours, load_reference(folder).to(device), device


def test_greedy_with_eos_and_padding_matches_transformers(models):
    ours, ref, device = models
    ids = torch.randint(1, 101, (2, 14), generator=torch.Generator().manual_seed(3)).to(device)
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0
    with torch.no_grad():
        free = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=40, do_sample=False, pad_token_id=0)
    eos = [int(free[0, 14 + 5]), int(free[1, 14 + 21])]
    for kwargs in (dict(max_new_tokens=40), dict(max_new_tokens=40, eos_token_id=eos)):
        with torch.no_grad():
            want = ref.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=0, **kwargs)
        got = ours.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=0, **kwargs)
        assert torch.equal(got, want), (kwargs, got[:, 14:].tolist(), want[:, 14:].tolist())
    assert ours._hf_tp_static_decoder.use_graphs and ours._hf_tp_static_decoder.sessions  # graphs were used
    # return_dict_in_generate: the sequences, and the cache rewound to them (the graph ran past the eos);
    # the next call replays the same graph on the reset cache.
    kwargs = dict(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=0, max_new_tokens=40, eos_token_id=eos)
    out = ours.generate(**kwargs, return_dict_in_generate=True)
    cache = out.get("cache", out.get("past_key_values"))
    assert torch.equal(out.sequences, want) and int(cache.get_seq_length()) == want.shape[1] - 1
    assert torch.equal(ours.generate(**kwargs), want)


def test_decode_timings_time_the_decode_steps_and_change_no_token(models):
    """decode_timings (hf-tp bench's GPU-timed decode rate): one (start, end, steps) per call, steps counting the
    graph replays after the prefill's token, and the tokens the same as without it."""
    from hf_tp.generation.decode_loop import CHECK_EVERY

    ours, _, device = models
    ids = torch.randint(1, 101, (1, 11), generator=torch.Generator().manual_seed(5)).to(device)
    kwargs = dict(input_ids=ids, do_sample=False, pad_token_id=0)
    plain = ours.generate(**kwargs, max_new_tokens=30)
    eos = int(plain[0, 11 + 9])  # the row ends at its tenth token, inside the second check's window
    early = ours.generate(**kwargs, max_new_tokens=30, eos_token_id=eos)
    decoder = ours._hf_tp_static_decoder
    decoder.decode_timings = []
    try:
        assert torch.equal(ours.generate(**kwargs, max_new_tokens=30), plain)
        assert torch.equal(ours.generate(**kwargs, max_new_tokens=30, eos_token_id=eos), early)
        torch.cuda.synchronize(device)
        (start, end, steps), (start2, end2, steps2) = decoder.decode_timings
    finally:
        decoder.decode_timings = None
    assert steps == 29 and start.elapsed_time(end) > 0
    # The early stop breaks at the first check at or past its end, where the step queued ahead of reading the
    # "unfinished" flag (decode_loop.CHECK_AHEAD) has run too: the graph ran past the eos
    finished = early.shape[1] - 11
    assert finished <= steps2 < finished + CHECK_EVERY and start2.elapsed_time(end2) > 0


def test_sampling_same_seed_same_tokens_including_the_capturing_call(models):
    ours, _, device = models
    ids = torch.randint(1, 101, (1, 9), generator=torch.Generator().manual_seed(4)).to(device)
    runs = []
    for seed in (7, 7, 7, 8):
        torch.manual_seed(seed)
        runs.append(ours.generate(input_ids=ids, do_sample=True, top_k=20, max_new_tokens=30, pad_token_id=0))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[1], runs[2])
    assert not torch.equal(runs[2], runs[3])
    torch.rand(2, device=device)  # the CUDA generator is usable after captures


@pytest.mark.parametrize("setting", ["top_k", "whole_vocabulary", "whole_vocabulary_sort_free"])
def test_compiled_sampling_selection_gives_the_eager_selections_tokens(models, monkeypatch, setting):
    """decode_loop.COMPILE_SAMPLING: the sampling selection compiled by Inductor into the captured step (its
    random draw the generator's own kernel) gives the eager selection's tokens from the same seed, in the
    capturing call and in a replay; "sort_free": with the top-p threshold by radix select
    (decode_loop.SORT_FREE_SAMPLING)."""
    from hf_tp.generation import decode_loop

    ours, _, device = models
    whole = dict(top_k=0, top_p=0.9, min_p=0.05, repetition_penalty=1.2)
    kwargs = dict(top_k=dict(top_k=20), whole_vocabulary=whole, whole_vocabulary_sort_free=whole)[setting]
    monkeypatch.setattr(decode_loop, "SORT_FREE_SAMPLING", setting.endswith("sort_free"))
    ids = torch.randint(1, 101, (1, 9), generator=torch.Generator().manual_seed(5)).to(device)
    decoder = ours._hf_tp_decoder()
    decoder.release_graphs()  # graphs captured by earlier tests hold their own selection
    runs = []
    for compiled in (False, True, True):
        if compiled != decode_loop.COMPILE_SAMPLING:
            monkeypatch.setattr(decode_loop, "COMPILE_SAMPLING", compiled)
            decoder.release_graphs()  # the next call captures its step again, with this selection
        torch.manual_seed(7)
        runs.append(ours.generate(input_ids=ids, do_sample=True, temperature=0.8, max_new_tokens=30, pad_token_id=0,
                                  **kwargs))
    decoder.release_graphs()  # later tests capture with the default selection
    assert "sample" in decoder._compiled_advance and "sample" not in decoder._advance_failed, "not compiled"
    eager, capturing, replay = runs
    assert torch.equal(capturing, replay), (capturing.tolist(), replay.tolist())
    assert torch.equal(capturing, eager), (capturing.tolist(), eager.tolist())


def _tp2_gloo_generate(folder):
    """One rank of tp 2 on cuda:0, joined by gloo: eager path, then the decode loop."""
    import dataclasses

    import torch.distributed as dist

    from hf_tp.auto import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    dist.init_process_group("gloo")
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    model = load_parallel_model(folder, TPGroup(dist.get_rank(), dist.get_world_size(), device), dtype=torch.float32,
                                progress=False)
    ids = torch.randint(1, 101, (2, 14), generator=torch.Generator().manual_seed(3)).to(device)
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0
    runs = {}
    for setting in ("0", "1"):  # fast_decode is read at each generate() from the model's TPConfig
        model.hf_tp_config = dataclasses.replace(model.hf_tp_config, fast_decode=setting == "1")
        runs[setting] = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                                       pad_token_id=0).cpu()
    decoder = getattr(model, "_hf_tp_static_decoder", None)
    return runs["0"], runs["1"], bool(decoder and decoder.use_graphs)


def test_loop_at_tp2_over_gloo_on_cuda_decodes_without_graphs(tmp_path):
    """tp 2 on one GPU over gloo: gloo collectives cannot be captured in a CUDA graph (trying crashed
    both ranks), so the loop must run without graphs on every rank and return the eager path's tokens.
    (NCCL inside the graph needs two GPUs: tests/test_gpu.py.)"""
    from conftest import run_ranks

    folder = save_tiny_model(tmp_path / "m", tiny_config("llama", hidden_size=72, num_attention_heads=9,
                                                         num_key_value_heads=3))
    results = run_ranks(_tp2_gloo_generate, 2, str(folder), timeout=300)
    for eager, loop, graphs in results:
        assert torch.equal(loop, results[0][0]) and torch.equal(eager, results[0][0])
    assert not any(graphs for _, _, graphs in results)
