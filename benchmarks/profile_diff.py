"""Profiled bench rows side by side, kernel by kernel: which kernel a fast process runs faster than a slow one.

`hf-tp bench --profile N` (run_system) stores each row's per-token kernel times under "profile" ("top": [µs per
token, calls per token, group, kernel name]). Given several such rows (the JSONL files of `next_cycle.sh`'s
CALL=66: six processes of the same command), this prints one column per row, its tok/s on top, then every
kernel's µs per token, sorted by the spread between the rows, so that a kernel whose time differs between a fast
and a slow process comes first.

  python benchmarks/profile_diff.py e2e_r4_bf16_prof1.jsonl e2e_r4_bf16_prof2.jsonl ... [--top 25]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_row(path: str) -> dict:
    """The first row of a bench JSONL file that carries a profile."""
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if row.get("profile"):
            return row
    raise SystemExit(f"{path}: no row with a profile (run the bench with --profile N)")


def kernel_times(row: dict) -> dict[str, float]:
    """µs per token by kernel name (names that repeat, as Inductor's do across layers, are summed)."""
    times: dict[str, float] = {}
    for us, _calls, _group, name in row["profile"]["top"]:
        times[name] = times.get(name, 0.0) + us
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rows", nargs="+")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    rows = [load_row(path) for path in args.rows]
    times = [kernel_times(row) for row in rows]
    names = {name for t in times for name in t}
    spread = {name: max(t.get(name, 0.0) for t in times) - min(t.get(name, 0.0) for t in times) for name in names}
    width = 10
    for i, path in enumerate(args.rows, 1):
        print(f"row {i}: {path}")
    print(f"{'':60s}" + "".join(f"{'row ' + str(i):>{width + 1}s}" for i in range(1, len(rows) + 1)))
    print(f"{'decode tok/s':60s}" + "".join(f"{row['decode_tok_s']:>{width + 1}.2f}" for row in rows))
    for key in ("wall_us", "kernels_us", "gaps_us"):
        print(f"{key:60s}" + "".join(f"{row['profile'][key]:>{width + 1}.1f}" for row in rows))
    for name in sorted(names, key=lambda n: -spread[n])[:args.top]:
        print(f"{name[:60]:60s}" + "".join(f"{t.get(name, 0.0):>{width + 1}.1f}" for t in times))


if __name__ == "__main__":
    main()
