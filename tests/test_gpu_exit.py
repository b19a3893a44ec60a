"""A torchrun script at tp 2 over NCCL that decoded with hf_tp's loop (NCCL kernels captured in CUDA graphs)
exits on every rank within 10 s of its last generate (issue 12). Before hf_tp released its graphs ahead of
destroy_process_group(), every rank hung there at exit (PyTorch issue 115388). Skipped without 2 GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL); fewer visible here")]

SCRIPT = """
import sys, time, torch, hf_tp
model = hf_tp.AutoModelForCausalLM.from_pretrained(sys.argv[1], tp_size=2, dtype=torch.bfloat16)
ids = torch.randint(2, 101, (1, 9), generator=torch.Generator().manual_seed(0))
for _ in range(2):  # the second call replays the graph the first captured
    out = model.generate(ids, max_new_tokens=24, do_sample=False)
assert model._hf_tp_static_decoder.use_graphs, "the loop did not capture: this test would prove nothing"
print("LAST_GENERATE_DONE", flush=True)
import faulthandler
faulthandler.dump_traceback_later(20, exit=True)  # a rank still here after 20 s prints where it waits, and ends
if sys.argv[2] == "own-destroy":  # a script that ends with its own destroy_process_group() (teardown.guard_destroy)
    torch.distributed.destroy_process_group()
"""


@pytest.mark.parametrize("ending", ["hf_tp-teardown", "own-destroy"])
def test_torchrun_script_with_captured_nccl_exits_within_10_s(tiny_checkpoint, tmp_path, ending):
    path = tiny_checkpoint("llama", num_attention_heads=4, num_key_value_heads=2)
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "HF_TP_FAST_DECODE": "1", "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
           "NVSHMEM_DISABLE_NVLS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(script), str(path), ending], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    lines, done_at = [], []

    def read():  # in a thread, so that the deadline below holds even while no rank prints
        for line in proc.stdout:
            lines.append(line)
            if "LAST_GENERATE_DONE" in line:
                done_at.append(time.monotonic())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        reader.join(5)
        pytest.fail("the script did not end within 300 s:\n" + "".join(lines[-60:]))
    end = time.monotonic()
    reader.join(5)
    assert proc.returncode == 0 and len(done_at) == 2, "".join(lines[-40:])
    assert end - max(done_at) < 10, f"ranks took {end - max(done_at):.1f} s to exit after their last generate"
