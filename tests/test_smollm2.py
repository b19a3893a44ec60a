"""The real SmolLM2-135M-Instruct (SPEC 6): 9 query / 3 KV heads, tied embeddings, vocab 49152.
tp 2 splits the heads unevenly (6+3 / 2+1), tp 3 evenly. Compared with Transformers on the same folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import load_reference, run_ranks

pytestmark = pytest.mark.slow

NEW_TOKENS = 64
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def prompts(demo_path) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_path)
    story = tok("The old lighthouse keeper climbed the stairs and", return_tensors="pt")
    chat = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)
    return {"story": dict(story), "chat": dict(chat)}


def generate_smollm2(path: str, prompts: dict, tp_size: int) -> dict:
    """Rank function: 64 greedy tokens of a story prompt, and the answer to the chat question."""
    import hf_tp

    model = hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=tp_size, device="cpu", dtype=torch.float32)
    plan = model.hf_tp_plan.attention["model.layers.0.self_attn"]
    return {
        "heads": [(s.q_heads, s.kv_heads) for s in plan],
        # min_new_tokens keeps EOS away so that exactly 64 tokens are compared (same processor in both)
        "story": model.generate(**prompts["story"], do_sample=False, max_new_tokens=NEW_TOKENS,
                                min_new_tokens=NEW_TOKENS),
        "chat": model.generate(**prompts["chat"], do_sample=False, max_new_tokens=24),
    }


@pytest.fixture(scope="module")
def reference(demo_path, prompts) -> dict:
    model = load_reference(demo_path)
    with torch.no_grad():
        return {
            "story": model.generate(**prompts["story"], do_sample=False, max_new_tokens=NEW_TOKENS,
                                    min_new_tokens=NEW_TOKENS),
            "chat": model.generate(**prompts["chat"], do_sample=False, max_new_tokens=24),
        }


EXPECTED_HEADS = {
    2: [((0, 6), (0, 2)), ((6, 9), (2, 3))],
    3: [((0, 3), (0, 1)), ((3, 6), (1, 2)), ((6, 9), (2, 3))],
}


@pytest.mark.parametrize("tp_size", [2, 3])
def test_smollm2_matches_transformers(demo_path, prompts, reference, tp_size):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_path)
    results = run_ranks(generate_smollm2, tp_size, demo_path, prompts, tp_size, timeout=400)
    n_story = prompts["story"]["input_ids"].shape[1]
    n_chat = prompts["chat"]["input_ids"].shape[1]
    assert reference["story"].shape[1] == n_story + NEW_TOKENS
    ref_answer = tok.decode(reference["chat"][0, n_chat:], skip_special_tokens=True)
    assert "Paris" in ref_answer, ref_answer  # the model itself knows; otherwise the check below means nothing
    for rank, res in enumerate(results):
        assert res["heads"] == EXPECTED_HEADS[tp_size]
        story = res["story"]
        mismatch = (story[0] != reference["story"][0]).nonzero() if story.shape == reference["story"].shape else None
        assert mismatch is not None and mismatch.numel() == 0, (
            f"[rank {rank}] tp={tp_size} greedy tokens differ from Transformers\n"
            f"hf_tp:        {story[0, n_story:].tolist()}\ntransformers: {reference['story'][0, n_story:].tolist()}")
        assert torch.equal(res["chat"], reference["chat"]), f"[rank {rank}] chat answer differs from Transformers"
        answer = tok.decode(res["chat"][0, n_chat:], skip_special_tokens=True)
        assert "Paris" in answer, f"[rank {rank}] answer: {answer!r}"


def test_cli_generate_answers_paris(tmp_path, demo_path):
    # demo_path: the demo model is converted (on a cold cache) before the command runs, which finds it in
    # the same $HF_TP_CACHE; only stdout, which the conversion never writes to, is read.
    cmd = [sys.executable, "-m", "hf_tp.cli", "generate", "--tp-size", "2", "--device", "cpu", "--max-new-tokens", "12"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    # Its own session, so that on a timeout the launcher and both of its ranks are killed together.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"hf-tp generate timed out\nstdout:\n{out}\nstderr:\n{err[-3000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err[-3000:]}"
    assert "Paris" in out, f"stdout:\n{out}\nstderr:\n{err[-3000:]}"


def test_pipeline_with_the_handle_answers_like_transformers(demo_path):
    """Issue 15: transformers.pipeline with the handle, in a plain process (the notebook case), gives
    what it gives with the plain Transformers model."""
    from pathlib import Path

    from transformers import AutoTokenizer, pipeline

    import hf_tp

    tok = AutoTokenizer.from_pretrained(demo_path)
    chat = [{"role": "user", "content": QUESTION}]
    want = pipeline("text-generation", model=load_reference(demo_path), tokenizer=tok)(chat, max_new_tokens=24, do_sample=False)
    with hf_tp.AutoModelForCausalLM.from_pretrained(demo_path, tp_size=2, device="cpu", dtype=torch.float32) as model:
        got = pipeline("text-generation", model=model, tokenizer=tok)(chat, max_new_tokens=24, do_sample=False)
    assert got == want
    assert "Paris" in got[0]["generated_text"][-1]["content"], got
    # The converted folder's files share one mode (the weights file used to be 0600, the rest 0644).
    assert len({p.stat().st_mode & 0o777 for p in Path(demo_path).iterdir() if p.is_file()}) == 1
