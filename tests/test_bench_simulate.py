"""`hf-tp bench --simulate-tp`: one rank of a tp-N split alone on one device, collectives replaced by local
stand-ins. Truth for the shard: the real sharding plan and the unsplit Transformers model (uneven heads)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import torch

from conftest import load_reference, save_tiny_model, tiny_config


def test_simulated_rank_is_the_widest_real_rank(tmp_path):
    from hf_tp.assembly import plan_model
    from hf_tp.bench.simulate import load_simulated_rank

    # 9 query / 3 KV heads of 8 over 2 ranks: rank 0 gets 6 + 2, rank 1 gets 3 + 1 (uneven), so rank 0 is widest.
    config = tiny_config("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3)
    folder = str(save_tiny_model(tmp_path / "m", config))
    model, rank, nbytes = load_simulated_rank(folder, 2, torch.device("cpu"), torch.float32)
    planned = plan_model(folder, 2, torch.float32)  # the plan a real tp-2 run builds
    full = dict(load_reference(folder).named_parameters())
    real_bytes = []
    for r in range(2):
        total = 0
        for name, param in full.items():
            shard = planned.plan.param_shard(name)
            shape = list(param.shape)
            if shard is not None:
                shape[shard.dim] = shard.local_size[r]
            total += math.prod(shape) * param.element_size()
        real_bytes.append(total)
    assert real_bytes[0] > real_bytes[1] and rank == 0 and nbytes == real_bytes[0]
    got = dict(model.named_parameters())
    assert set(got) == set(full)
    for name, param in full.items():
        shard = planned.plan.param_shard(name)
        want = list(param.shape)
        if shard is not None:
            want[shard.dim] = shard.local_size[rank]
        assert list(got[name].shape) == want, (name, list(got[name].shape), want)
    assert got["model.layers.0.self_attn.q_proj.weight"].shape[0] == 6 * 8  # 6 of the 9 heads
    assert got["model.layers.0.self_attn.k_proj.weight"].shape[0] == 2 * 8
    assert sum(p.numel() * p.element_size() for p in got.values()) == nbytes
    # It runs alone (no process group): the stand-in gather gives logits over the whole vocabulary.
    assert model.hf_tp.stand_in and model.hf_tp.tp_size == 2 and model.hf_tp.tp_rank == 0
    with torch.no_grad():
        logits = model(torch.randint(0, config.vocab_size, (2, 5))).logits
    assert logits.shape == (2, 5, config.vocab_size) and torch.isfinite(logits).all()


def test_bench_smoke_simulate_tp_rows(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "hf_tp.cli", "bench", "--smoke", "--simulate-tp", "2", "--profile",
                           "--checkpoint-dir", str(tmp_path / "ckpt"), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log
    rows = json.loads(out.read_text())
    assert not [r for r in rows if "error" in r], log
    assert sorted((r["tp_size"], r["batch"]) for r in rows) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for r in rows:
        assert r["system"] == "hf_tp" and r["decode_tok_s"] > 0 and r["bandwidth_floor_tok_s"] > 0
    sim = [r for r in rows if r["tp_size"] == 2]
    tp1 = [r for r in rows if r["tp_size"] == 1]
    assert all(r["label"] == "rank of tp 2, compute only" and r["simulated_rank"] == 0 for r in sim)
    # The tiny shape splits evenly: the rank holds half of the split tensors, so less than the whole model
    # and more than half of it (norms are replicated); its floor is computed from those bytes.
    from safetensors import safe_open

    whole = 0  # the checkpoint's tensor bytes
    for file in (tmp_path / "ckpt" / "tiny-float32").glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            whole += sum(f.get_tensor(k).numel() * 4 for k in f.keys())
    assert all(whole / 2 < r["rank_bytes"] < whole for r in sim), (whole, [r["rank_bytes"] for r in sim])
    for r in sim:  # the floor: the rank's bytes read once per step at the measured copy bandwidth
        assert math.isclose(r["bandwidth_floor_tok_s"], r["batch"] * r["copy_bandwidth_bytes_s"] / r["rank_bytes"],
                            rel_tol=1e-3)
    assert tp1
    assert "rank of tp 2, compute only" in proc.stdout
    # --profile: the breakdown under the table, with every kind.
    for kind in ("GEMM", "attention", "norm+pointwise", "collectives", "gaps"):
        assert kind in proc.stdout, log
    assert all("profile" in r for r in rows if r["batch"] == 1)


def test_simulated_rank_counts_kept_fp8_weights_as_held(tmp_path):
    """A rank that keeps FP8 weights reads one byte per weight plus the scales, not the model dtype's bytes: its
    floor must count what it holds."""
    from fp8_checkpoints import write_block_fp8

    import hf_tp
    from hf_tp.bench.simulate import load_simulated_rank

    config = tiny_config("llama", hidden_size=256, intermediate_size=384, num_attention_heads=8, num_key_value_heads=4)
    folder = write_block_fp8(save_tiny_model(tmp_path / "m", config, max_shard_size=None), tmp_path / "fp8")
    model, rank, nbytes = load_simulated_rank(folder, 2, torch.device("cpu"), torch.bfloat16,
                                              hf_tp.TPConfig(fp8_weights="keep"))
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    scales = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n.endswith("fp8_scale"))
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.float8_e4m3fn
    assert scales > 0 and nbytes == held + scales, (nbytes, held, scales)
