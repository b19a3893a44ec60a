"""FP8 checkpoints (issue 19, loading): every rank reads its slice of each FP8 weight and the matching scales,
dequantizes it on CPU, and the split model's greedy tokens equal the unsplit Transformers model's on the same
weights, at tp 1, 2 and 3 in real processes (fp32, gloo).

Truth: Transformers itself on the FP8 folder where it reads it right on CPU (block FP8 whose every dim is a
multiple of 128: it dequantizes at load); elsewhere the unsplit Transformers model on the weights dequantized
block by block in tests/fp8_checkpoints.py, which the "aligned" case checks against Transformers' own loading.
(Transformers 5.24 cannot be the truth for the others: compressed-tensors needs a package hf_tp does not use, and
its CPU dequantization derives the block from the scale grid, so a (192, 384) weight with 2 x 3 scales gets
96-row blocks: wrong k/v weights for "cut", an error for 320 columns in "ragged".)
Each run loads every checkpoint in one process group, so the whole file spawns 6 ranks.

Cases (dims chosen so that tp 2 and 3 cut 128-blocks, except "aligned"):
  aligned   block FP8, hidden 384, 3 heads of 128, MLP 768, fp32 scales: every slice is whole blocks at tp 1-3
  cut       block FP8, hidden 384, 6 heads of 64 (3 KV: 2+1 at tp 2), MLP 640, bf16 scales: gate/up rows and
            down_proj columns cut blocks (tp 2: 320 | 320, tp 3: 214 | 213 | 213)
  ragged    block FP8, ue8m0 fp16 scales, hidden 192 (a last partial block), 3 heads, 1 KV head (replicated), MLP 320
  skip      block FP8 with modules_to_not_convert (two modules stored unquantized), fp16 scales
  channel   compressed-tensors per channel, bf16 scales, ignore = lm_head and a "re:" pattern
  tensor    compressed-tensors static per tensor (scalar weight_scale and input_scale, q/k/v each their own)
  moe       block FP8 Mixtral, 4 experts stored per expert, expert MLP 384 (tp 2 cuts a block)
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers

import hf_tp
from conftest import run_ranks, save_tiny_model, tiny_config
from fp8_checkpoints import (_block_quantize, dequantized_reference, dequantized_state, write_block_fp8,
                             write_channel_fp8, write_tensor_fp8)

NEW_TOKENS = 8
PROMPT = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79]])
TRANSFORMERS_TRUTH = ("aligned",)  # Transformers reads this FP8 folder itself on CPU


def _mixtral(**kw):
    return transformers.MixtralConfig(
        vocab_size=101, hidden_size=256, intermediate_size=384, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=4, head_dim=32, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=None, pad_token_id=0, initializer_range=0.1, **kw)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fp8")
    aligned = save_tiny_model(root / "src_aligned", tiny_config(
        "llama", hidden_size=384, num_attention_heads=3, num_key_value_heads=3, head_dim=128, intermediate_size=768))
    cut = save_tiny_model(root / "src_cut", tiny_config(
        "llama", hidden_size=384, num_attention_heads=6, num_key_value_heads=3, head_dim=64, intermediate_size=640))
    ragged = save_tiny_model(root / "src_ragged", tiny_config(
        "llama", hidden_size=192, num_attention_heads=3, num_key_value_heads=1, head_dim=64, intermediate_size=320),
        seed=1)
    moe = save_tiny_model(root / "src_moe", _mixtral(), max_shard_size=None)
    # Phi-3's own fused qkv_proj ([q | k | v], 384 + 192 + 192 rows: each rank's q, k and v pieces start inside
    # 128-row blocks at tp 2 and 3) and gate_up_proj
    phi3 = save_tiny_model(root / "src_phi3", transformers.Phi3Config(
        vocab_size=101, hidden_size=384, intermediate_size=320, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=3, max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=1,
        eos_token_id=None, pad_token_id=0, initializer_range=0.1))
    return {
        "src_cut": cut,  # unquantized, for TPConfig(weights="fp8"); not an FP8 case
        "aligned": write_block_fp8(aligned, root / "aligned"),
        "cut": write_block_fp8(cut, root / "cut", scale_dtype=torch.bfloat16),
        "ragged": write_block_fp8(ragged, root / "ragged", scale_dtype=torch.float16, ue8m0=True),
        "skip": write_block_fp8(cut, root / "skip", scale_dtype=torch.float16,
                                skip=("model.layers.1.mlp.down_proj", "model.layers.0.self_attn.q_proj")),
        "channel": write_channel_fp8(cut, root / "channel", skip=(r"re:.*layers\.1\.self_attn\.o_proj$",)),
        "tensor": write_tensor_fp8(ragged, root / "tensor"),
        "moe": write_block_fp8(moe, root / "moe"),
        "phi3": write_block_fp8(phi3, root / "phi3"),
    }


def _greedy(model) -> dict:
    with torch.no_grad():
        logits = model(PROMPT).logits
        tokens = model.generate(PROMPT, attention_mask=torch.ones_like(PROMPT), do_sample=False,
                                max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    return {"logits": logits, "tokens": tokens}


@pytest.fixture(scope="module")
def reference(folders, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fp8_ref")
    out = {}
    for name, folder in folders.items():
        if name == "src_cut":
            continue
        model = dequantized_reference(folder, root / name)
        if name in TRANSFORMERS_TRUTH:
            ours = model.state_dict()
            model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            assert all(torch.equal(t, ours[k]) for k, t in model.state_dict().items()), "the test's dequantization"
        out[name] = _greedy(model)
    return out


def load_all(folders: dict, tp_size: int) -> dict:
    """Rank function: every checkpoint at ``tp_size`` (dequantized on CPU); at tp 2 also the FP8-kept layers."""
    from hf_tp.assembly import load_parallel_model
    from hf_tp.launch import init_spmd_group
    from hf_tp.orchestration.memory import memory_report

    tp = init_spmd_group(tp_size, torch.device("cpu"))

    def load(folder, **tp_config):  # tp 1 too: hf_tp's loader, not Transformers' (from_pretrained's tp_size=1)
        return load_parallel_model(str(folder), tp, dtype=torch.float32, progress=False,
                                   tp_config=hf_tp.TPConfig(**tp_config))

    out = {}
    for name, folder in folders.items():
        if name == "src_cut":
            continue
        model = load(folder)
        out[name] = {**_greedy(model), "fp8_weights": model.hf_tp_config.fp8_weights,
                     "weights_bytes": memory_report(model, tp.tp_rank, tp.device, 0)["weights_bytes"]}
        if tp_size == 2 and name == "cut":  # dequantized: saved as the unquantized checkpoint it now is
            model.save_pretrained(folder.parent / "saved_cut")
    if tp_size == 2:
        for name in ("cut", "channel", "moe"):
            # fuse=True (CUDA's default; off on CPU): the FP8 q/k/v (and gate/up) as one FP8 GEMM per group
            model = load(folders[name], fp8_weights="keep", fuse=True)
            attn = model.model.layers[0].self_attn
            mlp = [] if name == "moe" else [model.model.layers[0].mlp.down_proj]
            out[f"{name}_keep"] = {
                **_greedy(model), "fp8_weights": model.hf_tp_config.fp8_weights,
                "weights_bytes": memory_report(model, tp.tp_rank, tp.device, 0)["weights_bytes"],
                "dtypes": {n: str(getattr(attn, n).weight.dtype) for n in ("q_proj", "o_proj")},
                "geometry": [(m.fp8_group_k, m.fp8_k_offset) for m in [attn.o_proj, *mlp]],
                "fused": [getattr(attn.q_proj.shared_input, "scale", None) is not None,
                          attn.q_proj.fp8_scale.data_ptr() == attn.q_proj.shared_input.scale.data_ptr()
                          if attn.q_proj.shared_input is not None else False]}
            if name != "cut":
                continue
            try:
                model.save_pretrained(folders["cut"].parent / "saved_keep")
                out["after"] = {"save": "saved"}
            except ValueError as exc:
                out["after"] = {"save": str(exc)}
            model.to(torch.float64)  # a dtype conversion leaves FP8 layers FP8; they compute in the input's dtype
            out["after"]["float64"] = {"logits": model(PROMPT).logits.float().detach(), "scale": str(attn.o_proj.fp8_scale.dtype),
                                   "dtypes": {n: str(getattr(attn, n).weight.dtype) for n in ("q_proj", "o_proj")}}
        # Phi-3's fused projections kept FP8: each rank's q, k and v (gate, up) pieces in one FP8 weight
        model = load(folders["phi3"], fp8_weights="keep", fuse=True)
        layer = model.model.layers[0]
        out["phi3_keep"] = {**_greedy(model), "fp8_weights": model.hf_tp_config.fp8_weights,
                            "dtypes": {n: str(m.weight.dtype) for n, m in (("qkv_proj", layer.self_attn.qkv_proj),
                                                                           ("gate_up_proj", layer.mlp.gate_up_proj))}}
        # TPConfig(weights="fp8"): the unquantized checkpoint quantized per rank, after slicing
        model = load(folders["src_cut"], weights="fp8")
        layers = {n: model.get_submodule(f"model.layers.0.{n}") for n in ("self_attn.q_proj", "mlp.down_proj")}
        out["after"]["quantized"] = {
            **_greedy(model),
            "layers": {n: (m.weight, m.fp8_scale, m.fp8_group_k, m.fp8_k_offset,
                           *_pieces(model.hf_tp_plan, f"model.layers.0.{n}.weight", tp.tp_rank))
                       for n, m in layers.items()}}
    return out


def _pieces(plan, name, tp_rank):
    shard = plan.param_shard(name)
    return shard.dim, shard.pieces[tp_rank]


def _check(results, reference, names):
    for name in [n for n in names if not n.startswith("src_")]:
        for rank, result in enumerate(results):
            got, ref = result[name], reference[name.removesuffix("_keep")]
            assert torch.equal(got["tokens"], ref["tokens"]), (name, rank, got["tokens"], ref["tokens"])
            err = float((got["logits"] - ref["logits"]).abs().max() / ref["logits"].abs().max())
            assert err < 1e-5, (name, rank, err)  # split sums in fp32, same weights


@pytest.mark.parametrize("tp_size", [1, 2, 3])
def test_fp8_checkpoints_match_transformers(folders, reference, tp_size):
    results = run_ranks(load_all, tp_size, folders, tp_size, timeout=400)
    _check(results, reference, folders)
    for result in results:  # CPU: "auto" resolves to dequantize, chosen once and shown in hf_tp_config
        assert all(r["fp8_weights"] == ("keep" if name.endswith("_keep") else "dequantize") for name, r in result.items()
                   if name != "after")
    if tp_size != 2:
        return
    # fp8_weights="keep": same tokens through the FP8 layers (fp8_linear), FP8 weights and fewer bytes
    _check(results, reference, ["cut_keep", "channel_keep", "moe_keep", "phi3_keep"])
    r0, r1 = results
    for r in results:
        assert set(r["phi3_keep"]["dtypes"].values()) == {"torch.float8_e4m3fn"}, r["phi3_keep"]["dtypes"]
    assert r0["cut_keep"]["dtypes"] == {"q_proj": "torch.float8_e4m3fn", "o_proj": "torch.float8_e4m3fn"}
    for r in results:  # the kept q/k/v computed as one FP8 GEMM, q's scale a view of the group's
        assert all(r[f"{name}_keep"]["fused"] == [True, True] for name in ("cut", "channel", "moe")), r
    for name in ("cut", "channel", "moe"):
        for r in results:
            assert r[f"{name}_keep"]["weights_bytes"] < r[name]["weights_bytes"]
    # tp 2 over the cut config: down_proj's columns 320 | 320 -> rank 1 starts 64 into a 128-block;
    # o_proj's 6 heads of 64 split 4 | 2 -> rank 1 starts at 256, a block edge. Per channel: one group per row.
    assert r0["cut_keep"]["geometry"] == [(128, 0), (128, 0)] and r1["cut_keep"]["geometry"] == [(128, 0), (128, 64)]
    assert r1["channel_keep"]["geometry"] == [(128, 0), (320, 0)]
    assert r1["moe_keep"]["geometry"] == [(128, 0)]  # 8 heads of 32: rank 1's o_proj columns start at 128
    for r in results:
        assert "fp8_weights='dequantize'" in r["after"]["save"], r["after"]["save"]  # a kept model refuses to save
        f64 = r["after"]["float64"]
        assert f64["dtypes"] == r0["cut_keep"]["dtypes"] and f64["scale"] == "torch.float32", f64
        assert float((f64["logits"] - reference["cut"]["logits"]).abs().max()) < 1e-4 * float(reference["cut"]["logits"].abs().max())
    _check_quantized_at_load(results, folders["src_cut"], reference["cut"]["logits"])
    # the dequantized model saves an unquantized checkpoint (no quantization_config) that Transformers reads
    saved = folders["cut"].parent / "saved_cut"
    assert "quantization_config" not in json.loads((saved / "config.json").read_text())
    model = transformers.AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
    assert torch.equal(_greedy(model)["tokens"], reference["cut"]["tokens"])


def _check_quantized_at_load(results, src, checkpoint_fp8):
    """TPConfig(weights="fp8"): each rank's FP8 slice is exactly its bf16/fp32 slice quantized in 128-blocks of its
    own (by the test's independent block quantizer), and the model stays close to the unquantized one."""
    unquantized = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    state = unquantized.state_dict()
    for rank, result in enumerate(results):
        for name, (weight, scale, group_k, k_offset, dim, pieces) in result["after"]["quantized"]["layers"].items():
            full = state[f"model.layers.0.{name}.weight"]
            piece = torch.cat([full.narrow(dim, a, b - a) for a, b in pieces], dim=dim)
            q, s = _block_quantize(piece, 128, torch.float32, ue8m0=False)
            assert weight.dtype == torch.float8_e4m3fn and (group_k, k_offset) == (128, 0)
            assert torch.equal(weight.view(torch.uint8), q.view(torch.uint8)), (rank, name)
            assert torch.equal(scale, s.repeat_interleave(128, dim=0)[: piece.shape[0]]), (rank, name)
        got = result["after"]["quantized"]["logits"]
        ref = _greedy(unquantized)["logits"]
        err = float((got - ref).abs().max() / ref.abs().max())
        published = float((checkpoint_fp8 - ref).abs().max() / ref.abs().max())  # the block FP8 checkpoint's error
        # Random tiny models amplify weight error (0.20 here, and 0.15 for the block FP8 checkpoint of the same weights,
        # 2026-12-02): the per-rank blocks may differ from the checkpoint's, not be much worse.
        assert err < 2 * published, (err, published)


# ------------------------------------------------------------------------------------------------------------
# Refused formats: one clear error in the calling process, before any worker starts, and on every rank
# ------------------------------------------------------------------------------------------------------------

_UNSUPPORTED = {
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128},
    "awq": {"quant_method": "awq", "bits": 4, "version": "gemm"},
    "bitsandbytes": {"quant_method": "bitsandbytes", "load_in_4bit": True},
    "mxfp4": {"quant_method": "mxfp4"},
    "int8 compressed-tensors": {"quant_method": "compressed-tensors", "format": "int-quantized", "config_groups": {
        "group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "int", "strategy": "channel"}}}},
}


def _with_quantization(src, dst, quantization):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["quantization_config"] = quantization
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("method", list(_UNSUPPORTED))
def test_other_quantization_is_refused_before_workers_start(tiny_checkpoint, tmp_path, method):
    path = _with_quantization(tiny_checkpoint("llama"), tmp_path / "quantized", _UNSUPPORTED[method])
    quant_method = _UNSUPPORTED[method]["quant_method"]
    with pytest.raises(hf_tp.CheckpointError, match=rf"quant_method='{quant_method}'.*tensor-parallel loading "
                                                    r"supports quant_method 'fp8'.*'compressed-tensors'"):
        hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu")


def refused_on_rank(path) -> str:
    try:
        hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu")
    except hf_tp.CheckpointError as exc:
        return str(exc)
    return "loaded"


def test_other_quantization_is_refused_on_every_rank(tiny_checkpoint, tmp_path):
    """Under a launcher every rank plans the model and raises the same error (no rank waits in a collective)."""
    path = _with_quantization(tiny_checkpoint("llama"), tmp_path / "quantized", _UNSUPPORTED["gptq"])
    messages = run_ranks(refused_on_rank, 2, str(path))
    assert all("quant_method='gptq'" in m for m in messages), messages


# ------------------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct in compressed-tensors per-channel FP8: widths 576 and 64 align with no block
# ------------------------------------------------------------------------------------------------------------

SMOL_TOKENS = 32


def smollm2_greedy(path: str, prompts: dict, tp_size: int) -> dict:
    """Rank function: greedy tokens of a story prompt and of the chat question, from the FP8 folder."""
    model = hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=tp_size, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        return {name: model.generate(**p, do_sample=False, max_new_tokens=SMOL_TOKENS, min_new_tokens=SMOL_TOKENS)
                for name, p in prompts.items()}


@pytest.mark.slow
def test_smollm2_per_channel_fp8_matches_transformers(tmp_path):
    from hf_tp.demo import demo_model_path

    folder = write_channel_fp8(demo_model_path(), tmp_path / "smollm2-fp8")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    prompts = {"story": dict(tok("The old lighthouse keeper climbed the stairs and", return_tensors="pt")),
               "chat": dict(tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                    add_generation_prompt=True, return_tensors="pt", return_dict=True))}
    reference = dequantized_reference(folder, tmp_path / "smollm2-dequantized")
    with torch.no_grad():
        expected = {name: reference.generate(**p, do_sample=False, max_new_tokens=SMOL_TOKENS, min_new_tokens=SMOL_TOKENS)
                    for name, p in prompts.items()}
    del reference
    results = run_ranks(smollm2_greedy, 2, str(folder), prompts, 2, timeout=600)
    for result in results:
        for name in prompts:
            assert torch.equal(result[name], expected[name]), (name, tok.decode(result[name][0]), tok.decode(expected[name][0]))
    print("SmolLM2 per-channel FP8, tp 2:", tok.decode(results[0]["chat"][0, prompts["chat"]["input_ids"].shape[1]:]))


# ------------------------------------------------------------------------------------------------------------
# One process: every slice the loader can ask for equals the same slice of the whole dequantized weight
# ------------------------------------------------------------------------------------------------------------

def test_any_slice_equals_the_slice_of_the_whole(folders):
    """Rows and columns cut anywhere (inside blocks, on block edges, ragged last blocks), in all three layouts."""
    from hf_tp.loading import CheckpointIndex
    from hf_tp.loading.quantization import read_canonical, read_dequantized, read_fp8, read_quantization

    for name in ("ragged", "channel", "tensor"):
        config = transformers.AutoConfig.from_pretrained(folders[name])
        index = CheckpointIndex(folders[name], quantization=read_quantization(config))
        truth = dequantized_state(folders[name])  # the test's own block-by-block dequantization
        for key in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"):
            whole = read_fp8(index, key).dequantize(torch.float32)
            assert torch.equal(whole, truth[key]), (name, key)
            n, k = whole.shape
            for dim, size in ((0, n), (1, k)):
                for a, b in ((0, size), (1, size - 1), (63, 130), (127, 129), (size // 3, size // 2)):
                    got = read_dequantized(index, key, dim, [(a, b)], torch.float32)
                    assert torch.equal(got, whole.narrow(dim, a, b - a)), (name, key, dim, a, b)
            # pieces along the rows (fused parts) concatenate in one canonical form
            both = read_canonical(index, key, 0, [(0, 5), (70, n)])
            assert torch.equal(both.dequantize(torch.float32), torch.cat([whole[:5], whole[70:]]))


def test_scales_are_expected_keys(folders):
    """output_loading_info: an FP8 checkpoint's scales (and the static scheme's input_scale) are not unexpected."""
    from hf_tp.assembly import plan_model

    for name in ("cut", "tensor", "moe"):
        info = plan_model(str(folders[name]), 2, torch.float32, {"output_loading_info": True}).info
        assert info["unexpected_keys"] == set(), (name, sorted(info["unexpected_keys"])[:5])


def test_a_scaled_weight_that_is_not_fp8_is_refused(folders, tmp_path):
    """A quantized checkpoint whose weight has a scale but another dtype (e.g. e5m2 or int8) is never read as if
    unquantized."""
    from safetensors.torch import load_file, save_file

    from hf_tp.errors import CheckpointError
    from hf_tp.loading import CheckpointIndex
    from hf_tp.loading.quantization import is_fp8, read_quantization

    folder = shutil.copytree(folders["ragged"], tmp_path / "e5m2")
    key = "model.layers.0.mlp.up_proj.weight"
    file = next(f for f in folder.glob("*.safetensors") if key in load_file(f))
    tensors = load_file(file)
    tensors[key] = tensors[key].float().to(torch.float8_e5m2)
    save_file(tensors, file, metadata={"format": "pt"})
    index = CheckpointIndex(folder, quantization=read_quantization(transformers.AutoConfig.from_pretrained(folder)))
    assert is_fp8(index, "model.layers.0.mlp.down_proj.weight")
    assert not is_fp8(index, "model.embed_tokens.weight")
    with pytest.raises(CheckpointError, match=r"up_proj\.weight has a scale .* stored as F8_E5M2"):
        is_fp8(index, key)


def test_preflight_sizes_kept_fp8_weights_at_their_bytes(folders):
    """The handle's pre-flight (orchestration._plan_memory) counts the weights kept FP8 at 1 byte (plus scales),
    not at the model dtype, so a load that fits in FP8 is not refused; it stays an upper bound of what a rank
    really holds."""
    from hf_tp.assembly import load_parallel_model
    from hf_tp.config import TPConfig
    from hf_tp.orchestration import _plan_memory
    from hf_tp.parallel.comm import TPGroup
    from hf_tp.parallel.fp8 import fp8_scale_bytes

    folder = str(folders["cut"])
    cpu = torch.device("cpu")
    keep, dequantize = (TPConfig(fp8_weights=mode).resolve("cpu", 1) for mode in ("keep", "dequantize"))
    need_keep = _plan_memory(folder, 1, torch.bfloat16, {}, 0, keep, cpu)[2][0]
    need_dequantize = _plan_memory(folder, 1, torch.bfloat16, {}, 0, dequantize, cpu)[2][0]
    model = load_parallel_model(folder, TPGroup(0, 1, cpu), dtype=torch.bfloat16, progress=False, tp_config=keep)
    held = sum(p.numel() * p.element_size() for p in model.parameters()) + fp8_scale_bytes(model)
    assert held <= need_keep < need_dequantize, (held, need_keep, need_dequantize)


def test_fp8_groups_with_biases_follow_a_dtype_conversion(tmp_path):
    """Qwen2's q/k/v have biases: kept FP8 and fused into one group (fuse=True), then ``model.to(float64)``, which
    keeps the FP8 weights and scales but converts the biases. The group must take the converted biases (one copy,
    shared with the members) and the logits stay those of the dequantized model in Transformers."""
    from hf_tp.assembly import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    config = tiny_config("qwen2", hidden_size=256, intermediate_size=384, num_attention_heads=8, num_key_value_heads=4)
    folder = write_block_fp8(save_tiny_model(tmp_path / "m", config, max_shard_size=None), tmp_path / "fp8")
    reference = dequantized_reference(folder, tmp_path / "deq").double()
    cpu = torch.device("cpu")
    model = load_parallel_model(str(folder), TPGroup(0, 1, cpu), dtype=torch.float32, progress=False,
                                tp_config=hf_tp.TPConfig(fp8_weights="keep", fuse=True))
    q = model.model.layers[0].self_attn.q_proj
    assert q.weight.dtype == torch.float8_e4m3fn and q.shared_input is not None and q.shared_input.bias is not None
    model.to(torch.float64)
    group = q.shared_input
    assert q.weight.dtype == torch.float8_e4m3fn and group.bias.dtype == torch.float64
    assert q.bias.untyped_storage().data_ptr() == group.bias.untyped_storage().data_ptr()
    ids = torch.randint(3, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model(ids).logits, reference(ids).logits
    assert got.dtype == torch.float64
    assert float((got - want).abs().max()) <= 1e-6 * float(want.abs().max())


def test_fp8_activations_resolve_to_what_runs(folders):
    """TPConfig(fp8_activations=True) shows in ``model.hf_tp_config`` only where it runs: on CPU (no FP8 kernel)
    it resolves to False and no layer is marked, so the model is the one without it, token for token."""
    from hf_tp.assembly import load_parallel_model
    from hf_tp.config import TPConfig
    from hf_tp.parallel.comm import TPGroup

    folder, cpu = str(folders["cut"]), torch.device("cpu")
    models = [load_parallel_model(folder, TPGroup(0, 1, cpu), dtype=torch.float32, progress=False,
                                  tp_config=TPConfig(fp8_weights="keep", fp8_activations=flag)) for flag in (True, False)]
    assert [m.hf_tp_config.fp8_activations for m in models] == [False, False]
    assert not any(getattr(m, "fp8_activations", False) for m in models[0].modules())
    assert any(getattr(m, "fp8_scale", None) is not None for m in models[0].modules())  # FP8 layers were kept
    ids = torch.randint(3, models[0].config.vocab_size, (1, 70), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = [m(input_ids=ids).logits for m in models]
    assert torch.equal(logits[0], logits[1])
