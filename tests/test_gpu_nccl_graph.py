"""The decode loop's captured step at tp 2 over NCCL under torchrun gives Transformers' tokens: the all-reduces and
the all-gather are inside the replayed CUDA graph, not left out of it. A missing collective cannot be seen at world
size 1 (a sum over one rank is the rank's own value), so only two GPUs check this. Skipped without 2 GPUs.

The handle test (test_gpu_orchestration.py) compares the loop's tokens too, but does not check that its workers
captured: a capture that failed decodes eagerly, with the same tokens. Here each rank asserts that it replayed
a graph."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import load_reference

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL); fewer visible here")]

SCRIPT = """
import json, os, sys, torch, hf_tp
model = hf_tp.AutoModelForCausalLM.from_pretrained(sys.argv[1], tp_size=2, dtype=torch.float32,
                                                   tp_config=hf_tp.TPConfig(fast_decode=True))
ids = torch.tensor(json.loads(sys.argv[2]))
mask = torch.tensor(json.loads(sys.argv[3]))
runs = [model.generate(ids, attention_mask=mask, max_new_tokens=32, do_sample=False).tolist() for _ in range(2)]
decoder = model._hf_tp_static_decoder
graphs = [g for session in decoder.sessions.values() for g in session.graphs.values() if g is not None]
print("RESULT " + json.dumps({"rank": int(os.environ["RANK"]), "runs": runs, "use_graphs": decoder.use_graphs,
                              "graphs": len(graphs)}), flush=True)
"""


def test_captured_step_over_nccl_gives_transformers_tokens(tiny_checkpoint, tmp_path):
    # 6 query / 3 KV heads: uneven at tp 2 (4 + 2 query heads), so the ranks' graphs differ
    path = tiny_checkpoint("llama", num_attention_heads=6, num_key_value_heads=3)
    ids = torch.randint(2, 101, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0  # left padding in the second row
    ref = load_reference(path).to("cuda:0")
    with torch.no_grad():
        want = ref.generate(ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=32,
                            do_sample=False).cpu().tolist()
    del ref
    torch.cuda.empty_cache()
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(path), json.dumps(ids.tolist()), json.dumps(mask.tolist())],
                          capture_output=True, text=True, env=env, timeout=400)
    results = [json.loads(line.split("RESULT ", 1)[1]) for line in proc.stdout.splitlines() if "RESULT " in line]
    assert proc.returncode == 0 and len(results) == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    for result in results:
        assert result["use_graphs"] and result["graphs"] >= 1, result  # the tokens below came from replays
        assert result["runs"][0] == want, (result["rank"], "capturing call", result["runs"][0], want)
        assert result["runs"][1] == want, (result["rank"], "replaying call", result["runs"][1], want)
