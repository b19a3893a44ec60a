"""`hf-tp bench --smoke`: the whole harness (random checkpoint, every system in its own processes,
table, JSON) on CPU with a tiny model."""

import json
import subprocess
import sys

from hf_tp.bench import format_row

# What `--smoke` promises (hf_tp/bench/__init__.py, run_bench and plan_runs): every default system,
# eager only on CPU, hf_tp at tp 1 and 2, Transformers at tp 1, Transformers' native TP at tp 2, and
# batches 1 and 2 for each. Written out rather than computed from plan_runs, so that a system dropped
# from the plan fails here instead of vanishing from both sides.
SMOKE_ROWS = {(system, "eager", tp, batch)
              for system, tp in (("hf_tp", 1), ("hf_tp", 2), ("transformers", 1), ("transformers_tp", 2))
              for batch in (1, 2)}


def test_bench_smoke_writes_every_system(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "hf_tp.cli", "bench", "--smoke", "--checkpoint-dir", str(tmp_path / "ckpt"),
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log
    rows = json.loads(out.read_text())
    # A system that failed leaves a row {"system", "mode", "tp_size", "error"} and the smoke run still
    # exits 0 unless the failed system is hf_tp: every row must have run, with the error shown if not.
    errors = [r for r in rows if "error" in r]
    assert not errors, "bench rows that errored:\n" + "\n".join(json.dumps(r) for r in errors) + "\n" + log
    got = [(r["system"], r["mode"], r["tp_size"], r["batch"]) for r in rows]
    assert sorted(got) == sorted(SMOKE_ROWS), f"rows {sorted(got)} != the smoke run's promise {sorted(SMOKE_ROWS)}"
    keys = {"system", "tp_size", "batch", "decode_tok_s", "prefill_ms", "load_s", "peak_bytes_per_gpu", "device"}
    assert all(keys <= set(r) for r in rows)
    assert all(r["decode_tok_s"] > 0 and r["prefill_ms"] > 0 and r["load_s"] > 0 and r["peak_bytes_per_gpu"] > 0
               for r in rows)
    # the three timed runs' rates, slowest first, with the median the row's rate
    assert all(len(r["decode_tok_s_runs"]) == 3 and r["decode_tok_s_runs"] == sorted(r["decode_tok_s_runs"])
               and r["decode_tok_s_runs"][1] == r["decode_tok_s"] for r in rows)
    assert "decode tok/s" in proc.stdout and "FAILED" not in proc.stdout
    # hf_tp rows carry every rank's read figures; each rank read part of the checkpoint, together at least all of it.
    for r in rows:
        if r["system"] == "hf_tp":
            assert len(r["read_bytes_per_rank"]) == r["tp_size"] == len(r["read_seconds_per_rank"])
            assert all(s > 0 for s in r["read_seconds_per_rank"])
    tp2 = next(r for r in rows if r["system"] == "hf_tp" and r["tp_size"] == 2)
    tp1 = next(r for r in rows if r["system"] == "hf_tp" and r["tp_size"] == 1)
    assert all(0 < n < tp1["read_bytes_per_rank"][0] for n in tp2["read_bytes_per_rank"])
    assert sum(tp2["read_bytes_per_rank"]) >= tp1["read_bytes_per_rank"][0]
    assert "weights read: rank 0" in proc.stdout
    # The bandwidth floor: batch x copy bandwidth / (weights / tp); the row's rate as a fraction of it.
    ckpt = next((tmp_path / "ckpt").iterdir())
    weights = json.loads((ckpt / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    for r in rows:
        floor = r["batch"] * r["copy_bandwidth_bytes_s"] * r["tp_size"] / weights
        assert abs(r["bandwidth_floor_tok_s"] - floor) <= 0.05 + 1e-3 * floor
        assert abs(r["floor_fraction"] - r["decode_tok_s"] / floor) <= 1e-3 * max(1.0, r["floor_fraction"])
    # ... but not printed for CPU rows, where it tells a reader nothing (issue 20); and the table comes once.
    assert "bandwidth floor" not in proc.stdout
    assert proc.stdout.count("decode tok/s") == 1
    assert all(proc.stdout.count(format_row(r)) == 1 for r in rows)
