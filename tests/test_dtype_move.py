"""model.half() / .to(dtype) on a tensor-parallel model at tp 2 (gloo): the fused q/k/v and gate/up buffers
follow the conversion (their members' weights are views of one buffer), and moving a rank to another
device is refused clearly (issue 14)."""

from __future__ import annotations

import torch

from conftest import load_reference, rel_err, run_ranks, save_tiny_model, tiny_config


def convert_on_rank(folder: str, ids: torch.Tensor):
    import hf_tp

    model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=2, device="cpu", dtype=torch.float32,
                                                       tp_config=hf_tp.TPConfig(fuse=True))
    groups = {id(m.shared_input): m.shared_input for m in model.modules() if getattr(m, "shared_input", None)}
    out = {"groups": len(groups)}
    model.to(torch.bfloat16)
    out["views"] = all(m.weight.untyped_storage().data_ptr() == g.weight.untyped_storage().data_ptr()
                       and g.weight.dtype == torch.bfloat16 for g in groups.values() for m in g.members)
    with torch.no_grad():
        out["bf16_logits"] = model(ids).logits.float()
        model.float()
        out["fp32_logits"] = model(ids).logits
    try:
        model.to("meta")
        out["move"] = None
    except ValueError as exc:
        out["move"] = str(exc)
    return out


def test_fused_buffers_follow_dtype_conversions_and_device_moves_are_refused(tmp_path):
    folder = str(save_tiny_model(tmp_path / "llama", tiny_config("llama"), seed=3))
    ids = torch.randint(1, 101, (1, 9), generator=torch.Generator().manual_seed(0))
    ref = load_reference(folder)
    with torch.no_grad():
        want = ref(ids).logits
        want_bf16 = ref.to(torch.bfloat16)(ids).logits.float()
    for out in run_ranks(convert_on_rank, 2, folder, ids):
        assert out["groups"] > 0 and out["views"]
        # bf16 of the converted weights: as close to Transformers' own bf16 model as bf16 allows
        assert rel_err(out["bf16_logits"], want_bf16) < 3e-2
        # back to fp32 (the bf16-rounded weights): the fused buffer was rebuilt again, not left in bf16
        assert out["fp32_logits"].dtype == torch.float32 and rel_err(out["fp32_logits"], want) < 3e-2
        assert out["move"] and "not supported" in out["move"]
