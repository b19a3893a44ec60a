"""Mixtral and Qwen3-MoE: attention as Llama; every expert's projections split like a dense MLP
(each rank holds a slice of every expert's intermediate features), router replicated so all ranks
pick the same experts. Transformers 5 stores each layer's experts as two 3-D parameters, split in
place; the experts module's output is a partial sum and is all-reduced."""

from dataclasses import replace

from .llama import LLAMA

_EXPERTS = "model.layers.*.mlp.experts"

MOE = replace(
    LLAMA,
    name="moe",
    model_types=("mixtral", "qwen3_moe"),
    rules={**LLAMA.rules},  # Llama's dense-MLP rules cover Qwen3-MoE's dense layers (mlp_only_layers)
    optional=("model.layers.*.mlp.gate_proj", "model.layers.*.mlp.up_proj", "model.layers.*.mlp.down_proj"),
    params={f"{_EXPERTS}.gate_up_proj": "column", f"{_EXPERTS}.down_proj": "row"},
    fused={f"{_EXPERTS}.gate_up_proj": ("gate", "up")},
)
