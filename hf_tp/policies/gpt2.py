"""GPT-2: Conv1D layers (weights stored (in, out); the loader transposes them) and a fused
``c_attn`` packing [q | k | v] along its output features."""

from .policy import Policy

GPT2 = Policy(
    name="gpt2",
    model_types=("gpt2",),
    rules={
        "transformer.wte": "vocab",
        "lm_head": "vocab",
        "transformer.h.*.attn.c_attn": "column",
        "transformer.h.*.attn.c_proj": "row",
        "transformer.h.*.mlp.c_fc": "column",
        "transformer.h.*.mlp.c_proj": "row",
    },
    heads={"*.attn.c_proj": "q"},
    fused={"*.attn.c_attn": ("q", "k", "v")},
    attention="transformer.h.*.attn",
    local_attrs={"split_size": "q_width"},  # c_attn's output is split into q, k, v of this width
    num_kv_heads="num_attention_heads",
)
