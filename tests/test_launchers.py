"""One unchanged user script under every launcher: plain python (single-controller), torchrun,
accelerate launch, and two torchrun "nodes" rendezvousing over loopback. Each must print the
same greedy tokens as the unsplit Transformers model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import _free_port, load_reference

SCRIPT = textwrap.dedent("""
    import os, sys, torch, hf_tp
    model = hf_tp.AutoModelForCausalLM.from_pretrained(sys.argv[1], tp_size=2, device="cpu", dtype=torch.float32)
    ids = torch.tensor([[5, 17, 42, 8, 99, 3]])
    out = model.generate(ids, max_new_tokens=24, do_sample=False)
    if int(os.environ.get("RANK", "0")) == 0:
        print("TOKENS:", " ".join(map(str, out[0].tolist())), flush=True)
""")


def _tokens(stdout: str) -> list[int]:
    lines = [line for line in stdout.splitlines() if line.startswith("TOKENS:")]
    assert len(lines) == 1, stdout[-3000:]
    return [int(t) for t in lines[0].split()[1:]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from conftest import save_tiny_model, tiny_config

    root = tmp_path_factory.mktemp("launch")
    path = save_tiny_model(root / "model", tiny_config("qwen2"))
    script = root / "script.py"
    script.write_text(SCRIPT)
    want = load_reference(path).generate(torch.tensor([[5, 17, 42, 8, 99, 3]]), max_new_tokens=24, do_sample=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return path, script, want[0].tolist(), env


def _run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def test_plain_python_single_controller(setup):
    path, script, want, env = setup
    assert _tokens(_run([sys.executable, str(script), str(path)], env)) == want


def test_torchrun(setup):
    path, script, want, env = setup
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), str(path)]
    assert _tokens(_run(cmd, env)) == want


@pytest.mark.skipif(shutil.which("accelerate") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "accelerate")),
                    reason="accelerate's launcher script is not installed")
def test_accelerate_launch(setup):
    path, script, want, env = setup
    launcher = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [launcher, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(script), str(path)]
    assert _tokens(_run(cmd, env)) == want


def _two_nodes(script, path, env):
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(r), "--master-addr", "127.0.0.1", "--master-port", str(port),
                               str(script), str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    try:
        outs = [n.communicate(timeout=240) for n in nodes]
    finally:
        for n in nodes:
            if n.poll() is None:
                n.kill()
    return [n.returncode for n in nodes], outs


def test_two_torchrun_nodes_over_loopback(setup):
    path, script, want, env = setup
    codes, outs = _two_nodes(script, path, env)
    if any(codes) and "TOKENS:" in outs[0][0] and "SIGABRT" in "".join(o[1] for o in outs):
        # Seen once under a loaded CI run: after generating, a rank aborted in interpreter teardown
        # when the other "node's" launcher, which serves the rendezvous store, exited first (a
        # torchrun race of two nodes on one host). Such a run says nothing about hf_tp: run again.
        codes, outs = _two_nodes(script, path, env)
    assert not any(codes), "\n".join(o[1][-3000:] for o in outs)
    assert _tokens(outs[0][0]) == want
