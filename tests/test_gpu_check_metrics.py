"""The comparison code of benchmarks/gpu_check.py, on small hand-made logits (CPU, no model)."""

import importlib.util
from pathlib import Path

import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", _PATH)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def test_logit_errors_ignore_pad_positions():
    ref = torch.ones(2, 3, 4)
    test = ref.clone()
    test[1, 0] = 1e6  # a pad position of a left-padded row: meaningless logits
    test[0, 2, 0] = 1.5  # one real difference of 0.5
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    err = gpu_check.logit_errors(test, ref, mask)
    assert abs(err["max_norm"] - 0.5) < 1e-12
    assert abs(err["l2"] - 0.5 / 20 ** 0.5) < 1e-12  # ||diff|| = 0.5, ||ref|| = sqrt(5 positions x 4)


def test_teacher_forced_positions_predict_the_generated_tokens():
    prompt = {"input_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]), "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])}
    tokens = torch.tensor([[10, 11], [12, 13]])
    full = gpu_check.extend_with(prompt, tokens)
    assert full["input_ids"].tolist() == [[0, 5, 6, 10, 11], [7, 8, 9, 12, 13]]
    assert full["attention_mask"].tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    # Logits whose argmax is their own position: the kept ones are positions 2 and 3 (prompt_len - 1 + k).
    logits = torch.eye(5).expand(2, 5, 5)
    kept = gpu_check.generated_positions(logits, prompt_len=3, new_tokens=2)
    assert kept.argmax(-1).tolist() == [[2, 3], [2, 3]]


def _one_position(first, second, fp32):
    as_logits = lambda v: torch.tensor(v, dtype=torch.float32).view(1, 1, -1)  # noqa: E731
    return as_logits(first), as_logits(second), as_logits(fp32)


def test_argmax_mismatch_near_tie_uses_the_fp32_gap_of_the_two_tokens():
    first, second, fp32 = _one_position([1.0, 1.1, 0.0], [1.1, 1.0, 0.0], [1.05, 1.0, 0.0])
    tie = gpu_check.argmax_mismatches(first, second, fp32, noise=torch.tensor([[0.1]]))
    assert tie["count"] == 1 and tie["all_near_ties"]
    assert tie["mismatches"][0]["ids"] == [1, 0]
    # The fp32 model separates the two tokens by 5x the noise: a real disagreement, not a near-tie,
    # even though fp32's top-1/top-2 gap (token 0 vs token 2) is tiny.
    first, second, fp32 = _one_position([0.0, 3.0, 0.0], [3.0, 0.0, 0.0], [1.0, 0.5, 0.99])
    bug = gpu_check.argmax_mismatches(first, second, fp32, noise=torch.tensor([[0.1 / 3]]))
    assert not bug["all_near_ties"]
    assert bug["mismatches"][0]["fp32_top1_top2_gap"] < 0.02


def _comparison(tp_l2, floor_l2, tp_to_fp32_l2=None, near_ties=True):
    errors = lambda l2: {"max_norm": 1.0, "l2": l2}  # noqa: E731
    block = {"tp_vs_bf16_ref": errors(tp_l2), "bf16_ref_vs_fp32_ref": errors(floor_l2),
             "tp_vs_fp32_ref": errors(floor_l2 if tp_to_fp32_l2 is None else tp_to_fp32_l2)}
    return {"non_finite_tp_logits": False, "prompt_logits": block, "teacher_forced_logits": block,
            "teacher_forced_argmax": {"tp_vs_bf16_ref": {"all_near_ties": near_ties}},
            "free_running_tp_vs_bf16_ref": [{"prompt": 0, "status": "identical"}]}


def test_verdict():
    assert gpu_check.verdict(_comparison(0.009, 0.001, 0.5))[0]  # within 1e-2 of the bf16 reference
    # Further than 1e-2 from the bf16 reference, but as close to fp32 as the reference is (within 10 %).
    assert gpu_check.verdict(_comparison(0.04, 0.03, 0.032))[0]
    assert not gpu_check.verdict(_comparison(0.04, 0.03, 0.034))[0]  # the split adds error
    assert not gpu_check.verdict(_comparison(0.001, 0.03, near_ties=False))[0]
    nan = _comparison(0.001, 0.03)
    nan["non_finite_tp_logits"] = True
    assert not gpu_check.verdict(nan)[0]


def test_free_running_verdict_per_prompt():
    # Prompt 0 identical; prompt 1 diverges at token 1 where the fp32 model nearly ties the two tokens;
    # prompt 2 diverges at token 0 where the fp32 model separates them clearly.
    ref = torch.tensor([[3, 1], [3, 1], [3, 1]])
    tp = torch.tensor([[3, 1], [3, 2], [0, 1]])
    fp32 = torch.zeros(3, 2, 4)
    fp32[1, 1, 1], fp32[1, 1, 2] = 1.0, 0.95  # gap 0.05 < 3 x noise 0.1
    fp32[2, 0, 3], fp32[2, 0, 0] = 2.0, 0.0  # gap 2.0 > 3 x noise 0.1
    noise = torch.full((3, 2), 0.1)
    verdicts = gpu_check.free_running_verdicts(tp, ref, fp32, noise)
    assert [v["status"] for v in verdicts] == ["identical", "near-tie", "diverged"]
    assert verdicts[1]["token"] == 1 and verdicts[1]["ids"] == [2, 1]
    comparison = _comparison(0.001, 0.03)
    comparison["free_running_tp_vs_bf16_ref"] = verdicts[:2]
    assert gpu_check.verdict(comparison)[0]
    comparison["free_running_tp_vs_bf16_ref"] = verdicts
    passed, reasons = gpu_check.verdict(comparison)
    assert not passed and "prompt 2" in reasons[0]
