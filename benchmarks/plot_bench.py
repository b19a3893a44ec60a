"""Plot decode tok/s against batch size, one line per (system, mode, tp), from `hf-tp bench --json` files.

Usage: python benchmarks/plot_bench.py OUT.png BENCH.json [BENCH.json ...]
Needs matplotlib (a plotting tool for this script only, not a dependency of hf_tp: `pip install matplotlib`).
"""

from __future__ import annotations

import json
import sys


def main(out_png: str, *json_files: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, float]] = {}
    device = set()
    for path in json_files:
        for row in json.load(open(path)):
            if "error" in row:
                continue
            label = f"{row['system']} {row['mode']} tp={row['tp_size']}"
            series.setdefault(label, {})[row["batch"]] = row["decode_tok_s"]
            device.add(row.get("device", "?"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(series.items()):
        batches = sorted(points)
        ax.plot(batches, [points[b] for b in batches], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("decode tokens/s (all sequences)")
    ax.set_title(f"Decode throughput, {', '.join(sorted(device))}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    print(f"wrote {out_png} ({len(series)} lines)")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], *sys.argv[2:])
