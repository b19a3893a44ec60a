"""`hf-tp bench --smoke`: the whole harness (random checkpoint, every system in its own processes,
table, JSON) on CPU with a tiny model."""

import json
import subprocess
import sys


def test_bench_smoke_writes_every_system(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "hf_tp.cli", "bench", "--smoke", "--checkpoint-dir", str(tmp_path / "ckpt"),
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    keys = {"system", "tp_size", "batch", "decode_tok_s", "load_s", "peak_bytes_per_gpu", "device"}
    good = [r for r in rows if "error" not in r]
    assert all(keys <= set(r) for r in good)
    assert {(r["system"], r["tp_size"]) for r in good} >= {("hf_tp", 1), ("hf_tp", 2), ("transformers", 1)}
    assert all(r["decode_tok_s"] > 0 and r["load_s"] > 0 and r["peak_bytes_per_gpu"] > 0 for r in good)
    assert "decode tok/s" in proc.stdout
    # hf_tp rows carry every rank's read figures; each rank read part of the checkpoint, together at least all of it.
    for r in good:
        if r["system"] == "hf_tp":
            assert len(r["read_bytes_per_rank"]) == r["tp_size"] == len(r["read_seconds_per_rank"])
            assert all(s > 0 for s in r["read_seconds_per_rank"])
    tp2 = next(r for r in good if r["system"] == "hf_tp" and r["tp_size"] == 2)
    tp1 = next(r for r in good if r["system"] == "hf_tp" and r["tp_size"] == 1)
    assert all(0 < n < tp1["read_bytes_per_rank"][0] for n in tp2["read_bytes_per_rank"])
    assert sum(tp2["read_bytes_per_rank"]) >= tp1["read_bytes_per_rank"][0]
    assert "weights read: rank 0" in proc.stdout
    # The bandwidth floor: batch x copy bandwidth / (weights / tp); the row's rate as a fraction of it.
    ckpt = next((tmp_path / "ckpt").iterdir())
    weights = json.loads((ckpt / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    for r in good:
        floor = r["batch"] * r["copy_bandwidth_bytes_s"] * r["tp_size"] / weights
        assert abs(r["bandwidth_floor_tok_s"] - floor) <= 0.05 + 1e-3 * floor
        assert abs(r["floor_fraction"] - r["decode_tok_s"] / floor) <= 1e-3 * max(1.0, r["floor_fraction"])
    assert "of the bandwidth floor" in proc.stdout
