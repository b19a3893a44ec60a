"""Write FP8 checkpoints in the on-disk formats hf_tp reads, from an unquantized Transformers folder, and the
plain fp32 model with exactly the weights they hold (the truth the tests compare against).

  write_block_fp8(src, dst)        Transformers / DeepSeek block FP8: ``weight`` float8_e4m3fn (N, K) and
                                   ``weight_scale_inv`` (ceil(N/128), ceil(K/128)), quant_method "fp8"
  write_channel_fp8(src, dst)      compressed-tensors float-quantized, per-channel ``weight_scale`` (N, 1)
  write_tensor_fp8(src, dst)       compressed-tensors static per-tensor: scalar ``weight_scale`` and ``input_scale``
  dequantized_reference(folder, d) the unsplit Transformers model (fp32) with every FP8 weight dequantized here,
                                   independently of hf_tp (block by block with explicit loops over blocks)

Only 2-D ``*.weight`` tensors of Linear layers are quantized; embeddings, norms and the LM head stay as they were,
and so does every module named in ``skip`` (written to the config's modules_to_not_convert / ignore list).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max

# the Linears FP8 checkpoints quantize: Llama-style projections, Phi-3's fused qkv_proj / gate_up_proj, Mixtral's
# experts
_LINEAR = re.compile(r"\.(q_proj|k_proj|v_proj|qkv_proj|o_proj|gate_proj|up_proj|gate_up_proj|down_proj|w1|w2|w3)"
                     r"\.weight$")


def _listed(module: str, entry: str) -> bool:
    """Whether a modules_to_not_convert / ignore entry names ``module`` ("re:" entries are regular expressions)."""
    if entry.startswith("re:"):
        return re.match(entry[3:], module) is not None
    return module == entry or module.endswith("." + entry)


def _quantizable(name: str, tensor: torch.Tensor, skip) -> bool:
    module = name.rsplit(".", 1)[0]
    return tensor.dim() == 2 and bool(_LINEAR.search(name)) and not any(_listed(module, s) for s in skip)


def _fp8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8)


def _block_quantize(w: torch.Tensor, block: int, scale_dtype: torch.dtype, ue8m0: bool):
    n, k = w.shape
    rows, cols = math.ceil(n / block), math.ceil(k / block)
    scale = torch.empty(rows, cols, dtype=torch.float32)
    q = torch.empty(n, k, dtype=FP8)
    for i in range(rows):
        for j in range(cols):
            tile = w[i * block:(i + 1) * block, j * block:(j + 1) * block].float()
            s = tile.abs().max().clamp(min=1e-12) / FP8_MAX
            if ue8m0:  # a power of two, rounded up so nothing overflows
                s = torch.exp2(torch.ceil(torch.log2(s)))
            s = s.to(scale_dtype).float()  # the stored scale is what the tile is divided by
            scale[i, j] = s
            q[i * block:(i + 1) * block, j * block:(j + 1) * block] = _fp8(tile / s)
    return q, scale.to(scale_dtype)


def _rewrite(src: Path, dst: Path, quantize, quantization_config: dict) -> Path:
    """Copy ``src`` to ``dst`` with every quantizable weight replaced by ``quantize(name, w) -> {key: tensor}``."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    index_file = dst / "model.safetensors.index.json"
    files = sorted(dst.glob("*.safetensors"))
    weight_map = {}
    for file in files:
        tensors = load_file(file)
        out = {}
        for name, tensor in tensors.items():
            out.update(quantize(name, tensor))
        save_file(out, file, metadata={"format": "pt"})
        weight_map.update({k: file.name for k in out})
    if index_file.is_file():
        index = json.loads(index_file.read_text())
        index["weight_map"] = weight_map
        index_file.write_text(json.dumps(index, indent=2))
    config = json.loads((dst / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def write_block_fp8(src, dst, block: int = 128, scale_dtype=torch.float32, ue8m0: bool = False, skip=()) -> Path:
    def quantize(name, w):
        if not _quantizable(name, w, skip):
            return {name: w}
        q, s = _block_quantize(w, block, scale_dtype, ue8m0)
        return {name: q, name + "_scale_inv": s}

    config = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": [block, block]}
    if ue8m0:
        config["scale_fmt"] = "ue8m0"
    if skip:
        config["modules_to_not_convert"] = list(skip)
    return _rewrite(src, dst, quantize, config)


def _compressed_config(strategy: str, dynamic: bool, skip) -> dict:
    activations = ({"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True, "symmetric": True}
                   if dynamic else {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False,
                                    "symmetric": True})
    return {
        "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "format": "float-quantized",
                                      "weights": {"num_bits": 8, "type": "float", "strategy": strategy,
                                                  "dynamic": False, "symmetric": True},
                                      "input_activations": activations}},
        "ignore": ["lm_head", *skip],
    }


def write_channel_fp8(src, dst, scale_dtype=torch.bfloat16, skip=()) -> Path:
    def quantize(name, w):
        if not _quantizable(name, w, skip):
            return {name: w}
        s = (w.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX).to(scale_dtype)
        return {name: _fp8(w.float() / s.float()), name[:-len("weight")] + "weight_scale": s}

    return _rewrite(src, dst, quantize, _compressed_config("channel", True, skip))


def write_tensor_fp8(src, dst, skip=()) -> Path:
    def quantize(name, w):
        if not _quantizable(name, w, skip):
            return {name: w}
        s = (w.float().abs().max().clamp(min=1e-12) / FP8_MAX).reshape(())
        prefix = name[:-len("weight")]
        return {name: _fp8(w.float() / s), prefix + "weight_scale": s, prefix + "input_scale": torch.tensor(0.05)}

    return _rewrite(src, dst, quantize, _compressed_config("tensor", False, skip))


def dequantized_state(folder) -> dict[str, torch.Tensor]:
    """Every tensor of an FP8 folder, FP8 weights multiplied out in fp32 (block by block), scales dropped."""
    tensors = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(file))
    config = json.loads((Path(folder) / "config.json").read_text())["quantization_config"]
    block = config.get("weight_block_size", [128, 128])
    state = {}
    for name, t in tensors.items():
        if name.endswith(("_scale_inv", "weight_scale", "input_scale")):
            continue
        if t.dtype != FP8:
            state[name] = t.float()
            continue
        scale = tensors.get(name + "_scale_inv", tensors.get(name[:-len("weight")] + "weight_scale")).float()
        w = t.float()
        if scale.dim() == 2 and name + "_scale_inv" in tensors:  # blocks
            out = torch.empty_like(w)
            for i in range(scale.shape[0]):
                for j in range(scale.shape[1]):
                    rows, cols = slice(i * block[0], (i + 1) * block[0]), slice(j * block[1], (j + 1) * block[1])
                    out[rows, cols] = w[rows, cols] * scale[i, j]
            state[name] = out
        else:  # (N, 1) or a scalar
            state[name] = w * (scale if scale.dim() else scale.reshape(1, 1))
    return state


def dequantized_reference(folder, dst) -> transformers.PreTrainedModel:
    """The unsplit Transformers model (fp32, eval) of ``folder`` with its FP8 weights dequantized: written to
    ``dst`` as a plain fp32 checkpoint and loaded by Transformers (which maps per-expert keys as usual)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    save_file(dequantized_state(folder), dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((Path(folder) / "config.json").read_text())
    config.pop("quantization_config")
    (dst / "config.json").write_text(json.dumps(config))
    return transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
