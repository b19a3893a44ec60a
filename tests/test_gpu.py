"""GPU checks (NCCL, bf16): hf_tp at tp 2 against single-GPU Transformers. Skipped without 2 GPUs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL); none or one visible here")
def test_bf16_tp2_matches_single_gpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tp-size", "2",
                           "--new-tokens", "128", "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert out.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert not result["nan"]
    assert result["logits_rel_err"] <= 1e-2, result
    assert all(result["tokens_identical_per_prompt"]), result
    assert "Paris" in result["answer_prompt0"], result
