"""The single-controller handle (hf_tp.TPModel) answers the calls people make on a Transformers model
as that model does: the same result, the same kind of error, or a clear error where an argument cannot
cross the process boundary, and never a silently different path. Each test compares with the unsplit
Transformers model loaded from the same folder (the truth)."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import load_reference, rel_err, save_tiny_model, tiny_config
from transformers.generation.streamers import BaseStreamer

import hf_tp

IDS = torch.randint(2, 101, (2, 7), generator=torch.Generator().manual_seed(0))


class _Ban5(transformers.LogitsProcessor):
    """Defined in a test module, i.e. not importable by the workers, as a class from a notebook cell is not."""

    def __call__(self, input_ids, scores):
        scores[:, 5] = -float("inf")
        return scores


class _Null(BaseStreamer):
    def put(self, value):
        pass

    def end(self):
        pass


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """(handle, reference) on one tiny llama, started once for the module."""
    path = save_tiny_model(tmp_path_factory.mktemp("parity") / "llama", tiny_config("llama"), max_shard_size=None)
    model = hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype=torch.float32)
    yield model, load_reference(path)
    model.shutdown()


@pytest.fixture
def pair(shared):
    """The shared pair, with workers that a failed test left stopped restarted, and the generation
    config a test edited put back."""
    model, ref = shared
    if model._state != "ready":
        model.restart()
    saved = model.generation_config
    model.generation_config = transformers.GenerationConfig.from_dict(saved.to_dict())
    yield model, ref
    model.generation_config = saved


def test_generation_config_edits_on_the_handle_reach_the_workers(pair):
    """``model.generation_config.max_new_tokens = 5`` is how Transformers users set a default; the
    handle's copy must be the one the workers generate with."""
    model, ref = pair
    model.generation_config.max_new_tokens = 5
    ref_config = ref.generation_config
    ref.generation_config = transformers.GenerationConfig.from_dict(ref_config.to_dict())
    try:
        ref.generation_config.max_new_tokens = 5
        want = ref.generate(IDS, do_sample=False)
    finally:
        ref.generation_config = ref_config
    got = model.generate(IDS, do_sample=False)
    assert got.shape == want.shape == (2, 12)
    assert torch.equal(got, want)


def test_streamer_with_beam_search_is_refused_as_in_transformers(pair):
    model, ref = pair
    with pytest.raises(ValueError, match="cannot be used with beam search"):
        ref.generate(IDS, max_new_tokens=3, num_beams=2, streamer=_Null())
    with pytest.raises(ValueError, match="cannot be used with beam search"):
        model.generate(IDS, max_new_tokens=3, num_beams=2, streamer=_Null())
    assert torch.equal(model.generate(IDS, max_new_tokens=3, do_sample=False),
                       ref.generate(IDS, max_new_tokens=3, do_sample=False))


def test_beam_search_from_the_model_generation_config(tmp_path):
    """A checkpoint whose generation_config.json asks for beams: generate() with no arguments runs
    beam search, as in Transformers (the workers' own progress streamer must not get in the way)."""
    path = save_tiny_model(tmp_path / "beams", tiny_config("llama"), max_shard_size=None)
    transformers.GenerationConfig(bos_token_id=1, pad_token_id=0, num_beams=2, max_new_tokens=4).save_pretrained(path)
    want = load_reference(path).generate(IDS)
    with hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype=torch.float32) as model:
        assert torch.equal(model.generate(IDS), want)


def test_generation_config_object_with_return_dict(pair, caplog):
    """A generation_config object that asks for the output object gets it, and the workers' own
    bookkeeping does not make Transformers warn about mixing a config with keyword arguments."""
    model, ref = pair
    config = transformers.GenerationConfig(max_new_tokens=3, do_sample=False, return_dict_in_generate=True,
                                           output_scores=True)
    want = ref.generate(IDS, generation_config=config)
    got = model.generate(IDS, generation_config=config)
    assert type(got) is type(want)
    assert torch.equal(got.sequences, want.sequences)
    assert len(got.scores) == len(want.scores) == 3
    assert all(rel_err(g, w) <= 1e-5 for g, w in zip(got.scores, want.scores))
    # The flag set in the model's generation_config (not in the call) is honoured too.
    model.generation_config.return_dict_in_generate = True
    got = model.generate(IDS, max_new_tokens=2, do_sample=False)
    assert hasattr(got, "sequences") and got.sequences.shape == (2, 9)


def test_forward_with_return_dict_false(pair):
    """``model(ids, return_dict=False)`` returns Transformers' tuple, same positions, logits first."""
    model, ref = pair
    want = ref(IDS, return_dict=False, output_hidden_states=True)
    got = model(IDS, return_dict=False, output_hidden_states=True)
    assert isinstance(got, tuple) and len(got) == len(want)
    assert rel_err(got[0], want[0]) <= 1e-5
    assert len(got[-1]) == len(want[-1]) and rel_err(got[-1][-1], want[-1][-1]) <= 1e-5


def test_unimportable_argument_is_a_clear_error_and_the_model_survives(pair):
    """A logits processor whose class the workers cannot import (defined in a notebook cell or in the
    user's script) cannot be sent: a TypeError that says why, and the next call works; it must not
    take the workers down. A lambda cannot even be pickled here: the same kind of error."""
    model, ref = pair
    with pytest.raises(TypeError, match="importable"):
        model.generate(IDS, max_new_tokens=3, logits_processor=transformers.LogitsProcessorList([_Ban5()]))
    with pytest.raises(TypeError, match="importable"):
        model.generate(IDS, max_new_tokens=3, prefix_allowed_tokens_fn=lambda batch, ids: [3, 4])
    assert all(h["alive"] for h in model.health())
    assert torch.equal(model.generate(IDS, max_new_tokens=3, do_sample=False),
                       ref.generate(IDS, max_new_tokens=3, do_sample=False))


def test_common_model_attributes(pair):
    """What scripts read off a Transformers model before calling it: ``inputs.to(model.device)``,
    ``model.dtype``, ``model.eval()`` (which returns the model)."""
    model, ref = pair
    assert model.device == ref.device == torch.device("cpu")
    assert model.dtype == ref.dtype == torch.float32
    assert model.eval() is model
    batch = transformers.BatchEncoding({"input_ids": IDS, "attention_mask": torch.ones_like(IDS)})
    assert torch.equal(model.generate(**batch.to(model.device), max_new_tokens=2, do_sample=False),
                       ref.generate(**batch.to(ref.device), max_new_tokens=2, do_sample=False))


def test_kv_cache_arguments_are_refused_not_silently_dropped(pair):
    """The handle keeps no KV cache between calls (it lives split across the workers). A Transformers
    decode loop (``use_cache=True``, then ``past_key_values=out.past_key_values`` with the next token)
    would otherwise get None back and then logits of the lone next token: silently wrong. And a cache
    object passed in would never be filled. Each is a ValueError that says so."""
    model, ref = pair
    cache = transformers.DynamicCache(config=ref.config)
    with pytest.raises(ValueError, match="keeps no KV cache"):
        model(IDS, use_cache=True)
    with pytest.raises(ValueError, match="keeps no KV cache"):
        model(IDS[:, -1:], past_key_values=cache)
    with pytest.raises(ValueError, match="keeps no KV cache"):
        model.generate(IDS, max_new_tokens=2, past_key_values=cache)
    # Stateless calls are unchanged.
    assert rel_err(model(IDS, use_cache=False).logits, ref(IDS).logits) <= 1e-5
    assert torch.equal(model.generate(IDS, max_new_tokens=2, use_cache=True, do_sample=False),
                       ref.generate(IDS, max_new_tokens=2, do_sample=False))


def test_the_handle_has_the_sharding_plan_and_shows_its_cpu_config(pair):
    """Issue 20: ``model.hf_tp_plan`` (the way to print the sharding plan) works on the handle, and is the plan
    the workers split by: the parameter bytes it gives each rank are what that worker holds. ``repr`` and
    ``hf_tp_config`` show what applies on CPU (no CUDA graphs, no pinned buffers, gloo's all-reduce)."""
    import pickle

    from hf_tp.orchestration.memory import shard_bytes

    model, ref = pair
    plan = model.hf_tp_plan
    assert plan.tp_size == 2 and pickle.loads(pickle.dumps(plan)) == plan  # plain data
    assert "q_proj" in plan.describe() and "heads" in plan.describe()
    held = [m["weights_bytes"] for m in model.memory()]
    assert held == [shard_bytes(ref, plan, rank, torch.float32) for rank in range(2)]
    assert held[0] != held[1]  # the uneven split (6 q / 3 kv heads: 4 + 2, 2 + 1) is the plan's own
    config = model.hf_tp_config
    assert (config.cuda_graphs, config.pinned_load, config.allreduce) == (False, False, "gloo")
    assert "allreduce='gloo'" in repr(model) and "cuda_graphs=False" in repr(model) and "nccl'" not in repr(model)
