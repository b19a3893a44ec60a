"""Accuracy of FP8 weights on the real SmolLM2-135M-Instruct at tp 2 (CPU, fp32, gloo), against the unquantized
model in Transformers: the logit error (max|diff| / max|ref| over the prompt) and how many of 128 greedy tokens
agree before the first difference.

  python benchmarks/fp8_accuracy.py          # from a checkout, PYTHONPATH=$PWD

Rows: TPConfig(weights="fp8") (the bf16/fp32 checkpoint quantized per rank at load, 128 x 128 blocks), and the
compressed-tensors per-channel checkpoint written by tests/fp8_checkpoints.py (dequantized at load).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import run_ranks  # noqa: E402
from fp8_checkpoints import write_channel_fp8  # noqa: E402

NEW_TOKENS = 128
PROMPT = "The old lighthouse keeper climbed the stairs and"


def rank(path: str, ids: torch.Tensor, tp_config: dict) -> dict:
    import hf_tp

    model = hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype=torch.float32,
                                                       tp_config=hf_tp.TPConfig(**tp_config))
    with torch.no_grad():
        return {"logits": model(ids).logits,
                "tokens": model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                         max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)}


def main() -> None:
    from hf_tp.demo import demo_model_path

    src = demo_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(src)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = {"logits": ref_model(ids).logits,
               "tokens": ref_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                            max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)}
    del ref_model
    with tempfile.TemporaryDirectory() as tmp:
        channel = write_channel_fp8(src, Path(tmp) / "channel")
        rows = {"weights='fp8' (per-rank 128x128 blocks)": (str(src), {"weights": "fp8"}),
                "per-channel FP8 checkpoint": (str(channel), {})}
        for name, (path, tp_config) in rows.items():
            got = run_ranks(rank, 2, path, ids, tp_config, timeout=900)[0]
            err = float((got["logits"] - ref["logits"]).abs().max() / ref["logits"].abs().max())
            new, ref_new = got["tokens"][0, ids.shape[1]:], ref["tokens"][0, ids.shape[1]:]
            differ = (new != ref_new).nonzero()
            agree = int(differ[0, 0]) if len(differ) else NEW_TOKENS
            print(f"{name}: logit error {err:.4f}, greedy tokens equal to fp32 before the first difference: "
                  f"{agree}/{NEW_TOKENS}, equal positions {int((new == ref_new).sum())}/{NEW_TOKENS}")


if __name__ == "__main__":
    main()
