"""Single-controller mode: hf_tp.TPModel from a plain process, against the unsplit Transformers model,
and the failure paths (killed worker, a rank raising alone, a hung rank, a killed driver), each bounded.

The fault tests do not time the failure against a window (a loaded 2-core host stretches any window):
each waits for the event it is about and checks that the error names the rank and the cause that only
that event produces; timeouts appear only as lower bounds (a watchdog must not fire early) and as a
hang guard."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest
import torch
from conftest import load_reference, rel_err
from transformers.generation.streamers import BaseStreamer

import hf_tp
from hf_tp.orchestration.sockets import remove_stale_socket_folders
from hf_tp.orchestration.worker import FAULT_ENV

TIMEOUT_S = 6  # watchdog bound (timeout_s) used by the fault tests
# Only a hang guard, never a speed check: each fault test waits for the event it is about (a process
# exit, a watchdog firing) and checks the error says which one; this bound only turns a watchdog that
# never fires into a failure instead of a stuck test run. Generous for a loaded 2-core machine.
HANG_GUARD_S = 300


def _gone(pid: int) -> bool:
    """True when the process no longer exists or is a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return True


def _wait_gone(pids, seconds=60.0) -> bool:
    """Poll until every pid is gone; ``seconds`` is a hang guard (returns as soon as they are)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


def _guarded(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a thread, bounded by HANG_GUARD_S: its result, or its exception re-raised."""
    box = {}

    def run():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive(), f"still running after {HANG_GUARD_S} s: the watchdog under test never fired"
    if "error" in box:
        raise box["error"]
    return box["result"]


class _Collect(BaseStreamer):
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.reshape(-1))

    def end(self):
        self.ended = True


def test_driver_matches_transformers_and_reports(tiny_checkpoint):
    path = tiny_checkpoint("llama", num_attention_heads=6, num_key_value_heads=3)
    ref = load_reference(path)
    ids = torch.randint(2, 101, (2, 7), generator=torch.Generator().manual_seed(0))
    ids[1, :3] = 0  # left padding on the second row
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype=torch.float32) as model:
        assert isinstance(model, hf_tp.TPModel)
        pids = [h["pid"] for h in model.health()]
        # fp32 logits; tolerance: the all-reduce sums partial products in another order.
        assert rel_err(model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits) <= 1e-5
        got = model.generate(ids, attention_mask=mask, max_new_tokens=64, do_sample=False)
        want = ref.generate(ids, attention_mask=mask, max_new_tokens=64, do_sample=False)
        assert torch.equal(got, want)

        streamer = _Collect()
        one = model.generate(ids[:1], max_new_tokens=8, do_sample=False, streamer=streamer)
        assert streamer.ended and torch.equal(torch.cat(streamer.chunks), one[0])

        # A streamer that fails mid-call: its error is raised once the call is over, and the
        # next call gets its own answer, not a leftover of this one.
        class Failing(_Collect):
            def put(self, value):
                super().put(value)
                if len(self.chunks) == 2:
                    raise KeyError("streamer broke")

        with pytest.raises(KeyError, match="streamer broke"):
            model.generate(ids[:1], max_new_tokens=8, do_sample=False, streamer=Failing())
        assert rel_err(model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits) <= 1e-5

        torch.manual_seed(123)
        sample_a = model.generate(ids[:1], max_new_tokens=16, do_sample=True, top_k=20, top_p=0.9, temperature=1.3)
        torch.manual_seed(123)
        sample_b = model.generate(ids[:1], max_new_tokens=16, do_sample=True, top_k=20, top_p=0.9, temperature=1.3)
        assert torch.equal(sample_a, sample_b)

        # eos: generation stops at the eos token (here the row's 5th greedy token is declared the eos).
        eos = int(want[0, ids.shape[1] + 4])
        got_eos = model.generate(ids[:1], max_new_tokens=64, do_sample=False, eos_token_id=eos, pad_token_id=0)
        want_eos = ref.generate(ids[:1], max_new_tokens=64, do_sample=False, eos_token_id=eos, pad_token_id=0)
        assert torch.equal(got_eos, want_eos) and got_eos.shape[1] <= ids.shape[1] + 5

        memory = model.memory()
        assert [m["rank"] for m in memory] == [0, 1]
        keys = {"rank", "device", "allocated_bytes", "reserved_bytes", "peak_bytes", "free_bytes", "weights_bytes", "kv_cache_bytes"}
        assert all(set(m) == keys for m in memory)
        full = sum(p.numel() * 4 for p in ref.parameters())
        assert all(0 < m["weights_bytes"] < full for m in memory)
        assert all(m["kv_cache_bytes"] > 0 for m in memory)  # the last generate's KV cache, per rank

        health = model.health()
        assert [h["alive"] for h in health] == [True, True] and all(h["error"] is None for h in health)
        # Heartbeats flow: younger than the watchdog's bound (a loaded host can delay one by seconds).
        assert all(h["heartbeat_age_s"] < model.timeout_s for h in health)

        with pytest.raises(ValueError, match="outside the model's vocabulary") as info:
            model.generate(torch.tensor([[5, 500]]), max_new_tokens=2)
        assert "traceback from tp rank" in str(info.value)
        # A local error leaves the model usable.
        assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=64, do_sample=False), want)

        # save_pretrained writes the unsplit checkpoint: plain Transformers reads back the same weights.
        saved = os.path.join(os.path.dirname(path), "saved_by_driver")
        model.save_pretrained(saved)
        again = load_reference(saved).state_dict()
        assert again.keys() == ref.state_dict().keys()
        assert all(torch.equal(again[k], v) for k, v in ref.state_dict().items())
    assert _wait_gone(pids), "workers outlived the context manager"


def test_handle_uses_the_decode_loop(tiny_checkpoint, monkeypatch):
    """With the decode loop on (HF_TP_FAST_DECODE=1; on CUDA at tp 1 it is the default), the workers'
    generate runs it, even though they pass their own streamer and ask for the output object (to report
    the KV cache): the cache they report is the loop's static one, a whole 256-token bucket."""
    from hf_tp.generation.decode_loop import LENGTH_BUCKET

    monkeypatch.setenv("HF_TP_FAST_DECODE", "1")
    path = tiny_checkpoint("llama", num_attention_heads=6, num_key_value_heads=3, hidden_size=48,
                           max_position_embeddings=1024)  # a whole bucket fits the context
    ids = torch.tensor([[3, 4, 5], [0, 6, 7]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    want = load_reference(path).generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    with hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype=torch.float32) as model:
        assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False), want)
        # K and V x 2 layers x batch 2 x this rank's KV heads (2 of 3, then 1) x bucket x head_dim 8 x fp32
        # (Transformers' generate would report its dynamic cache: 12 positions, not 256).
        per_head = 2 * 2 * 2 * LENGTH_BUCKET * 8 * 4
        assert [m["kv_cache_bytes"] for m in model.memory()] == [2 * per_head, per_head]


def test_killed_worker_raises_then_restart(tiny_checkpoint):
    """A worker SIGKILLed in the middle of a generate: the driver notices the process exit itself (not a
    watchdog timeout), stops the other worker and names the rank and the signal; restart() recovers."""
    path = tiny_checkpoint("llama")
    model = hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype=torch.float32, timeout_s=TIMEOUT_S)
    try:
        victim = model.health()[1]["pid"]

        class KillOnFirstToken(_Collect):
            """Kills rank 1 when the first tokens arrive: the generate is then under way, however slow the host."""

            def put(self, value):
                super().put(value)
                if len(self.chunks) == 1:
                    os.kill(victim, signal.SIGKILL)

        with pytest.raises(hf_tp.WorkerError, match=r"tp rank 1 .*SIGKILL") as info:
            _guarded(model.generate, torch.tensor([[3, 4, 5]]), max_new_tokens=100000, do_sample=False,
                     streamer=KillOnFirstToken())
        # Found by the exit (the connection closing or the exit code), not by the heartbeat or progress watchdogs.
        assert "no heartbeat" not in str(info.value) and "no progress" not in str(info.value)
        assert "SIGKILL" in model.health()[1]["error"] and model.health()[0]["error"] is None
        assert _wait_gone([h["pid"] for h in model.health()]), "the other worker was not stopped"
        model.restart()
        assert [h["alive"] for h in model.health()] == [True, True] and victim not in [h["pid"] for h in model.health()]
        assert model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=4, do_sample=False).shape == (1, 7)
        # Killed between calls (out of memory while idle, say): the next call names the signal too, not only the
        # closed connection it meets first.
        victim = model.health()[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        time.sleep(1.0)
        with pytest.raises(hf_tp.WorkerError, match=r"tp rank 1 .*killed by SIGKILL"):
            _guarded(model.generate, torch.tensor([[3, 4, 5]]), max_new_tokens=4, do_sample=False)
    finally:
        model.shutdown()


def test_frozen_worker_is_detected_within_timeout_s(tiny_checkpoint):
    """SIGSTOP on one worker: no heartbeat, no progress, and deaf to SIGTERM until continued. The call
    raises WorkerError within timeout_s of the freeze, stopping the workers included (the SIGTERM
    grace used to come on top: timeout_s + 5 s)."""
    path = tiny_checkpoint("llama")
    model = hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype=torch.float32, timeout_s=TIMEOUT_S)
    try:
        pids = [h["pid"] for h in model.health()]
        frozen_at = []

        class Freeze(_Collect):
            def put(self, value):
                super().put(value)
                if len(self.chunks) == 3:  # well inside the generate, on the driver's side
                    os.kill(pids[1], signal.SIGSTOP)
                    frozen_at.append(time.time())

        with pytest.raises(hf_tp.WorkerError, match=r"tp rank \d .*(no heartbeat|no progress)"):
            model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=100000, do_sample=False, streamer=Freeze())
        waited = time.time() - frozen_at[0]
        # The bound is timeout_s; the 0.2 s polling and a busy host get a margin well under the old 5 s grace.
        assert waited < TIMEOUT_S + 2, f"WorkerError {waited:.1f} s after the freeze, timeout_s={TIMEOUT_S}"
        assert _wait_gone(pids, 5), "workers left running"
    finally:
        model.shutdown()


def _worker_children() -> list[int]:
    """Live (not zombie) children of this process that run hf_tp's worker module."""
    me, found = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z" and b"hf_tp.orchestration.worker" in cmdline:
            found.append(int(entry))
    return found


def test_worker_dying_while_loading_is_a_worker_error(tiny_checkpoint, monkeypatch):
    """A worker that dies during the load (what an OOM kill looks like) fails from_pretrained with a WorkerError
    naming the rank, its exit code and the stage, and leaves no worker behind."""
    path = tiny_checkpoint("llama")
    monkeypatch.setenv(FAULT_ENV, "1:load:exit")  # os._exit(17) on tp rank 1 when the load request arrives
    assert not _worker_children()
    with pytest.raises(hf_tp.WorkerError, match=r"tp rank 1 .*(exited with code 17|exit code 17).* while loading the model"):
        _guarded(hf_tp.AutoModelForCausalLM.from_pretrained, path, tp_size=2, device="cpu", dtype=torch.float32,
                 timeout_s=TIMEOUT_S)
    assert not _worker_children(), "a worker outlived the failed load"


@pytest.mark.parametrize("fault", ["raise", "hang"])
def test_lone_raise_or_hang_is_bounded(tiny_checkpoint, monkeypatch, fault):
    """Rank 1 raises alone (rank 0 then waits in a collective that never completes), or hangs: either way the
    call ends in a WorkerError from the watchdog that covers the case, after it gave the ranks timeout_s."""
    path = tiny_checkpoint("llama")
    monkeypatch.setenv(FAULT_ENV, f"1:generate:{fault}")
    model = hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype=torch.float32,
                                                       timeout_s=TIMEOUT_S, auto_restart=(fault == "hang"))
    try:
        pids = [h["pid"] for h in model.health()]
        start = time.time()
        with pytest.raises(hf_tp.WorkerError) as info:
            _guarded(model.generate, torch.tensor([[3, 4, 5]]), max_new_tokens=8, do_sample=False)
        message = str(info.value)
        if fault == "raise":
            # The lone-error watchdog: rank 1's own error, and the rank it left waiting.
            assert re.search(r"tp rank 1 raised RuntimeError: injected fault on tp rank 1 during generate alone, "
                             r"leaving tp ranks \[0\] waiting in a collective", message), message
            assert "injected fault" in model.health()[1]["error"]
        else:
            # The progress watchdog (rank 1 still sends heartbeats: only its progress stopped). It names the rank
            # that hung, not rank 0, which entered the forward pass and waits for rank 1 in its first collective.
            idle = re.search(r"tp rank 1 made no progress for (\d+) s \(hung\? tp ranks \[0\] got further", message)
            assert idle and int(idle.group(1)) >= TIMEOUT_S, message
        # Neither watchdog fires before timeout_s: a slow peer gets that long (a lower bound, safe on a slow host).
        assert time.time() - start >= TIMEOUT_S
        assert _wait_gone(pids)
        if fault == "hang":  # auto_restart brought fresh workers; forward is not affected by the fault
            assert [h["alive"] for h in model.health()] == [True, True]
            assert not set(pids) & {h["pid"] for h in model.health()}
            assert model(torch.tensor([[3, 4, 5]])).logits.shape == (1, 3, 101)
    finally:
        model.shutdown()


def test_long_forward_is_not_taken_for_a_hang(tiny_checkpoint, monkeypatch):
    """Issue 20: a forward pass longer than timeout_s (a prefill of thousands of tokens on CPU) was stopped as a
    hang ("made no progress"). Here rank 1 sleeps timeout_s / 2 before each of 4 decoder layers (fault
    1:layer:slow), so one forward takes 2 x timeout_s while every layer finishes well within it, and rank 0
    waits for rank 1 in every layer's collectives. The forward and a generate complete, equal to Transformers."""
    path = tiny_checkpoint("llama", num_hidden_layers=4)
    monkeypatch.setenv(FAULT_ENV, "1:layer:slow")
    monkeypatch.setenv("HF_TP_FAULT_SECONDS", str(TIMEOUT_S / 2))
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    ref = load_reference(path)
    with torch.no_grad():
        want_logits = ref(ids).logits
    want = ref.generate(ids, max_new_tokens=1, do_sample=False)  # one token: one more slow forward, inside generate
    model = hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype=torch.float32,
                                                       timeout_s=TIMEOUT_S)
    try:
        start = time.time()
        got = _guarded(model, ids).logits
        assert time.time() - start >= 2 * TIMEOUT_S  # the forward really outlived timeout_s (4 sleeps of timeout_s / 2)
        assert rel_err(got, want_logits) <= 1e-5
        assert torch.equal(_guarded(model.generate, ids, max_new_tokens=1, do_sample=False), want)
        assert all(h["error"] is None for h in model.health())
    finally:
        model.shutdown()


@pytest.mark.parametrize("allowed", ["startup_timeout_s_enough", "startup_timeout_s_too_short"])
def test_long_compile_is_not_taken_for_a_hang(tiny_checkpoint, monkeypatch, allowed):
    """Rank 1 sits inside torch.compile's start/end hooks (what the first decode of a large model does) while
    rank 0 waits for it in a collective. With startup_timeout_s to spare: 2.5 x timeout_s of compiling is not
    a hang, the call completes with the right tokens. With startup_timeout_s too short for it: the compile
    never ends by itself (HANG_GUARD_S), so only the compile watchdog can end the call, with a WorkerError
    that says so."""
    path = tiny_checkpoint("llama")
    enough = allowed == "startup_timeout_s_enough"
    startup_timeout_s = 60 if enough else 1.5 * TIMEOUT_S
    monkeypatch.setenv(FAULT_ENV, "1:generate:compile")
    monkeypatch.setenv("HF_TP_FAULT_SECONDS", str(2.5 * TIMEOUT_S if enough else 2 * HANG_GUARD_S))
    model = hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype=torch.float32,
                                                       timeout_s=TIMEOUT_S, startup_timeout_s=startup_timeout_s)
    try:
        ids = torch.tensor([[3, 4, 5]])
        start = time.time()
        if enough:
            got = _guarded(model.generate, ids, max_new_tokens=8, do_sample=False)
            assert time.time() - start > 2.5 * TIMEOUT_S  # the call really outlived timeout_s (rank 1 slept that long)
            assert torch.equal(got, load_reference(path).generate(ids, max_new_tokens=8, do_sample=False))
        else:
            with pytest.raises(hf_tp.WorkerError) as info:
                _guarded(model.generate, ids, max_new_tokens=8, do_sample=False)
            # Only produced while rank 1's heartbeat still says it is compiling: the watchdog fired mid-compile.
            compiling = re.search(r"tp rank 1 has been compiling for (\d+) s, longer than startup_timeout_s=9\b",
                                  str(info.value))
            assert compiling and int(compiling.group(1)) >= startup_timeout_s, str(info.value)
            assert time.time() - start >= startup_timeout_s
    finally:
        model.shutdown()


_DRIVER = textwrap.dedent("""
    import sys, torch, hf_tp
    model = hf_tp.AutoModelForCausalLM.from_pretrained(sys.argv[1], tp_size=2, device="cpu", dtype=torch.float32)
    print(" ".join(str(h["pid"]) for h in model.health()), flush=True)
    print(model._tmp, flush=True)  # the driver's private socket folder
    if sys.argv[2] == "wait":
        sys.stdin.read()
    # else: fall off the end without shutdown(); interpreter exit must stop the workers
""")


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_workers_never_outlive_the_driver(tiny_checkpoint, tmp_path, how):
    path = tiny_checkpoint("llama")
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    # A socket folder root of its own: a driver started meanwhile by another test process (pytest -n 2) removes
    # the killed driver's stale folder too, before this test looks for it. Short (under /tmp, not tmp_path): a
    # Unix socket's path has at most 107 bytes.
    sockets = tempfile.mkdtemp(prefix="hf_tp_test_")
    driver = subprocess.Popen([sys.executable, str(script), str(path), "wait" if how == "sigkill" else "exit"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "TMPDIR": sockets})
    try:
        pids = [int(p) for p in driver.stdout.readline().split()]
        assert len(pids) == 2, "driver did not start its workers"
        folder = driver.stdout.readline().strip()
        assert os.path.isdir(folder)
        if how == "sigkill":
            assert remove_stale_socket_folders(os.path.dirname(folder)) is not None and os.path.isdir(folder), \
                "a live driver's socket folder was removed"
            driver.kill()
        driver.wait(timeout=60)
        assert _wait_gone(pids), f"orphan workers after driver {how}: {[p for p in pids if not _gone(p)]}"
        if how == "sigkill":  # the killed driver could not remove its folder; the next start does
            assert os.path.isdir(folder)
            assert folder in remove_stale_socket_folders(os.path.dirname(folder))
        assert not os.path.exists(folder)
    finally:
        if driver.poll() is None:
            driver.kill()
        shutil.rmtree(sockets, ignore_errors=True)


def test_bad_input_before_spawn_and_at_load(tiny_checkpoint, tmp_path):
    path = tiny_checkpoint("llama", num_attention_heads=4, num_key_value_heads=2, hidden_size=32)
    with pytest.raises(hf_tp.ShardingError, match="Valid tp_size for this model: 1, 2, 4"):
        hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=3, device="cpu")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in path.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    shard = sorted(broken.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(hf_tp.CheckpointError):
        hf_tp.AutoModelForCausalLM.from_pretrained(broken, tp_size=2, device="cpu")
    with pytest.raises(hf_tp.ShardingError, match="max_memory_per_gpu"):
        hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", max_memory_per_gpu=1000)
    # Mistakes a user makes in the call itself: hf_tp's own message, not a library's internals
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(hf_tp.CheckpointError, match="no config.json"):
        hf_tp.AutoModelForCausalLM.from_pretrained(empty, tp_size=2, device="cpu")
    with pytest.raises(ValueError, match="dtype='bfloat' names no torch dtype"):
        hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="cpu", dtype="bfloat")
    with pytest.raises(ValueError, match="device must be 'cuda' or 'cpu', got 'gpu'"):
        hf_tp.AutoModelForCausalLM.from_pretrained(path, tp_size=2, device="gpu")
    with pytest.raises(TypeError, match="did you mean 'fast_decode'"):
        hf_tp.TPConfig(fast_decoding=True)
