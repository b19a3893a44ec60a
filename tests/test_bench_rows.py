"""`hf-tp bench` prints every row as it is measured, and a system that fails gives a FAILED row while the
rows of every other system, and the table, still come out (issue 13, item 8)."""

import json
import subprocess
import sys


def test_a_failing_system_gives_a_failed_row_and_the_rest_still_prints(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "hf_tp.cli", "bench", "--smoke", "--systems", "no_such_system,transformers",
                           "--checkpoint-dir", str(tmp_path / "ckpt"), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    stdout = proc.stdout
    assert "rows as measured:" in stdout, stdout + proc.stderr[-3000:]
    as_measured, summary = stdout.split("rows as measured:")[1].split("\n\n", 1)
    # the failing system comes first: its FAILED row is printed before the next system runs
    assert as_measured.index("no_such_system") < as_measured.index("transformers")
    assert "FAILED" in as_measured and "unknown system" in as_measured
    # The rows as measured are the table: it is not printed a second time (issue 20).
    assert stdout.count("FAILED") == 1 and "decode tok/s" not in summary
    rows = json.loads(out.read_text())
    assert [r["system"] for r in rows if "error" in r] == ["no_such_system"]
    good = [r for r in rows if "error" not in r]
    assert {r["system"] for r in good} == {"transformers"} and {r["batch"] for r in good} == {1, 2}
    assert all(r["decode_tok_s"] > 0 and r["tp_config"] is None for r in good)


def test_bandwidth_floor_lines_only_for_gpu_rows():
    """The floor line is each GPU row's rate over batch x copy bandwidth / (weights / tp); CPU rows (the smoke
    run) get none (issue 20: "0% of the bandwidth floor ... 0.01 TB/s" meant nothing to a reader)."""
    from hf_tp.bench import floor_lines

    gpu = {"system": "hf_tp", "mode": "compile", "tp_size": 2, "batch": 1, "device": "NVIDIA H200", "decode_tok_s": 150.0,
           "copy_bandwidth_bytes_s": 4.0e12, "bandwidth_floor_tok_s": 500.0, "floor_fraction": 0.3}
    cpu = {**gpu, "device": "cpu", "copy_bandwidth_bytes_s": 1.0e10, "bandwidth_floor_tok_s": 43567.0,
           "floor_fraction": 0.004}
    lines = floor_lines([cpu, gpu, {"system": "x", "mode": "eager", "tp_size": 2, "error": "failed"}])
    assert len(lines) == 1 and "hf_tp compile tp 2 batch 1: 30% of the bandwidth floor" in lines[0]
    assert "500 tok/s at 4.00 TB/s" in lines[0]
