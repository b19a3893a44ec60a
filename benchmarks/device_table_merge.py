"""Which sweep winners a GPU model's entries in hf_tp/kernels/gemv_table.py (DEVICE_TABLES) should take.

Reads several `benchmarks/fp8_gemm.py --sweep --out FILE.json` results from the same GPU model (two runs or more
of each). FP8 shapes are merged per scale layout: the key of an FP8 entry ends with "channel" or "block"
(gemv_triton.table_entry), since one GPU may want different configs for the two. A shape (and layout) gets an
entry only where two sweeps or more timed it and one config is among the five fastest of every one of them and
beats the config shipped there by at least --min-gain in each; of those, the fastest on average. Prints the
entries, as lines to paste into DEVICE_TABLES, with each sweep's times beside them, and the shapes left as they
are.

  python benchmarks/device_table_merge.py A.json B.json [C.json ...] [--min-gain 0.04]
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict


def table_key(row: dict, layout: str = "") -> tuple:
    """The DEVICE_TABLES key of a sweep row: (bucket, weight bytes, N, K), with the FP8 scale layout last for FP8
    rows of a sweep whose layout is known."""
    key = ("gemv" if row["M"] == 1 else "dot", 2 if row["kind"] == "bf16" else 1, row["N"], row["K"])
    return key + (layout,) if layout and row["kind"] != "bf16" else key


def config_id(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def merge(sweeps: list[list[dict]], min_gain: float, layouts: list[str] | None = None) -> tuple[dict, dict]:
    """(entries, left): entries maps a table key to (config, [(shipped µs, its µs) per row]); left maps the keys
    without one to the reason. ``layouts``: each sweep's FP8 scales ("block" or "channel"), part of its FP8 rows'
    keys. A sweep may time one shape more than once (the MoE router at every tp): every row counts, but the
    shape needs rows from two sweeps or more."""
    layouts = layouts or [""] * len(sweeps)
    rows_by_key: dict[tuple, list[tuple[int, dict]]] = defaultdict(list)
    for index, rows in enumerate(sweeps):
        for row in rows:
            rows_by_key[table_key(row, layouts[index])].append((index, row))
    entries, left = {}, {}
    for key, indexed in sorted(rows_by_key.items()):
        rows = [row for _, row in indexed]
        if len({index for index, _ in indexed}) < 2:
            left[key] = "timed by one sweep only"
            continue
        if any("shipped_us" not in row for row in rows):
            left[key] = "a sweep predates shipped_us (fp8_gemm.py before 2026-12-06)"
            continue
        if any(row["shipped_us"] is None for row in rows):
            left[key] = "a sweep did not time the shipped config (its --paths left it out)"
            continue
        timed = [{config_id(c): us for us, c in row.get("fastest", [])} for row in rows]
        candidates = []
        for cid in set.intersection(*(set(t) for t in timed)):
            times = [t[cid] for t in timed]
            if all(us <= row["shipped_us"] * (1 - min_gain) for us, row in zip(times, rows)):
                candidates.append((sum(times) / len(times), cid, times))
        if not candidates:
            left[key] = "no config beat the shipped one by the margin in every sweep"
            continue
        _, cid, times = min(candidates)
        entries[key] = (json.loads(cid), [(row["shipped_us"], us) for row, us in zip(rows, times)])
    return entries, left


def scales(result: dict) -> str:
    """A sweep's FP8 scale layout: recorded since 2026-12-06, else read from its command line (block by default)."""
    argv = result.get("argv", [])
    return result.get("fp8_scales") or ("channel" if "channel" in argv else "block")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", help="fp8_gemm.py --sweep --out files (JSON)")
    parser.add_argument("--min-gain", type=float, default=0.04,
                        help="the fraction of the shipped config's time a winner must save in every sweep")
    args = parser.parse_args()
    missing = [path for path in args.sweeps if not os.path.exists(path)]
    for path in missing:
        print(f"# not found (a sweep that did not run): {path}")
    results = [json.load(open(path)) for path in args.sweeps if path not in missing]
    if not results:
        raise SystemExit("device_table_merge: none of the sweeps exists")
    devices = {r.get("device") for r in results}
    if len(devices) != 1:
        raise SystemExit(f"device_table_merge: the sweeps come from different GPUs {sorted(map(str, devices))}; "
                         "give sweeps of one GPU model")
    entries, left = merge([r["sweep"] for r in results], args.min_gain, [scales(r) for r in results])
    print(f"# {devices.pop()}: {len(entries)} entries from {len(results)} sweeps (min gain {args.min_gain:.0%})")
    for key, (config, evidence) in entries.items():
        print(f"        {key!r}: {config!r},  # shipped/this µs: " + ", ".join(f"{s:.2f}/{u:.2f}" for s, u in evidence))
    for key, why in left.items():
        print(f"# left: {key!r}: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
