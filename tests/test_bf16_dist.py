"""bf16 at tp 2 on CPU (gloo): the regression tests of "forward right, generate's first token wrong" (issue 12).

On an H200 SmolLM2 at tp 2 answered "L'Étoile, ..." because generate's prefill (logits_to_keep=1) gave
the LM head a GEMM of another shape, whose bf16-rounded logits tied "The" (fp32 25.33) with "L"
(25.24): both round to 25.25, and argmax takes the lower id. The LM head now keeps its fp32
accumulator. CPU kernels round the same way for every shape, so the bug itself cannot show here;
these tests pin the mechanism (a constructed tie, on real ranks) and run the paths that changed, in
bf16, with fusion forced on, the decode loop (its cache sequence, without graphs on CPU) and
Transformers' generate, against the unsplit model by SPEC 4.5's rule: identical greedy tokens, or a
first divergence at a near-tie of the fp32 model. The same run checks the forward logits against the
unsplit model's and that RowParallelLinear's fp32-reduction branch (HF_TP_REDUCE_FP32 at its default) ran.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import torch

from conftest import load_reference, rel_err, run_ranks, save_tiny_model, tiny_config

_spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)

HIDDEN, VOCAB = 16, 8
LOW_ID, HIGH_ID = 1, 6  # rank 0 holds rows 0-3, rank 1 rows 4-7


def tied_head_weights() -> tuple[torch.Tensor, torch.Tensor]:
    """x and W (bf16, exactly representable) whose fp32 logits are 25.25 (token 1) and 25.28125
    (token 6): one bf16 step at 25 is 0.125, so rounded to bf16 both read 25.25, a tie."""
    x = torch.zeros(1, 1, HIDDEN, dtype=torch.bfloat16)
    x[..., :2] = 1.0
    weight = torch.zeros(VOCAB, HIDDEN, dtype=torch.bfloat16)
    weight[LOW_ID, 0] = 25.25
    weight[HIGH_ID, 0], weight[HIGH_ID, 1] = 25.25, 0.03125
    return x, weight


def lm_head_on_rank():
    import torch.distributed as dist

    from hf_tp.parallel.comm import TPGroup
    from hf_tp.parallel.layers import ParallelLMHead

    dist.init_process_group("gloo")
    tp = TPGroup(tp_rank=dist.get_rank(), tp_size=2, device=torch.device("cpu"))
    x, weight = tied_head_weights()
    rows = VOCAB // 2
    out = {}
    for fp32_logits in (True, False):
        head = ParallelLMHead(HIDDEN, VOCAB, rows, bias=False, tp=tp, dtype=torch.bfloat16, fp32_logits=fp32_logits)
        with torch.no_grad():
            head.weight.copy_(weight[tp.tp_rank * rows:(tp.tp_rank + 1) * rows])
            out[fp32_logits] = head(x)
    return out


def test_lm_head_keeps_the_fp32_accumulator_so_a_bf16_tie_does_not_pick_the_lower_id():
    x, weight = tied_head_weights()
    truth = x.float() @ weight.float().t()
    assert truth.argmax(-1).item() == HIGH_ID
    for out in run_ranks(lm_head_on_rank, 2):
        assert out[True].dtype == torch.float32
        torch.testing.assert_close(out[True], truth, rtol=0, atol=0)  # exactly representable products
        assert out[True].argmax(-1).item() == HIGH_ID
        # The mechanism of the bug: rounded to bf16 the two logits tie and argmax takes the lower id.
        assert out[False].dtype == torch.bfloat16
        assert out[False][..., LOW_ID].item() == out[False][..., HIGH_ID].item() == 25.25
        assert out[False].argmax(-1).item() == LOW_ID


NEW_TOKENS = 24
PAD = 0


def prompts() -> dict:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 101, (2, 10), generator=gen)
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = PAD, 0  # left-padded second row
    return {"input_ids": ids, "attention_mask": mask}


def generate_bf16_on_rank(folder: str, inputs: dict):
    """Greedy tokens at tp 2 in bf16 with fusion forced on: Transformers' generate and hf_tp's loop;
    and the full forward's last-position argmax (what generate's first token must equal)."""
    import hf_tp
    from hf_tp.parallel.layers import RowParallelLinear

    model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=2, device="cpu", dtype=torch.bfloat16,
                                                       tp_config=hf_tp.TPConfig(fuse=True))
    assert model.hf_tp_config.reduce_fp32  # the fp32-reduction branch of the row-parallel layers runs in bf16
    greedy = dict(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=PAD)
    out = {"fused_groups": sum(1 for m in model.modules() if getattr(m, "shared_input", None) is not None),
           # HF_TP_REDUCE_FP32 is left unset: its default must route every row-parallel sum through fp32.
           "reduce_fp32": [m.reduce_fp32 for m in model.modules() if isinstance(m, RowParallelLinear)]}
    with torch.no_grad():
        out["logits"] = model(**inputs).logits
        out["forward_last"] = out["logits"][:, -1].argmax(-1)
    for path, loop in (("generate", False), ("loop", True)):
        # fast_decode is read at each generate() from the model's resolved TPConfig
        model.hf_tp_config = dataclasses.replace(model.hf_tp_config, fast_decode=loop)
        out[path] = model.generate(**inputs, **greedy)[:, inputs["input_ids"].shape[1]:]
        out[path + "_again"] = model.generate(**inputs, **greedy)[:, inputs["input_ids"].shape[1]:]  # cache reuse
    return out


def test_bf16_tp2_fused_generate_and_loop_match_the_unsplit_model(tmp_path):
    config = tiny_config("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3,
                         tie_word_embeddings=True, initializer_range=0.2)
    folder = str(save_tiny_model(tmp_path / "llama_gqa9_tied", config, seed=5))
    inputs = prompts()
    greedy = dict(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=PAD)
    prompt_len = inputs["input_ids"].shape[1]
    ref = load_reference(folder).to(torch.bfloat16)
    fp32 = load_reference(folder)
    with torch.no_grad():
        ref_tokens = ref.generate(**inputs, **greedy)[:, prompt_len:]
        teacher = gpu_check.extend_with(inputs, ref_tokens)
        ref_tf = gpu_check.generated_positions(ref(**teacher).logits.float(), prompt_len, NEW_TOKENS)
        fp32_tf = gpu_check.generated_positions(fp32(**teacher).logits.float(), prompt_len, NEW_TOKENS)
    noise = (ref_tf - fp32_tf).abs().amax(-1)
    # Forward logits at the attended positions (left padding's rows are not compared).
    keep = inputs["attention_mask"].bool()
    with torch.no_grad():
        fp32_logits = fp32(**inputs).logits[keep]
        bf16_error = rel_err(ref(**inputs).logits[keep], fp32_logits)

    results = run_ranks(generate_bf16_on_rank, 2, folder, inputs)
    # The LM head gathers the same logits on every rank.
    assert torch.equal(results[0]["logits"], results[1]["logits"])
    for rank, out in enumerate(results):
        assert out["fused_groups"] > 0, "fusion was forced on but no group was fused"
        # The fp32-reduction branch of RowParallelLinear ran: on for every o_proj/down_proj, and the model is bf16.
        assert out["reduce_fp32"] and all(out["reduce_fp32"]), out["reduce_fp32"]
        # Forward parity in bf16: hf_tp's logits are no further from the fp32 model than Transformers' own bf16
        # model is, up to 1.25x for the split sums rounding at other places than one GEMM. Measured 2026-12-01
        # (torch 2.13 CPU): Transformers bf16 3.4e-2, hf_tp 2.7e-2 (2.9e-2 with HF_TP_REDUCE_FP32=0: on a model
        # this small the bound cannot tell the two reductions apart; the flags above pin the branch). A wrong
        # shard or a missing all-reduce is far outside it.
        logits = out["logits"][keep]
        assert torch.isfinite(logits).all()
        assert rel_err(logits, fp32_logits) <= 1.25 * bf16_error, (rel_err(logits, fp32_logits), bf16_error)
        assert torch.equal(out["generate"][:, 0], out["forward_last"]), f"rank {rank}: first token != forward argmax"
        for path in ("generate", "generate_again", "loop", "loop_again"):
            assert torch.equal(out[path], out["generate"]), f"rank {rank}: {path} differs from Transformers' generate"
            verdicts = gpu_check.free_running_verdicts(out[path], ref_tokens, fp32_tf, noise)
            assert all(v["status"] != "diverged" for v in verdicts), (rank, path, verdicts)
