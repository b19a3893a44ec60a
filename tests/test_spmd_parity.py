"""SPMD mode (2 gloo ranks): the model hf_tp returns under a launcher answers the calls people make on a
Transformers model as that model does: forward outputs and options (hidden states, attentions, loss,
tuples, logits_to_keep, inputs_embeds, position ids, 4-D masks, a hand-written cache loop), generate
options (beams, scores, logits processors, assisted decoding) and model utilities; or it refuses with
a clear error where it cannot (training, resizing the vocabulary). Each check compares with the unsplit
Transformers model loaded from the same folder, inside the rank, and across ranks.

fp32 tolerance 1e-5 relative to the largest reference value (SPEC 4.5): the all-reduces only change
the summation order. One run_ranks call serves every test (each spawned rank pays seconds of imports).
"""

from __future__ import annotations

import pytest
import torch
from transformers import StaticCache

from conftest import load_reference, rel_err, run_ranks_once, save_tiny_model, tiny_config

TOL = 1e-5
PAD = 0
MODELS = {
    # conftest default: 6 q / 3 kv heads, uneven at tp 2 (rank 0: 4 q / 2 kv, rank 1: 2 q / 1 kv)
    "llama_uneven": ("llama", {}),
    # tied input/output embeddings over a padded (101 -> 2 x 51) vocab-parallel shard
    "llama_tied": ("llama", dict(tie_word_embeddings=True)),
    # one KV head, replicated on both ranks (each rank computes 2 of the 4 query heads against it)
    "qwen3_kv1": ("qwen3", dict(num_attention_heads=4, num_key_value_heads=1)),
}
IDS = torch.randint(2, 101, (2, 9), generator=torch.Generator().manual_seed(0))
GREEDY = dict(max_new_tokens=8, do_sample=False, pad_token_id=PAD)
GENERATE_CASES = {
    "beam": dict(num_beams=3),
    "beam_return_sequences": dict(num_beams=3, num_return_sequences=2),
    "scores_logits": dict(return_dict_in_generate=True, output_scores=True, output_logits=True),
    "beam_scores": dict(num_beams=2, return_dict_in_generate=True, output_scores=True),
    "hidden_states": dict(return_dict_in_generate=True, output_hidden_states=True),
    "attentions": dict(return_dict_in_generate=True, output_attentions=True),
    "repetition_penalty": dict(repetition_penalty=1.5),
    "no_repeat_ngram_size": dict(no_repeat_ngram_size=2),
    "sequence_bias": dict(sequence_bias={(5,): 10.0, (7, 8): -5.0}),
    "bad_words_ids": dict(bad_words_ids=[[5], [7, 8]]),
}


def _error(fn):
    """``fn()``'s result, or ("error", type name, message) when it raised."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - compared by the tests
        return ("error", type(exc).__name__, str(exc))


def _manual_decode(model, steps: int = 6):
    """A hand-written greedy loop feeding the returned cache back, one token at a time."""
    out = model(IDS, use_cache=True)
    seq, logits = IDS, [out.logits[:, -1]]
    for _ in range(steps):
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, token], dim=1)
        out = model(token, past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits[:, -1])
    return seq, torch.stack(logits)


def _forward_cases(model, vocab_embedding) -> dict:
    """Forward calls whose outputs are compared with Transformers'; every tensor field is kept."""
    embeds = vocab_embedding(IDS)  # the same inputs_embeds for both models: Transformers' own lookup
    labels = IDS.clone()
    labels[0, :3] = -100
    L = IDS.shape[1]
    mask4d = torch.full((2, 1, L, L), torch.finfo(torch.float32).min).triu(1)
    mask4d[1, :, :, :2] = torch.finfo(torch.float32).min  # row 1 also hides its first two tokens
    positions = torch.arange(3, 3 + L).expand(2, -1)
    with torch.no_grad():
        return {
            "logits": model(IDS).logits,
            "hidden_states": model(IDS, output_hidden_states=True).hidden_states,
            "attentions": model(IDS, output_attentions=True).attentions,
            "loss": model(IDS, labels=labels).loss,
            "tuple": tuple(t for t in model(IDS, return_dict=False) if torch.is_tensor(t)),
            "logits_to_keep_int": model(IDS, logits_to_keep=2).logits,
            "logits_to_keep_tensor": model(IDS, logits_to_keep=torch.tensor([1, 4, 8])).logits,
            "inputs_embeds": model(inputs_embeds=embeds).logits,
            "embedding_called_directly": model.get_input_embeddings()(IDS),
            "position_ids": model(IDS, position_ids=positions).logits,
            "mask_4d": model(IDS, attention_mask=mask4d).logits,
            "manual_cache_loop": _manual_decode(model),
        }


def _generate_cases(model, assistant) -> dict:
    out = {}
    for name, kwargs in GENERATE_CASES.items():
        res = model.generate(IDS, **GREEDY, **kwargs)
        out[name] = res if torch.is_tensor(res) else {k: v for k, v in res.items() if k not in ("cache", "past_key_values")}
    out["prompt_lookup"] = model.generate(IDS[:1], prompt_lookup_num_tokens=3, **GREEDY)
    # a cache built by user code from model.config (global head counts), and a continued generation
    out["user_static_cache"] = model.generate(IDS, past_key_values=StaticCache(config=model.config, max_cache_len=32),
                                              **GREEDY)
    first = model.generate(IDS, return_dict_in_generate=True, **GREEDY)
    out["continued"] = model.generate(first.sequences, past_key_values=first.past_key_values, **GREEDY)
    out["assistant_model"] = model.generate(IDS[:1], assistant_model=assistant, **GREEDY)
    return out


def _spmd_checks(folders: dict[str, str]) -> dict:
    """One rank: every check on every model, for hf_tp ("tp") and the unsplit model ("ref")."""
    import hf_tp

    results = {}
    for name, folder in folders.items():
        # eager attention: the only implementation that returns attention weights, in Transformers too
        model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=2, device="cpu", dtype=torch.float32,
                                                           attn_implementation="eager", progress=False)
        ref = load_reference(folder, attn_implementation="eager")
        res = {
            "forward": {"tp": _error(lambda: _forward_cases(model, ref.get_input_embeddings())),
                        "ref": _forward_cases(ref, ref.get_input_embeddings())},
            # the assistant is an unsplit model: the small draft model next to a split big one
            "generate": {"tp": _error(lambda: _generate_cases(model, ref)), "ref": _generate_cases(ref, ref)},
            "num_parameters": {
                "tp": [_error(lambda: model.num_parameters(exclude_embeddings=e)) for e in (False, True)],
                "ref": [ref.num_parameters(exclude_embeddings=e) for e in (False, True)]},
        }
        bad = torch.tensor([[3, 150, 4]])  # 150 is outside the 101-token vocabulary
        with torch.no_grad():
            res["bad_ids"] = {"embedding": _error(lambda: model.get_input_embeddings()(bad)),
                              "base_model": _error(lambda: model.model(bad).last_hidden_state)}
        grad_embeds = ref.get_input_embeddings()(IDS).detach().requires_grad_()
        res["grad_inputs_embeds"] = _error(lambda: type(model(inputs_embeds=grad_embeds)).__name__)
        res["train"] = _error(lambda: type(model.train()).__name__)
        res["resize"] = _error(lambda: type(model.resize_token_embeddings(128)).__name__)
        # after the refusals the model still answers as before
        with torch.no_grad():
            res["logits_after"] = model(IDS).logits
        results[name] = res
        del model
    return results


_RUNS: dict[int, object] = {}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("spmd_parity")
    folders = {name: str(save_tiny_model(root / name, tiny_config(arch, **overrides), seed=3 + i))
               for i, (name, (arch, overrides)) in enumerate(MODELS.items())}
    return run_ranks_once(_RUNS, _spmd_checks, 2, folders, timeout=400)


def _flat(value, prefix=""):
    """(path, tensor) pairs of nested tuples / lists / dicts of tensors."""
    if torch.is_tensor(value):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _flat(item, f"{prefix}.{key}")
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from _flat(item, f"{prefix}[{i}]")
    elif value is not None:
        yield prefix, value


def _assert_same(got, want, what: str) -> None:
    """Same structure; integer tensors equal, float tensors within TOL."""
    assert not (isinstance(got, tuple) and got[:1] == ("error",)), f"{what}: hf_tp raised {got[1]}: {got[2]}"
    got, want = list(_flat(got)), list(_flat(want))
    assert [p for p, _ in got] == [p for p, _ in want], f"{what}: other fields than Transformers'"
    for (path, g), (_, w) in zip(got, want):
        if not torch.is_tensor(w):
            assert g == w, f"{what}{path}: {g!r} != Transformers' {w!r}"
            continue
        assert g.shape == w.shape, f"{what}{path}: shape {tuple(g.shape)} != Transformers' {tuple(w.shape)}"
        if w.is_floating_point():
            assert rel_err(g, w) <= TOL, f"{what}{path}: rel err {rel_err(g, w):.2e} > {TOL}"
        else:
            assert torch.equal(g, w), f"{what}{path}: differs from Transformers'"


def _assert_ranks_equal(ranks, get, what: str) -> None:
    first = list(_flat(get(ranks[0])))
    for rank, res in enumerate(ranks[1:], start=1):
        other = list(_flat(get(res)))
        assert [p for p, _ in other] == [p for p, _ in first], f"{what}: rank {rank} returned other fields"
        for (path, a), (_, b) in zip(first, other):
            same = torch.equal(a, b) if torch.is_tensor(a) else a == b
            assert same, f"{what}{path}: rank {rank} differs from rank 0"


def _forward_keys():
    return ["logits", "hidden_states", "attentions", "loss", "tuple", "logits_to_keep_int", "logits_to_keep_tensor",
            "inputs_embeds", "embedding_called_directly", "position_ids", "mask_4d", "manual_cache_loop"]


def _check_against_transformers(ranks, name: str, group: str, case: str) -> None:
    """One case of one group ("forward" or "generate"): every rank equals Transformers, and the ranks agree."""
    for rank, res in enumerate(ranks):
        got = res[name][group]
        assert not (isinstance(got["tp"], tuple) and got["tp"][:1] == ("error",)), got["tp"]
        _assert_same(got["tp"][case], got["ref"][case], f"[rank {rank}] {name} {group} {case}")
    _assert_ranks_equal(ranks, lambda r: r[name][group]["tp"][case], f"{name} {group} {case}")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("case", _forward_keys())
def test_forward_output_matches_transformers(ranks, name, case):
    """Every forward output is full (all heads, all vocab) and equal to Transformers' on every rank."""
    _check_against_transformers(ranks, name, "forward", case)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("case", [*GENERATE_CASES, "prompt_lookup", "assistant_model", "user_static_cache",
                                  "continued"])
def test_generate_option_matches_transformers(ranks, name, case):
    _check_against_transformers(ranks, name, "generate", case)


@pytest.mark.parametrize("name", MODELS)
def test_num_parameters_counts_the_unsplit_model(ranks, name):
    """Transformers counts every parameter once at its full shape; each rank holds only a slice (plus
    vocab padding), and must still report the model's count."""
    for rank, res in enumerate(ranks):
        assert res[name]["num_parameters"]["tp"] == res[name]["num_parameters"]["ref"], f"rank {rank}"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("how", ["embedding", "base_model"])
def test_out_of_vocab_ids_are_refused_outside_the_top_level_forward(ranks, name, how):
    """Transformers raises IndexError for id 150 of a 101-token vocabulary; a vocab-parallel embedding
    would find no owner and embed zeros (SPEC 7). model.get_input_embeddings()(ids) and model.model(ids)
    do not pass through the checked top-level forward."""
    for rank, res in enumerate(ranks):
        got = res[name]["bad_ids"][how]
        assert isinstance(got, tuple) and got[:2] == ("error", "ValueError"), f"[rank {rank}] {how} returned {got!r}"
        assert "150" in got[2] and "vocabulary" in got[2], got[2]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("what", ["train", "grad_inputs_embeds"])
def test_training_and_gradients_are_refused_clearly(ranks, name, what):
    """Inference only: the collectives have no backward, so gradients would be silently wrong (measured:
    the gradient of the last hidden state w.r.t. inputs_embeds was 0.8 off, and differed by rank).
    model.train() and a forward whose inputs require grad raise a NotImplementedError saying so."""
    for rank, res in enumerate(ranks):
        got = res[name][what]
        assert isinstance(got, tuple) and got[:2] == ("error", "NotImplementedError"), f"[rank {rank}] {got!r}"
        assert "inference" in got[2], got[2]
        _assert_same(res[name]["logits_after"], res[name]["forward"]["ref"]["logits"], f"[rank {rank}] logits after")


@pytest.mark.parametrize("name", MODELS)
def test_resize_token_embeddings_is_refused_clearly(ranks, name):
    for rank, res in enumerate(ranks):
        got = res[name]["resize"]
        assert isinstance(got, tuple) and got[:2] == ("error", "NotImplementedError"), f"[rank {rank}] {got!r}"
        assert "resize_token_embeddings" in got[2] and "save_pretrained" in got[2], got[2]
