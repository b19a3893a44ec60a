"""Load time of one rank's shard vs reader threads: ``python benchmarks/load_speed.py FOLDER [THREADS ...]``.

Runs hf_tp's loader with a TP group of one on cuda:0, with and without pinned staging
(HF_TP_PINNED_LOAD), (every byte of the checkpoint is this rank's),
each thread count in a fresh process so the allocator starts empty; the page cache is warm after
the first run. Prints seconds and GB/s per run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch


def one(folder: str) -> dict:
    from hf_tp.auto import load_parallel_model
    from hf_tp.parallel.comm import TPGroup

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    model = load_parallel_model(folder, TPGroup(0, 1, device), dtype=torch.bfloat16, progress=False)
    stats = model.hf_tp_load_stats
    return {"threads": int(os.environ.get("HF_TP_LOAD_THREADS", 0)), "pinned": os.environ.get("HF_TP_PINNED_LOAD", "1"), "seconds": round(stats.seconds, 3),
            "gb": round(stats.bytes_read / 1e9, 2), "gb_per_s": round(stats.gb_per_s, 2)}


def main() -> None:
    folder, threads = sys.argv[1], sys.argv[2:] or ["1", "8"]
    if threads == ["--one"]:
        print("LOADSPEED " + json.dumps(one(folder)), flush=True)
        return
    runs = [("8", "1")] + [(t, pinned) for pinned in ("0", "1") for t in threads]  # the first run warms the page cache
    for t, pinned in runs:
        env = {**os.environ, "HF_TP_LOAD_THREADS": t, "HF_TP_PINNED_LOAD": pinned}
        out = subprocess.run([sys.executable, __file__, folder, "--one"], env=env, capture_output=True, text=True)
        print(next((line for line in out.stdout.splitlines() if line.startswith("LOADSPEED")), out.stderr[-500:]), flush=True)


if __name__ == "__main__":
    main()
