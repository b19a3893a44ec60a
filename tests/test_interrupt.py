"""Interrupting a generate on the single-controller handle, in real processes: Ctrl-C in a terminal
(SIGINT to the driver's whole process group) and a notebook's "interrupt kernel" (SIGINT to the
driver alone). The workers must not see the signal; the driver's KeyboardInterrupt cancels the call
on every rank at the same decode step; the same workers then answer the next call with the tokens
and logits of the unsplit Transformers model."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import load_reference, rel_err

PROMPT = [[3, 4, 5]]
# The interrupted call asks for this many tokens: minutes of work for the workers, so a next call
# that returns at all shows the first one was cancelled rather than finished.
LONG = 100_000

_DRIVER = textwrap.dedent(f"""
    import signal, sys, time, torch, hf_tp
    from transformers.generation.streamers import BaseStreamer

    # Ctrl-C raises KeyboardInterrupt, as in a terminal or a notebook, even where this test was started from a
    # background job: a shell without job control starts those with SIGINT ignored, the driver would inherit
    # that, and Python then installs no handler (the interrupt would never arrive).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    class Announce(BaseStreamer):
        '''Says when the workers are well into the long generate: the test's cue to interrupt.'''
        def __init__(self):
            self.steps = 0
        def put(self, value):
            self.steps += 1
            if self.steps == 5:
                print("STARTED", flush=True)
        def end(self):
            pass

    model = hf_tp.AutoModelForCausalLM.from_pretrained(sys.argv[1], tp_size=2, device="cpu", dtype=torch.float32)
    pids = [h["pid"] for h in model.health()]
    ids = torch.tensor({PROMPT})
    streamer = Announce()
    try:
        model.generate(ids, max_new_tokens={LONG}, do_sample=False, streamer=streamer)
        print("NOT INTERRUPTED", flush=True)
    except KeyboardInterrupt:  # what a notebook or a REPL does: report it and take the next command
        start = time.time()
        out = model.generate(ids, max_new_tokens=10, do_sample=False)
        print("NEXT_S", time.time() - start, flush=True)
        logits = model(ids).logits
        health = model.health()
        torch.save({{"tokens": out, "logits": logits, "pids": pids, "steps": streamer.steps,
                    "after": [(h["pid"], h["alive"], h["error"]) for h in health]}}, sys.argv[2])
    model.shutdown()
""")


def _wait_for_line(proc: subprocess.Popen, text: str, seconds: float) -> str:
    """Read the driver's stdout until a line starting with ``text``; fail after ``seconds``."""
    deadline = time.time() + seconds
    seen = ""
    while time.time() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
            if line.startswith(text):
                return line
    raise AssertionError(f"the driver never printed {text!r}; stdout so far:\n{seen}")


@pytest.mark.parametrize("target", ["driver_only", "process_group"])
def test_interrupt_cancels_on_every_rank(tiny_checkpoint, tmp_path, target):
    path = tiny_checkpoint("llama")
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    result = tmp_path / "result.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Its own session, as a terminal gives a shell's foreground job: killpg reaches the driver and
    # whatever hf_tp left in its process group, and nothing of pytest.
    driver = subprocess.Popen([sys.executable, str(script), str(path), str(result)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for_line(driver, "STARTED", 180)
        if target == "driver_only":
            os.kill(driver.pid, signal.SIGINT)  # a notebook's "interrupt kernel"
        else:
            os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C in a terminal
        stdout, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stderr[-5000:]
    assert "NOT INTERRUPTED" not in stdout
    # A worker that got the SIGINT would print a KeyboardInterrupt traceback (stderr is shared) and die.
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-5000:]
    got = torch.load(result)
    assert got["after"] == [(pid, True, None) for pid in got["pids"]], "the workers were replaced or failed"
    assert 5 <= got["steps"] < LONG
    ref = load_reference(path)
    ids = torch.tensor(PROMPT)
    assert torch.equal(got["tokens"], ref.generate(ids, max_new_tokens=10, do_sample=False))
    # fp32; tolerance: the all-reduce sums partial products in another order.
    assert rel_err(got["logits"], ref(ids).logits) <= 1e-5
    # Issue 15 asks for "about a second"; the bound is loose for a busy 2-core host. Before the fix the
    # next call waited for the whole interrupted job (LONG tokens: minutes) and hit communicate's timeout.
    next_s = float(stdout.split("NEXT_S")[1].split()[0])
    assert next_s < 10, next_s
