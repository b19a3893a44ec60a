"""Figures docs/handle.md and docs/api.md quote about the single-controller handle on CPU, measured on the demo model
(SmolLM2-135M-Instruct, fp32) at tp 2: each rank's resident memory next to the checkpoint's size,
sampling with one seed run to run and against Transformers, and how soon the call after a Ctrl-C starts.

    PYTHONPATH=. python benchmarks/cpu_handle_facts.py
"""

from __future__ import annotations

import os
import signal
import threading
import time

import torch
import transformers
from transformers.generation.streamers import BaseStreamer

import hf_tp
from hf_tp.demo import demo_model_path


class _InterruptAfter(BaseStreamer):
    """Sends this process a SIGINT (a notebook's "interrupt kernel") after ``steps`` streamed steps."""

    def __init__(self, steps: int):
        self.steps, self.seen = steps, 0

    def put(self, value):
        self.seen += 1
        if self.seen == self.steps:
            os.kill(os.getpid(), signal.SIGINT)

    def end(self):
        pass


def _rss_parts(pid: int) -> str:
    """Linux: the resident set split into anonymous memory and mapped files (the safetensors file)."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith(("RssAnon", "RssFile")))
    return ", ".join(f"{k} {int(v.split()[0]) / 1024:.0f} MiB" for k, v in fields.items())


def main() -> None:
    path = str(demo_model_path())
    weights = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
    tok = transformers.AutoTokenizer.from_pretrained(path)
    ids = tok("The old lighthouse keeper climbed the stairs and", return_tensors="pt")
    sample = dict(do_sample=True, max_new_tokens=16, temperature=1.0, top_k=50)
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    torch.manual_seed(0)
    ref_tokens = ref.generate(**ids, **sample)
    del ref
    with hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype=torch.float32) as model:
        runs = []
        for _ in range(2):
            torch.manual_seed(0)
            runs.append(model.generate(**ids, **sample))
        print(f"sampling, seed 0, 16 tokens: run 1 == run 2: {torch.equal(runs[0], runs[1])}; "
              f"== Transformers with seed 0: {torch.equal(runs[0], ref_tokens)}")
        model.generate(**ids, max_new_tokens=8, do_sample=False)
        for m, h in zip(model.memory(), model.health()):
            print(f"rank {m['rank']}: resident {m['reserved_bytes'] / 2**20:.0f} MiB (peak {m['peak_bytes'] / 2**20:.0f} MiB; "
                  f"{_rss_parts(h['pid'])}), weights shard {m['weights_bytes'] / 2**20:.0f} MiB; "
                  f"whole checkpoint {weights / 2**20:.0f} MiB")
        try:
            model.generate(**ids, max_new_tokens=400, do_sample=False, streamer=_InterruptAfter(5))
        except KeyboardInterrupt:
            start = time.time()
            model.generate(**ids, max_new_tokens=1, do_sample=False)
            print(f"after a Ctrl-C 5 tokens into a 400-token generate: the next generate(max_new_tokens=1) "
                  f"returned in {time.time() - start:.2f} s")
        frozen = model.health()[1]["pid"]
    # A frozen worker: SIGSTOP on rank 1 during a generate, timeout_s=6.
    with hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype=torch.float32, timeout_s=6) as model:
        frozen = model.health()[1]["pid"]
        stopped = []
        threading.Timer(2.0, lambda: (os.kill(frozen, signal.SIGSTOP), stopped.append(time.time()))).start()
        try:
            model.generate(**ids, max_new_tokens=100000, do_sample=False)
        except hf_tp.WorkerError as exc:
            print(f"frozen worker (SIGSTOP), timeout_s=6: WorkerError {time.time() - stopped[0]:.2f} s after the freeze "
                  f"({str(exc).splitlines()[0][:90]}...)")


if __name__ == "__main__":
    main()
