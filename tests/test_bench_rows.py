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
    as_measured, table = stdout.split("rows as measured:")[1].split("\n\n", 1)
    # the failing system comes first: its FAILED row is printed before the next system runs
    assert as_measured.index("no_such_system") < as_measured.index("transformers")
    assert "FAILED" in as_measured and "unknown system" in as_measured
    assert "no_such_system" in table and "FAILED" in table and "transformers" in table
    rows = json.loads(out.read_text())
    assert [r["system"] for r in rows if "error" in r] == ["no_such_system"]
    good = [r for r in rows if "error" not in r]
    assert {r["system"] for r in good} == {"transformers"} and {r["batch"] for r in good} == {1, 2}
    assert all(r["decode_tok_s"] > 0 and r["tp_config"] is None for r in good)
