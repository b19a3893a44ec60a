"""What a load costs per checkpoint key rather than per byte, on any host (no GPU needed).

Two narrow random checkpoints with the key structure of the bench shapes but tiny widths (hidden 64): one like
qwen3-moe-mini (24 layers of 64 experts stored per expert, as Transformers saves them: 4830 keys) and one like
llama3-8b (32 layers: 291 keys). Their bytes are negligible, so what is timed is what every key costs: planning
(`hf_tp.assembly.plan_model`: config, checkpoint index, skeleton, sharding plan), the whole tp-1 load on CPU, and
the MoE routers' installation (`install_moe_routing`, which checks every module: part of a CUDA load's `kernels_s`).

  python benchmarks/plan_cost.py [--folder /tmp/hf_tp_plan_cost] [--repeats 3]

Prints one JSON line per shape: the first plan of the process (module imports included) and the later ones.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def narrow_shapes() -> dict[str, tuple[str, dict]]:
    from hf_tp.bench import shapes

    moe = dict(shapes._QWEN3_MOE_30B, num_experts=64, num_hidden_layers=24, hidden_size=64, moe_intermediate_size=32,
               intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512)
    dense = dict(shapes.SHAPES["llama3-8b"], hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512)
    shapes.MOE_SHAPES["narrow-qwen3-moe-mini"] = ("qwen3_moe", moe)
    shapes.SHAPES["narrow-llama3-8b"] = dense
    return {"narrow-qwen3-moe-mini": moe, "narrow-llama3-8b": dense}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default="/tmp/hf_tp_plan_cost")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from hf_tp.assembly import load_parallel_model, plan_model
    from hf_tp.bench.shapes import write_random_checkpoint
    from hf_tp.parallel.comm import TPGroup
    from hf_tp.parallel.moe_routing import install_moe_routing

    tp = TPGroup(tp_rank=0, tp_size=1, device=torch.device("cpu"))
    for shape in narrow_shapes():
        folder = write_random_checkpoint(shape, Path(args.folder) / shape)
        keys = len(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"])
        plans = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            plan_model(str(folder), 1, None, {})
            plans.append(round(time.perf_counter() - start, 4))
        loads = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model = load_parallel_model(str(folder), tp, dtype=torch.bfloat16, progress=False)
            loads.append(round(time.perf_counter() - start, 4))
        # What the MoE routers' installation costs where it runs (CUDA; on CPU the loader leaves it out): once per
        # fresh model, since it replaces the routers' forward
        routing = []
        for _ in range(args.repeats):
            fresh = load_parallel_model(str(folder), tp, dtype=torch.bfloat16, progress=False)
            start = time.perf_counter()
            install_moe_routing(fresh, "triton")
            routing.append(round(time.perf_counter() - start, 4))
        print(json.dumps({"shape": shape, "keys": keys, "first_plan_s": plans[0], "plan_s": plans[1:], "load_s": loads,
                          "install_moe_routing_s": routing, "load_phases": model.hf_tp_load_stats.phases}), flush=True)


if __name__ == "__main__":
    main()
