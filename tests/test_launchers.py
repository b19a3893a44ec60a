"""One unchanged user script under every launcher: plain python (single-controller), torchrun,
accelerate launch, and two torchrun "nodes" rendezvousing over loopback. Each must print the
same greedy tokens as the unsplit Transformers model, in the mode it claims: WORLD_SIZE=2 and the
Transformers model object under a launcher, the hf_tp.TPModel handle without one."""

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
        from transformers import PreTrainedModel
        kind = "transformers" if isinstance(model, PreTrainedModel) else "handle" if isinstance(model, hf_tp.TPModel) else "?"
        print("MODE:", os.environ.get("WORLD_SIZE", "unset"), kind, flush=True)
        print("TOKENS:", " ".join(map(str, out[0].tolist())), flush=True)
""")

LAUNCHER_MODE = "MODE: 2 transformers"  # two ranks, each holding the Transformers model object
SINGLE_CONTROLLER = "MODE: unset handle"  # one process, hf_tp's own workers behind a TPModel handle


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
    return proc.stdout, proc.stderr


def _mode(stdout: str) -> str:
    return next((line for line in stdout.splitlines() if line.startswith("MODE:")), "no MODE line")


def test_plain_python_single_controller(setup):
    path, script, want, env = setup
    stdout, stderr = _run([sys.executable, str(script), str(path)], env)
    assert _mode(stdout) == SINGLE_CONTROLLER and _tokens(stdout) == want
    assert "single-controller mode" not in stderr  # the launcher warning is for launchers only


def test_torchrun(setup):
    path, script, want, env = setup
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), str(path)]
    stdout, _ = _run(cmd, env)
    assert _mode(stdout) == LAUNCHER_MODE and _tokens(stdout) == want


_ACCELERATE = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
needs_accelerate = pytest.mark.skipif(not os.path.exists(_ACCELERATE), reason="accelerate's launcher script is not installed")
_ACCELERATE_COMMON = ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


@needs_accelerate
def test_accelerate_launch(setup):
    """`--multi_gpu` is the accelerate option that starts one process per rank (through torchrun); without
    GPUs the ranks run on the CPU and hf_tp joins them with gloo."""
    path, script, want, env = setup
    cmd = [_ACCELERATE, "launch", "--multi_gpu", *_ACCELERATE_COMMON, "--main_process_port", str(_free_port()),
           str(script), str(path)]
    stdout, _ = _run(cmd, env)
    assert _mode(stdout) == LAUNCHER_MODE and _tokens(stdout) == want


@needs_accelerate
def test_accelerate_launch_cpu_is_one_process(setup):
    """`--cpu` starts ONE process whatever --num_processes says (accelerate runs several CPU processes
    only through mpirun): hf_tp starts its own workers there, and says so once, naming the mode."""
    path, script, want, env = setup
    cmd = [_ACCELERATE, "launch", "--cpu", *_ACCELERATE_COMMON, str(script), str(path)]
    stdout, stderr = _run(cmd, env)
    assert _mode(stdout) == SINGLE_CONTROLLER and _tokens(stdout) == want
    assert stderr.count("single-controller mode") == 1, stderr[-3000:]
    assert "accelerate launch --multi_gpu --num_processes 2" in stderr


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
    assert _mode(outs[0][0]) == LAUNCHER_MODE and _tokens(outs[0][0]) == want
