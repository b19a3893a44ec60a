"""`hf-tp bench --weights fp8-block|fp8-channel`: the random checkpoint in each FP8 format (hf_tp.bench.shapes).

The truth is the bf16 checkpoint the same function writes from the same seed: every FP8 weight, multiplied out
here block by block with explicit loops (independently of the writer's vectorized code), must be that weight
within FP8 e4m3's rounding, each scale must map its block's largest value to 448, and every other tensor must be
identical. The configs must carry the exact quantization_config of the published formats.
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from hf_tp.bench.shapes import write_random_checkpoint

FP8 = torch.float8_e4m3fn


def tensors(folder):
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    folder = write_random_checkpoint("tiny", tmp_path_factory.mktemp("bf16"), dtype=torch.bfloat16)
    return tensors(folder)


def check_close(dq, ref, scale_of):
    """FP8 e4m3 rounding: half an ulp is 2^-4 relative for normal values, 2^-10 x scale for subnormals; the
    bf16 truth adds 2^-9 relative."""
    bound = (2 ** -4 + 2 ** -9) * ref.abs() + 2 ** -10 * scale_of + 1e-12
    assert ((dq - ref).abs() <= bound).all(), float(((dq - ref).abs() - bound).max())


def test_fp8_block_checkpoint(tmp_path, bf16):
    folder = write_random_checkpoint("tiny", tmp_path / "block", dtype=torch.bfloat16, weights="fp8-block")
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                                             "weight_block_size": [128, 128]}
    got = tensors(folder)
    quantized = [n for n in bf16 if n.startswith("model.layers.") and n.endswith("_proj.weight")]
    assert len(quantized) == 2 * 7  # tiny: 2 layers x q, k, v, o, gate, up, down
    assert set(got) == set(bf16) | {n + "_scale_inv" for n in quantized}
    for name, ref in bf16.items():
        if name not in quantized:
            assert got[name].dtype == ref.dtype and torch.equal(got[name], ref), name
            continue
        w, s = got[name], got[name + "_scale_inv"]
        n, k = ref.shape
        assert w.dtype == FP8 and w.shape == (n, k)
        assert s.dtype == torch.float32 and s.shape == (math.ceil(n / 128), math.ceil(k / 128))
        wf, rf = w.float(), ref.float()
        for i in range(s.shape[0]):
            for j in range(s.shape[1]):
                rows, cols = slice(128 * i, 128 * (i + 1)), slice(128 * j, 128 * (j + 1))
                assert wf[rows, cols].abs().max() == 448.0  # scale = the block's amax / 448
                check_close(wf[rows, cols] * s[i, j], rf[rows, cols], s[i, j])


def test_fp8_channel_checkpoint(tmp_path, bf16):
    folder = write_random_checkpoint("tiny", tmp_path / "channel", dtype=torch.bfloat16, weights="fp8-channel")
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "float-quantized"
    assert qc["ignore"] == ["lm_head"]
    group = qc["config_groups"]["group_0"]
    assert group["weights"] == {"num_bits": 8, "type": "float", "strategy": "channel", "dynamic": False,
                                "symmetric": True}
    assert group["input_activations"]["strategy"] == "token" and group["input_activations"]["dynamic"] is True
    got = tensors(folder)
    quantized = [n for n in bf16 if n.startswith("model.layers.") and n.endswith("_proj.weight")]
    assert set(got) == set(bf16) | {n[:-len("weight")] + "weight_scale" for n in quantized}
    for name, ref in bf16.items():
        if name not in quantized:
            assert torch.equal(got[name], ref), name
            continue
        w, s = got[name], got[name[:-len("weight")] + "weight_scale"]
        assert w.dtype == FP8 and w.shape == ref.shape and s.shape == (ref.shape[0], 1) and s.dtype == torch.bfloat16
        for row in range(ref.shape[0]):
            # the row's amax maps to 448 (its bf16-rounded scale moves it by < 1, and e4m3's neighbours are 416, 448)
            assert float(w[row].float().abs().max()) == 448.0
            check_close(w[row].float() * s[row].float(), ref[row].float(), s[row].float())


def test_unknown_weight_format(tmp_path):
    with pytest.raises(ValueError, match="fp8-block"):
        write_random_checkpoint("tiny", tmp_path / "x", weights="int4")
