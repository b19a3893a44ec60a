"""Flex decode attention (hf_tp/kernels/decode_attention.py, TPConfig.decode_attention): the kernel against
SDPA on the same inputs, the compiled decode step that uses it against Transformers' greedy tokens, and the
choice made once at load. CPU: flex runs its reference path under Dynamo's eager backend (the code the GPU
compiles with Inductor); the GPU test at the end compiles it for real."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hf_tp
from conftest import load_reference, save_tiny_model, tiny_config
from hf_tp.kernels.decode_attention import NAME, flex_decode

PAD = 0


def _inputs(batch=2, hq=8, hkv=2, length=40, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, h, n, d, generator=gen) for h, n in ((hq, 1), (hkv, length), (hkv, length)))
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[..., 30:] = False  # static-cache slots not written yet
    mask[1, ..., :5] = False  # a left-padded row
    return q, k, v, mask


@pytest.mark.parametrize("compiled", [False, True])
def test_flex_decode_equals_sdpa_with_gqa_padding_and_empty_slots(compiled):
    q, k, v, mask = _inputs()
    group = q.shape[1] // k.shape[1]
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                          attn_mask=mask, scale=0.3)
    fn = (torch.compile(flex_decode, backend="eager", fullgraph=True) if compiled else flex_decode)
    got = fn(q, k, v, mask, 0.3)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def _tiny(tmp_path, seed=5):
    # head_dim 16: the smallest the decoding kernel takes (hidden 64 / 4 heads); 2 KV heads (GQA)
    config = tiny_config("llama", hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    return str(save_tiny_model(tmp_path / "m", config, seed=seed))


def test_compiled_steps_with_flex_give_transformers_greedy_tokens(tmp_path):
    from hf_tp.assembly import load_parallel_model
    from hf_tp.generation.decode_loop import plan_request
    from hf_tp.parallel.comm import TPGroup

    folder = _tiny(tmp_path)
    model = load_parallel_model(folder, TPGroup(0, 1, torch.device("cpu")), dtype=torch.float32, progress=False,
                                tp_config=hf_tp.TPConfig(decode_attention="flex", fast_decode=True))
    assert model.hf_tp_config.decode_attention == "flex" and model.config._attn_implementation == NAME
    ids = torch.randint(1, 101, (2, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = PAD, 0
    new = 12
    with torch.no_grad():
        want = load_reference(folder).generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                               max_new_tokens=new, pad_token_id=PAD, eos_token_id=None)
    request, reason = plan_request(model, (ids,), dict(attention_mask=mask, do_sample=False, max_new_tokens=new,
                                                      pad_token_id=PAD, eos_token_id=None))
    assert request is not None, reason
    decoder = model._hf_tp_decoder()
    session = decoder._session(2, ids.shape[1] + new)
    graphs = []

    def backend(gm, _inputs):  # Dynamo's eager backend, keeping the traced graph to look at
        graphs.append(gm)
        return gm.forward

    decoder._compiled = torch.compile(decoder.eager_forward, fullgraph=True, dynamic=False, backend=backend)
    model._hf_tp_in_generate = True  # as generate() sets it: inputs checked once, not per step
    try:
        with torch.no_grad():
            session.start(request)  # prefill: SDPA (eager)
            for _ in range(new - 1):  # every step through the compiled forward (Dynamo, eager backend)
                session._decode_step(decoder.compiled_forward)
    finally:
        model._hf_tp_in_generate = False
    got = torch.cat([ids, session.out[:, :new]], dim=1)
    assert len(graphs) == 1, f"{len(graphs)} graphs: the step recompiled"
    assert "flex_attention" in str(graphs[0].graph), "the compiled step did not take the flex path"
    assert torch.equal(got, want), (got[:, 10:].tolist(), want[:, 10:].tolist())


def test_choice_is_made_once_at_load_and_shown(tmp_path):
    from hf_tp.assembly import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    assert hf_tp.TPConfig().resolve("cpu", 1, environ={}).decode_attention == "off"
    assert hf_tp.TPConfig().resolve("cuda", 1, environ={}).decode_attention == "off"  # opt-in until measured
    assert hf_tp.TPConfig().resolve("cuda", 1, environ={"HF_TP_DECODE_ATTENTION": "flex"}).decode_attention == "flex"
    with pytest.raises(ValueError, match="decode_attention='triton'"):
        hf_tp.TPConfig(decode_attention="triton")
    folder = _tiny(tmp_path)
    # A model loaded with another attention implementation keeps it, and the config says so.
    model = load_parallel_model(folder, TPGroup(0, 1, torch.device("cpu")), dtype=torch.float32, progress=False,
                                tp_config=hf_tp.TPConfig(decode_attention="flex"), attn_implementation="eager")
    assert model.hf_tp_config.decode_attention == "off" and model.config._attn_implementation == "eager"




@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")
def test_gpu_loop_with_flex_matches_transformers(tmp_path):
    from hf_tp.assembly import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    folder = _tiny(tmp_path)
    device = torch.device("cuda", 0)
    ours = load_parallel_model(folder, TPGroup(0, 1, device), dtype=torch.float32, progress=False,
                               tp_config=hf_tp.TPConfig(decode_attention="flex"))
    assert ours.hf_tp_config.decode_attention == "flex"
    ref = load_reference(folder).to(device)
    ids = torch.randint(1, 101, (2, 14), generator=torch.Generator().manual_seed(3)).to(device)
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = PAD, 0
    kwargs = dict(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=PAD, max_new_tokens=40,
                  eos_token_id=None)
    with torch.no_grad():
        want = ref.generate(**kwargs)
    got = ours.generate(**kwargs)
    assert ours._hf_tp_static_decoder.use_graphs and ours._hf_tp_static_decoder.sessions  # compiled + captured
    assert torch.equal(got, want), (got[:, 14:].tolist(), want[:, 14:].tolist())
