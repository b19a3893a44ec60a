"""The single-controller handle where a Transformers model is expected: ``transformers.pipeline``
("text-generation") gives the same answers with the handle as with the unsplit Transformers model
(chat messages, a list of prompts with batch_size, return_full_text), and the attributes clients read
off a model mean the same thing; the rest raises an AttributeError that says why."""

from __future__ import annotations

import logging

import pytest
import torch
import transformers
from conftest import load_reference, save_tiny_model, tiny_config, tiny_tokenizer

import hf_tp

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = ["Hello world", "The capital of France is", "tell me a story about a lighthouse"]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _answers(model, tok) -> list:
    pipe = transformers.pipeline("text-generation", model=model, tokenizer=tok)
    greedy = dict(max_new_tokens=12, do_sample=False)
    return [
        pipe(CHAT, **greedy),
        pipe(PROMPTS, batch_size=2, return_full_text=False, **greedy),
        pipe(PROMPTS[1], return_full_text=True, **greedy),
        pipe(PROMPTS[1], max_new_tokens=5, num_beams=2, do_sample=False),  # beam search goes through too
    ]


def test_text_generation_pipeline_matches_transformers(tmp_path):
    tok = tiny_tokenizer()
    tok.padding_side = "left"  # decoder-only batches, as Transformers recommends
    path = save_tiny_model(tmp_path / "model", tiny_config("llama", vocab_size=len(tok), max_position_embeddings=256),
                           max_shard_size=None)
    want = _answers(load_reference(path), tok)
    records = _Records()
    logging.getLogger("transformers").addHandler(records)
    try:
        with hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype=torch.float32) as model:
            got = _answers(model, tok)
    finally:
        logging.getLogger("transformers").removeHandler(records)
    assert got == want
    assert want[0][0]["generated_text"][-1]["role"] == "assistant" and len(want[1]) == len(PROMPTS)
    assert want[2][0]["generated_text"].startswith(PROMPTS[1])
    # transformers.pipeline logs an error for a model class it does not know ("TPModel is not supported").
    assert not [m for m in records.messages if "not supported" in m], records.messages


def test_model_attributes_clients_read(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    ref = load_reference(path)
    with hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype=torch.float32) as model:
        assert isinstance(model, hf_tp.TPModel) and type(model).__name__ == type(ref).__name__ == "LlamaForCausalLM"
        assert model.can_generate() is True and model.main_input_name == ref.main_input_name == "input_ids"
        assert model.name_or_path == ref.name_or_path == str(path)
        assert model.device == ref.device and model.dtype == ref.dtype == torch.float32
        assert model.config.to_dict() == ref.config.to_dict()
        assert model.generation_config.to_dict() == ref.generation_config.to_dict()
        assert model.to("cpu") is model and model.to(torch.device("cpu"), dtype=torch.float32) is model
        with pytest.raises(ValueError, match="cannot change its dtype in place"):
            model.to(torch.float16)
        for name in ("parameters", "state_dict", "half", "get_input_embeddings", "model", "lm_head"):
            with pytest.raises(AttributeError, match="hf_tp.TPModel handle.*worker processes"):
                getattr(model, name)
        assert not hasattr(model, "hf_device_map")  # accelerate's marker: pipelines probe it with getattr
        # As on the launcher's model (tests/test_spmd_parity.py): inference only, the vocabulary split fixed
        assert model.train(False) is model and model.eval() is model
        with pytest.raises(NotImplementedError, match="inference only"):
            model.train()
        with pytest.raises(NotImplementedError, match="resize_token_embeddings.*save_pretrained"):
            model.resize_token_embeddings(128)
        with pytest.raises(AttributeError, match="no attribute 'no_such_thing'$"):
            model.no_such_thing
