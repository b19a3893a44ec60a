"""Issue 19: how far FP8 activations at prefill move a model's logits, emulated on the CPU.

The GPU check of TPConfig(fp8_activations=True) (benchmarks/gpu_check.py --fp8 channel, 2026-12-05) failed on a random
phi3: its teacher-forced logits were 1.84x as far from the fp32 truth as the bf16 model's (bound 1.1x). This script
asks the same question of other models and of other ways to quantize the activations, without a GPU: a
Transformers bf16 model of the FP8 checkpoint's dequantized weights; the input of each Linear that the checkpoint
quantized (hf_tp keeps exactly those FP8; ``--only`` narrows them by name) is quantized as the kernels would
(fp8_triton._quantize_groups: per row, scale amax / 448, clamp, e4m3) when the call has more than ``--min-rows``
rows (hf_tp's prefill sizes, fp8_triton.DOT_MAX_M), the product then taken in fp32 (the kernels' accumulation) and
rounded to bf16. gpu_check's references and verdict judge it (its TP run replaced by this model). Not modelled:
the FP8 tensor cores' own accumulator, narrower than fp32 (fp8_triton's PROMOTE sums each K step in fp32).

Modes (--modes):
  none      activations kept (hf_tp's default): the check of the harness, expect a ratio near 1.0
  token     one scale per row (the per-channel W8A8 kernel)
  group     one scale per row and 128 columns (the block W8A8 kernel)
  two_term  x ~ s1 * q1 + s2 * q2 per row, q2 the FP8 rounding of what q1 left (two FP8 products per GEMM)

  python benchmarks/fp8_act_emulation.py [--random-arch phi3 | --model DIR] [--fp8 channel|block] [--tp 2]
      [--only o_proj,down_proj] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check as gc  # noqa: E402

FP8_MAX = 448.0


def _fp8_round(x: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x quantized to e4m3 and widened back, its scale): the rounding of fp8_triton._quantize_groups."""
    scale = amax.clamp(min=1e-12) / FP8_MAX
    q = (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()
    return q * scale, scale


def quantize_activations(x: torch.Tensor, mode: str, group: int = 128) -> torch.Tensor:
    """x (rows, K) in fp32 as the FP8 kernels see it after quantization (mode as in the module docstring)."""
    if mode == "token":
        return _fp8_round(x, x.abs().amax(-1, keepdim=True))[0]
    if mode == "group":
        rows, k = x.shape
        pad = (-k) % group
        xg = torch.nn.functional.pad(x, (0, pad)).view(rows, -1, group)
        return _fp8_round(xg, xg.abs().amax(-1, keepdim=True))[0].view(rows, -1)[:, :k]
    if mode == "two_term":
        first, _ = _fp8_round(x, x.abs().amax(-1, keepdim=True))
        rest = x - first
        return first + _fp8_round(rest, rest.abs().amax(-1, keepdim=True))[0]
    raise ValueError(mode)


ROW_PARALLEL = ("o_proj", "down_proj")  # hf_tp's plans split these along K: a rank quantizes its slice of x


def quantized_modules(fp8_folder: str) -> set[str]:
    """The modules whose weights the FP8 checkpoint quantized (those with a scale beside the weight)."""
    from safetensors import safe_open

    names = set()
    for file in Path(fp8_folder).glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            names |= {k.rsplit(".", 1)[0] for k in f.keys() if k.endswith((".weight_scale", ".weight_scale_inv"))}
    return names


def install(model, mode: str, min_rows: int, tp: int, quantized: set[str]) -> int:
    """Replace the forward of every Linear in ``quantized`` (as hf_tp keeps only those FP8); returns how many.
    With ``tp`` > 1 the row-parallel Linears quantize each of ``tp`` equal K slices on its own (each rank's kernel
    sees only its slice)."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name in quantized:
            slices = tp if name.rsplit(".", 1)[-1] in ROW_PARALLEL else 1

            def forward(x, module=module, slices=slices):
                x2 = x.reshape(-1, x.shape[-1])
                if x2.shape[0] <= min_rows:
                    return torch.nn.functional.linear(x, module.weight, module.bias)
                xq = torch.cat([quantize_activations(part, mode) for part in x2.float().chunk(slices, dim=-1)], -1)
                out = torch.nn.functional.linear(xq, module.weight.float(),
                                                 None if module.bias is None else module.bias.float())
                return out.to(x.dtype).view(*x.shape[:-1], -1)
            module.forward = forward
            count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--random-arch", choices=sorted(gc.RANDOM_ARCHS))
    parser.add_argument("--fp8", choices=["channel", "block"], default="channel")
    parser.add_argument("--modes", default="none,token,group,two_term")
    parser.add_argument("--min-rows", type=int, default=64)
    parser.add_argument("--tp", type=int, default=1, help="row-parallel Linears quantize tp K slices apart")
    parser.add_argument("--only", help="quantize only the Linears whose last name is one of these (comma-separated)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--json")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    from hf_tp.demo import demo_model_path

    if args.random_arch:
        args.model = gc.write_random_arch(args.random_arch, tempfile.mkdtemp(prefix="hf_tp_act_emul_"))
    args.model = args.model or str(demo_model_path())
    plain, fp8 = gc.write_fp8_pair(args.model, args.fp8, tempfile.mkdtemp(prefix="hf_tp_act_emul_fp8_"))
    quantized = quantized_modules(fp8)
    if args.only:
        quantized = {name for name in quantized if name.rsplit(".", 1)[-1] in args.only.split(",")}
    tokenizer = gc._tokenizer(plain)
    inputs = gc.prompt_inputs(tokenizer)
    work = {"inputs": inputs, "pad_token_id": tokenizer.pad_token_id if tokenizer else 0, "teacher_forced": None}
    ref = gc.run_reference(plain, torch.bfloat16, "cpu", work, args.new_tokens, timed=False)
    work["teacher_forced"] = gc.extend_with(inputs, ref["tokens"])
    fp32 = gc.run_reference(plain, torch.float32, "cpu", work, args.new_tokens, timed=False)
    rows = {}
    for mode in args.modes.split(","):
        model = AutoModelForCausalLM.from_pretrained(plain, dtype=torch.bfloat16).eval()
        if mode != "none":
            install(model, mode, args.min_rows, args.tp, quantized)
        test = gc.run_model(model, "cpu", work, args.new_tokens, timed=False)
        c = gc.compare(ref, fp32, test, inputs, work["teacher_forced"], args.new_tokens)
        passed, reasons = gc.verdict(c)
        rows[mode] = {
            "prompt_l2_ratio": c["prompt_logits"]["l2_ratio_tp_over_ref_vs_fp32"],
            "tf_l2_ratio": c["teacher_forced_logits"]["l2_ratio_tp_over_ref_vs_fp32"],
            "tf_l2_vs_bf16": c["teacher_forced_logits"]["tp_vs_bf16_ref"]["l2"],
            "tf_argmax_mismatches": c["teacher_forced_argmax"]["tp_vs_bf16_ref"]["count"],
            "tf_mismatches_all_near_ties": c["teacher_forced_argmax"]["tp_vs_bf16_ref"]["all_near_ties"],
            "free_running": [v["status"] + (f" at {v['token']}" if "token" in v else "")
                             for v in c["free_running_tp_vs_bf16_ref"]],
            "passed": passed, "fail_reasons": reasons}
        print(mode, json.dumps(rows[mode]), flush=True)
    summary = {"model": args.model, "fp8": args.fp8, "quantized_modules": len(quantized), "only": args.only,
               "min_rows": args.min_rows, "tp": args.tp, "new_tokens": args.new_tokens,
               "prompt_rows": int(inputs["input_ids"].numel()), "torch": torch.__version__, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
